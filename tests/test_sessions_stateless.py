"""P4 and U5: session ids carry their own binding, so workers and replicas with one key share nothing.

Unit tests of the wrapping, then real ``serve`` processes: two gateways with the same session key in
front of one upstream (a session moves between them), one with another key (it does not), and
``server.workers: 2`` (every worker continues every session).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import pytest

from gateway.auth.principal import principal_from_claims
from gateway.errors import NotFound
from gateway.mcp.sessions import SessionBindings
from tests.factories import bearer

KEY = b"k" * 32
ALICE = principal_from_claims({"iss": "https://idp", "sub": "alice"}, token_type="jwt")
BOB = principal_from_claims({"iss": "https://idp", "sub": "bob"}, token_type="jwt")
OTHER_ALICE = principal_from_claims({"iss": "https://other", "sub": "alice"}, token_type="jwt")


def refused(bindings: SessionBindings, session_id: str, principal=ALICE) -> str:
    with pytest.raises(NotFound) as caught:
        bindings.unwrap(session_id, principal)
    return caught.value.reason


def test_p4_a_wrapped_session_id_unwraps_for_its_principal_only():
    bindings = SessionBindings(KEY)
    wrapped = bindings.wrap("upstream-session-1", ALICE)
    assert "upstream-session-1" not in wrapped and wrapped.isascii() and " " not in wrapped
    assert bindings.unwrap(wrapped, ALICE) == "upstream-session-1"
    assert SessionBindings(KEY).unwrap(wrapped, ALICE) == "upstream-session-1"  # another worker, same key
    assert refused(bindings, wrapped, BOB) == "session_unknown"
    assert refused(bindings, wrapped, OTHER_ALICE) == "session_unknown"  # the same sub from another issuer (I7)
    assert refused(SessionBindings(b"x" * 32), wrapped) == "session_unknown"


@pytest.mark.parametrize("tamper", [
    lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # the MAC
    lambda s: s[:10] + ("A" if s[10] != "A" else "B") + s[11:],  # the upstream id or the time
    lambda s: s.replace("g1.", "g2."),
    lambda s: s + "=",
    lambda s: s.split(".")[0] + "." + s.split(".")[1],
    lambda s: "upstream-session-1",  # the upstream's own id, as a client might have learned it
])
def test_p4_a_tampered_session_id_is_404(tamper):
    bindings = SessionBindings(KEY)
    assert refused(bindings, tamper(bindings.wrap("upstream-session-1", ALICE))) == "session_unknown"


def test_p4_a_session_id_has_one_spelling():
    """base64's unused trailing bits must not give an id a second spelling (a DELETE would not catch it)."""
    bindings = SessionBindings(KEY)
    wrapped = bindings.wrap("s", ALICE)
    bindings.forget(wrapped)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for char in alphabet:
        variant = wrapped[:-1] + char
        if variant != wrapped:
            assert refused(bindings, variant) == "session_unknown"


def test_p4_sessions_expire_and_a_delete_ends_one():
    now = [1_000_000.0]
    bindings = SessionBindings(KEY, max_age=3600, clock=lambda: now[0])
    wrapped = bindings.wrap("s", ALICE)
    now[0] += 3599
    assert bindings.unwrap(wrapped, ALICE) == "s"
    now[0] += 2
    assert refused(bindings, wrapped) == "session_expired"
    fresh = bindings.wrap("s", ALICE)
    bindings.forget(fresh)
    assert refused(bindings, fresh) == "session_ended"


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def post(url: str, token: str, body: dict, session: str | None = None) -> aiohttp.ClientResponse:
    headers = {**JSON, **bearer(token), **({"Mcp-Session-Id": session} if session else {})}
    async with aiohttp.ClientSession() as http:  # a new connection each time
        async with http.post(f"{url}/mcp", data=json.dumps(body), headers=headers) as response:
            await response.read()
            return response


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "session-key"
    path.write_bytes(os.urandom(40))
    return path


async def test_p4_a_session_opened_through_one_gateway_continues_through_another(serve_gateway, upstream, issuer, key_file, tmp_path):
    first = await serve_gateway(upstream.url, server={"session_key_file": str(key_file)})
    second = await serve_gateway(upstream.url, server={"session_key_file": str(key_file)})
    alice = issuer.mint(sub="alice")
    session = (await post(first.url, alice, INIT)).headers["Mcp-Session-Id"]
    assert (await post(second.url, alice, LIST, session)).status == 200
    assert upstream.received[-1].headers["Mcp-Session-Id"] == "session-1"  # the upstream's own id, unwrapped
    assert (await post(second.url, issuer.mint(sub="bob"), LIST, session)).status == 404
    other_key = tmp_path / "other-key"
    other_key.write_bytes(os.urandom(40))
    stranger = await serve_gateway(upstream.url, server={"session_key_file": str(other_key)})
    assert (await post(stranger.url, alice, LIST, session)).status == 404
    assert len(upstream.received) == 2


async def test_p4_workers_share_the_port_and_every_worker_continues_every_session(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, server={"workers": 2})
    children = [int(pid) for pid in open(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children").read().split()]
    assert len(children) == 2
    alice = issuer.mint(sub="alice")
    session = (await post(gateway.url, alice, INIT)).headers["Mcp-Session-Id"]
    def reads(pid: int) -> int:
        """Read system calls so far: every request a worker serves makes some (CPU ticks are too coarse)."""
        return int(next(line.split()[1] for line in open(f"/proc/{pid}/io") if line.startswith("syscr:")))

    before = {pid: reads(pid) for pid in children}
    # 60 new connections: the kernel spreads them over both workers; each continues the session.
    statuses = []
    for _ in range(3):
        statuses += await asyncio.gather(*(post(gateway.url, alice, LIST, session) for _ in range(20)))
    assert [r.status for r in statuses] == [200] * 60
    worked = {pid: reads(pid) - before[pid] for pid in children}
    assert all(ticks > 0 for ticks in worked.values()), worked  # both workers served some of them
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gateway.process.wait(), 15) == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


def test_p4_session_key_file_keeps_every_byte_but_one_line_end(tmp_path):
    """A binary key whose bytes happen to be whitespace is kept whole; a text key's trailing newline is not key."""
    from gateway.mcp.sessions import load_session_key

    binary = b" \t" + bytes(range(40, 70)) + b"\x0b "
    (tmp_path / "binary").write_bytes(binary)
    assert load_session_key(tmp_path / "binary") == binary
    (tmp_path / "text").write_bytes(b"c2Vzc2lvbi1rZXktZm9yLXRlc3RzLW9ubHktMTIzNDU2Nzg5MA==\n")
    assert load_session_key(tmp_path / "text") == b"c2Vzc2lvbi1rZXktZm9yLXRlc3RzLW9ubHktMTIzNDU2Nzg5MA=="
