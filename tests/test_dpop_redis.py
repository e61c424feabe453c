"""S2: the DPoP replay window in Redis (``state.redis_url``): two gateways sharing one Redis refuse a proof
replayed from one to the other; Redis unreachable or too slow is 503 with Retry-After, never an acceptance.

Redis is Debian's ``redis-server``, started here on 127.0.0.1 with a free port and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from gateway.auth.replay import RedisReplayWindow
from gateway.errors import VerifierUnavailable
from tests.conftest import free_port
from tests.dpop_proofs import DpopKey
from tests.factories import RESOURCE
from tests.test_dpop import INIT, call, refusal_reasons


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("S2 needs Debian's redis-server (make test installs it)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture
def bound(issuer):
    key = DpopKey.ec()
    return key, issuer.mint(cnf={"jkt": key.jkt})


async def test_s2_proof_replayed_across_two_gateways_sharing_redis_refused(upstream, start_gateway, bound, redis_url, caplog):
    key, token = bound
    first = await start_gateway(upstream.url, authenticated=False, state={"redis_url": redis_url})
    second = await start_gateway(upstream.url, authenticated=False, state={"redis_url": redis_url})
    proof = key.proof(RESOURCE, token)
    assert (await call(first, token, proof)).status == 200
    replayed = await call(second, token, proof)
    assert replayed.status == 401 and "dpop_replayed" in refusal_reasons(caplog)
    assert (await call(second, token, key.proof(RESOURCE, token))).status == 200  # a fresh proof is fine
    assert len(upstream.received) == 2


async def test_s2_replay_on_one_gateway_with_redis_refused(upstream, start_gateway, bound, redis_url):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False, state={"redis_url": redis_url})
    proof = key.proof(RESOURCE, token)
    assert (await call(client, token, proof)).status == 200
    assert (await call(client, token, proof)).status == 401


async def test_s2_redis_unreachable_is_503_never_accepted(upstream, start_gateway, bound, caplog):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False, state={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    response = await call(client, token, key.proof(RESOURCE, token))
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert "replay_store_unavailable" in refusal_reasons(caplog)
    assert not upstream.received


async def test_s2_redis_too_slow_is_503_within_the_timeout(upstream, start_gateway, bound):
    """A Redis that accepts the connection and never answers: the call is bounded by state.timeout."""
    silent: list[asyncio.StreamWriter] = []

    async def never_answer(reader, writer):
        silent.append(writer)
        await reader.read()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False,
                                 state={"redis_url": f"redis://127.0.0.1:{port}/0", "timeout": "300ms"})
    started = time.monotonic()
    response = await call(client, token, key.proof(RESOURCE, token))
    assert response.status == 503 and time.monotonic() - started < 2.0
    assert not upstream.received
    for writer in silent:
        writer.close()
    server.close()


async def test_s2_redis_window_keys_expire_with_the_proof_window(redis_url):
    import redis.asyncio as aioredis

    window = RedisReplayWindow(redis_url, timeout=1.0, prefix="t:")
    await window.start()
    try:
        assert await window.first_use(b"\x01" * 32, 70) is True
        assert await window.first_use(b"\x01" * 32, 70) is False
        client = aioredis.Redis.from_url(redis_url)
        ttl = await client.ttl("t:" + "01" * 32)
        await client.aclose()
        assert 60 < ttl <= 70
    finally:
        await window.close()


async def test_s2_redis_window_not_started_fails_closed():
    with pytest.raises(VerifierUnavailable):
        await RedisReplayWindow("redis://127.0.0.1:1/0", timeout=0.1, prefix="t:").first_use(b"x", 1)


def test_s2_redis_url_is_a_secret_and_checked():
    from gateway.config import ConfigError, parse_config

    base = {"server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "/"}}
    config = parse_config({**base, "state": {"redis_url": "redis://:hunter2@127.0.0.1:6379/0"}})
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as problems:
        parse_config({**base, "state": {"redis_url": "http://:hunter2@127.0.0.1/"}}, source="g.yaml")
    assert "g.yaml: state.redis_url: must be a redis://" in str(problems.value) and "hunter2" not in str(problems.value)
    _ = INIT
