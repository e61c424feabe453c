"""R3 (a fair share of the upstream per principal) and R6 (key and introspection work never stalls valid
traffic): findings 4, 8 and 9 of the bounds review as regressions against a real ``serve`` process, and
the per-principal limiter, the key cache and the introspector on their own.

The test issuer here can hold its JWKS and introspection answers (``SlowIssuer``), and counts how many
introspection calls it is answering at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.authenticator import token_hash
from gateway.auth.jwks import JwksCache
from gateway.auth.principal import Principal
from gateway.config import IssuerConfig, JwksConfig, PrincipalLimitsConfig
from gateway.errors import TooManyRequests, Unauthenticated
from gateway.limits import PrincipalLimiter
from tests.factories import SigningKey, TestIssuer, bearer
from tests.upstreams import Received, answer_json, dies_mid_stream, slow_headers, start_sse, status

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}
INTROSPECTION = {"client_id": "gateway", "client_secret": "gateway-secret"}


@dataclass
class SlowIssuer(TestIssuer):
    """A ``TestIssuer`` whose JWKS and introspection answers can be held for up to ``*_hold`` seconds, or
    until the matching ``release_*`` event is set (so a test can end without waiting the hold out)."""

    __test__ = False

    jwks_hold: float = 0.0
    jwks_requests: int = 0  # counted on arrival (``jwks_fetches`` once answered): a fetch is under way
    introspection_hold: float = 0.0
    release_jwks: asyncio.Event = field(default_factory=asyncio.Event)
    release_introspection: asyncio.Event = field(default_factory=asyncio.Event)
    introspections_in_flight: int = 0
    most_introspections_in_flight: int = 0

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.jwks_hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release_jwks.wait(), self.jwks_hold)
        return await super()._jwks(request)

    async def _introspect(self, request: web.Request) -> web.Response:
        self.introspections_in_flight += 1
        self.most_introspections_in_flight = max(self.most_introspections_in_flight, self.introspections_in_flight)
        try:
            if self.introspection_hold:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release_introspection.wait(), self.introspection_hold)
            return await super()._introspect(request)
        finally:
            self.introspections_in_flight -= 1


@pytest.fixture
async def issuer(aiohttp_server) -> SlowIssuer:
    """Overrides conftest's ``issuer``, so ``serve_gateway`` and ``start_gateway`` use this one."""
    test_issuer = SlowIssuer()
    server = await aiohttp_server(test_issuer.app())
    test_issuer.url = str(server.make_url("")).rstrip("/")
    yield test_issuer
    test_issuer.release_jwks.set()
    test_issuer.release_introspection.set()


async def post(http: aiohttp.ClientSession, url: str, token: str, body: dict = CALL) -> tuple[int, dict, str]:
    async with http.post(f"{url}/mcp", json=body, headers={**ACCEPT, **bearer(token)}) as response:
        return response.status, dict(response.headers), await response.text()


async def open_stream(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    """A standalone GET stream, read up to its first comment so it is known to be relayed."""
    response = await http.get(f"{url}/mcp", headers={"Accept": "text/event-stream", **bearer(token)})
    assert response.status == 200, await response.text()
    assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5) == b": open\n\n"
    return response


async def metric(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == name and s.labels == labels), 0.0)


async def refusals(http: aiohttp.ClientSession, url: str, stage: str, reason: str) -> float:
    return await metric(http, url, "mcp_gateway_refusals_total", stage=stage, reason=reason)


def assert_429(status_code: int, headers: dict, text: str) -> None:
    assert status_code == 429, text
    assert int(headers["Retry-After"]) >= 1
    body = json.loads(text)
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32000


def held_get_streams(release: asyncio.Event):
    """GET: an SSE stream held open until ``release``; POST: a JSON-RPC result."""

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        if request.method != "GET":
            return await answer_json(request, received)
        response = await start_sse(request)
        await response.write(b": open\n\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 30)
        return response

    return behaviour


# -- R3, finding 4: one principal cannot take the upstream ---------------------------------------------------


async def test_r3_a_principal_holding_its_share_of_streams_gets_429_while_another_is_served_at_once(serve_gateway, upstream, issuer):
    release = asyncio.Event()
    upstream.behaviour = held_get_streams(release)
    gateway = await serve_gateway(upstream.url, limits={"per_principal": {"concurrent": 4}})
    alice = issuer.mint()
    try:
        async with aiohttp.ClientSession() as http:
            streams = [await open_stream(http, gateway.url, alice) for _ in range(4)]
            # The fifth request of alice, a stream or a call, and with another token of hers: 429 at once.
            async with http.get(f"{gateway.url}/mcp", headers={"Accept": "text/event-stream", **bearer(alice)}) as response:
                assert_429(response.status, dict(response.headers), await response.text())
            assert_429(*await post(http, gateway.url, alice))
            assert_429(*await post(http, gateway.url, issuer.mint()))
            # Bob is served at once.
            started = time.monotonic()
            status_code, _, text = await post(http, gateway.url, issuer.mint(sub="bob"))
            assert status_code == 200, text
            assert time.monotonic() - started < 1.0
            assert [r.method for r in upstream.received] == ["GET"] * 4 + ["POST"]
            assert await refusals(http, gateway.admin_url, "limits", "principal_concurrency") == 3
            for stream in streams:
                stream.close()
    finally:
        release.set()
    assert any(e["reason"] == "principal_concurrency" and e["outcome"] == "deny" for e in gateway.audit())


async def test_r3_a_stream_that_ends_frees_its_slot(serve_gateway, upstream, issuer):
    release = asyncio.Event()
    upstream.behaviour = held_get_streams(release)
    gateway = await serve_gateway(upstream.url, limits={"per_principal": {"concurrent": 2}})
    alice = issuer.mint()
    try:
        async with aiohttp.ClientSession() as http:
            first = await open_stream(http, gateway.url, alice)
            second = await open_stream(http, gateway.url, alice)
            assert_429(*await post(http, gateway.url, alice))
            first.close()  # the client goes away: handler cancellation, so the slot must be given back
            for _ in range(100):
                status_code, _, _ = await post(http, gateway.url, alice)
                if status_code == 200:
                    break
                await asyncio.sleep(0.02)
            assert status_code == 200
            # A slot is one request: the freed one is taken again by a new stream, and no more.
            third = await open_stream(http, gateway.url, alice)
            assert_429(*await post(http, gateway.url, alice))
            second.close()
            third.close()
    finally:
        release.set()


async def test_r3_slots_are_released_on_every_refusal_and_upstream_failure(upstream, start_gateway, issuer, policies_dir):
    (policies_dir / "deny.cedar").write_text('forbid (principal, action == Action::"tools/call", resource == Tool::"forbidden");\n')
    client = await start_gateway(upstream.url, limits={"per_principal": {"concurrent": 2}},
                                 upstream={"response_timeout": "200ms"})
    denied = {**CALL, "params": {"name": "forbidden"}}
    cases = [
        (answer_json, denied, 403),  # policy
        (answer_json, {"jsonrpc": "1.0"}, 400),  # message
        (status(401), CALL, 502),  # the upstream refuses the gateway
        (slow_headers(1.0), CALL, 504),  # no response headers within response_timeout
        (dies_mid_stream, CALL, 200),  # the upstream dies mid-stream
    ]
    for behaviour, body, expected in cases:
        upstream.behaviour = behaviour
        for _ in range(3):  # more than the share: a slot kept by any of them would give 429
            response = await client.post("/mcp", json=body, headers=ACCEPT)
            await response.read()
            assert response.status == expected, (behaviour, await response.text())
    assert client.gateway.limiter.tracked == 0


async def test_r3_rate_limit_end_to_end_third_immediate_request_is_429(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, limits={"per_principal": {"rate": 2, "burst": 2}})
    alice = issuer.mint()
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(post(http, gateway.url, alice) for _ in range(3)))
        assert sorted(a[0] for a in answers) == [200, 200, 429]
        [refused] = [a for a in answers if a[0] == 429]
        assert_429(*refused)
        assert refused[1]["Retry-After"] == "1"
        assert (await post(http, gateway.url, issuer.mint(sub="bob")))[0] == 200
        assert await refusals(http, gateway.admin_url, "limits", "principal_rate") == 1
    assert len(upstream.received) == 3


# -- R3: the limiter on its own -----------------------------------------------------------------------------


def principal(subject: str = "alice", issuer_url: str = "https://idp.example.com") -> Principal:
    return Principal(issuer=issuer_url, subject=subject, entity_id=subject, client_id="c", scopes=frozenset())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_r3_limiter_counts_in_flight_per_principal_and_release_frees_a_slot():
    limiter = PrincipalLimiter(PrincipalLimitsConfig(concurrent=2))
    alice = principal()
    first, second = limiter.acquire(alice), limiter.acquire(alice)
    with pytest.raises(TooManyRequests) as refused:
        limiter.acquire(alice)
    assert refused.value.reason == "principal_concurrency" and refused.value.retry_after >= 1
    limiter.acquire(principal("bob")).release()  # another principal is not affected
    first.release()
    first.release()  # a second release gives back nothing more
    assert limiter.in_flight(alice) == 1
    third = limiter.acquire(alice)
    with pytest.raises(TooManyRequests):
        limiter.acquire(alice)
    second.release()
    third.release()
    assert limiter.tracked == 0


def test_r3_limiter_shares_are_per_issuer_and_principal():
    limiter = PrincipalLimiter(PrincipalLimitsConfig(concurrent=1))
    limiter.acquire(principal("alice", "https://a.example.com"))
    limiter.acquire(principal("alice", "https://b.example.com"))  # I7: another principal
    with pytest.raises(TooManyRequests):
        limiter.acquire(principal("alice", "https://a.example.com"))


async def test_r3_limiter_slot_is_released_when_its_holder_fails_or_is_cancelled():
    limiter = PrincipalLimiter(PrincipalLimitsConfig(concurrent=1))
    gate = asyncio.Event()

    async def hold() -> None:
        with limiter.acquire(principal()):
            await gate.wait()

    held = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert limiter.in_flight(principal()) == 1
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert limiter.tracked == 0
    with pytest.raises(RuntimeError):
        with limiter.acquire(principal()):
            raise RuntimeError("upstream broke")
    assert limiter.tracked == 0


def test_r3_token_bucket_with_a_fake_clock():
    clock = FakeClock()
    limiter = PrincipalLimiter(PrincipalLimitsConfig(rate=2, burst=2), clock=clock)
    alice = principal()
    limiter.acquire(alice).release()
    limiter.acquire(alice).release()
    with pytest.raises(TooManyRequests) as refused:
        limiter.acquire(alice)
    assert refused.value.reason == "principal_rate" and refused.value.retry_after == 1
    assert limiter.in_flight(alice) == 0  # a refused request holds no slot
    clock.now += 0.5  # one token back
    limiter.acquire(alice).release()
    with pytest.raises(TooManyRequests):
        limiter.acquire(alice)
    clock.now += 60  # a long pause refills the bucket to `burst`, not beyond
    limiter.acquire(alice).release()
    limiter.acquire(alice).release()
    with pytest.raises(TooManyRequests):
        limiter.acquire(alice)
    limiter.acquire(principal("bob")).release()  # bob has his own bucket


def test_r3_burst_defaults_to_the_rate_and_at_least_one():
    clock = FakeClock()
    slow = PrincipalLimiter(PrincipalLimitsConfig(rate=0.5), clock=clock)
    slow.acquire(principal()).release()
    with pytest.raises(TooManyRequests) as refused:
        slow.acquire(principal())
    assert refused.value.retry_after == 2  # one token per 2 s
    fast = PrincipalLimiter(PrincipalLimitsConfig(rate=3), clock=clock)
    for _ in range(3):
        fast.acquire(principal()).release()
    with pytest.raises(TooManyRequests):
        fast.acquire(principal())


def test_r3_limiter_memory_is_bounded_for_many_principals():
    # Rate off: nothing is kept once a principal has nothing in flight.
    limiter = PrincipalLimiter(PrincipalLimitsConfig(concurrent=4))
    for i in range(10_000):
        limiter.acquire(principal(f"user-{i}")).release()
    assert limiter.tracked == 0
    # Rate on: buckets are forgotten once full again (burst/rate = 1 s), and never more than max_tracked.
    clock = FakeClock()
    limiter = PrincipalLimiter(PrincipalLimitsConfig(rate=10, burst=10), clock=clock, max_tracked=100)
    for i in range(1_000):
        limiter.acquire(principal(f"user-{i}")).release()
    assert limiter.tracked <= 100
    clock.now += 1.0
    assert limiter.tracked == 0
    # A forgotten bucket is a full one: the principal gets its burst again, no more.
    for _ in range(10):
        limiter.acquire(principal("user-999")).release()
    with pytest.raises(TooManyRequests):
        limiter.acquire(principal("user-999"))


# -- R6, finding 8: a refetch for an unknown kid does not stall cached keys ----------------------------------


async def test_r6_valid_token_is_verified_at_once_while_an_unknown_kid_refetch_is_in_flight(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    fetches, requests = issuer.jwks_fetches, issuer.jwks_requests
    issuer.jwks_hold = 3.0  # the JWKS now answers in 3 s
    forged = issuer.mint(key=SigningKey.rsa(kid="stranger"), headers={"kid": "forged-1"})
    async with aiohttp.ClientSession() as http:
        refetching = asyncio.create_task(post(http, gateway.url, forged))
        for _ in range(200):
            if issuer.jwks_requests > requests:
                break
            await asyncio.sleep(0.01)
        assert issuer.jwks_requests == requests + 1, "the unknown kid did not cause a refetch"
        started = time.monotonic()
        status_code, _, text = await post(http, gateway.url, issuer.mint())  # a new token, key cached
        elapsed = time.monotonic() - started
        assert status_code == 200, text
        assert elapsed < 0.5, f"a valid token waited {elapsed:.2f}s behind a refetch"
        assert not refetching.done()  # the forged token does wait for its refetch...
        issuer.release_jwks.set()
        assert (await asyncio.wait_for(refetching, 5))[0] == 401  # ...and is refused after it
    assert issuer.jwks_fetches == fetches + 1


async def test_r6_stale_keys_are_served_while_one_background_refresh_runs(issuer):
    clock = FakeClock()
    cache = JwksCache([IssuerConfig(issuer=issuer.url)], JwksConfig(cache_min=60, cache_max=60), clock=clock)
    await cache.start()
    try:
        first = await cache.keys(issuer.url)  # no keys yet: this one waits for the fetch
        assert issuer.jwks_fetches == 1
        clock.now += 61  # the keys are stale
        issuer.jwks_hold = 3.0
        rotated = SigningKey.ec(kid="ec-rotated")
        issuer.keys.append(rotated)
        answers = await asyncio.wait_for(asyncio.gather(*(cache.keys(issuer.url) for _ in range(5))), 0.5)
        assert all(keys is first for keys in answers)  # the old keys, at once
        for _ in range(200):
            if issuer.jwks_requests == 2:
                break
            await asyncio.sleep(0.01)
        assert issuer.jwks_requests == 2  # one refresh for all five
        issuer.release_jwks.set()
        for _ in range(200):
            if cache.states()[issuer.url].inflight is None:
                break
            await asyncio.sleep(0.01)
        assert (await cache.keys(issuer.url)).has_kid("ec-rotated")
        assert issuer.jwks_fetches == 2
    finally:
        await cache.close()


# -- R6, finding 9: introspection calls are capped ------------------------------------------------------------


async def test_r6_introspection_calls_are_capped_and_the_rest_get_503_with_retry_after(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, auth={"introspection": {**INTROSPECTION, "max_concurrent": 2}})
    issuer.introspection_hold = 5.0
    tokens = [issuer.opaque(sub=f"user-{i}") for i in range(5)]
    async with aiohttp.ClientSession() as http:
        calls = [asyncio.create_task(post(http, gateway.url, token)) for token in tokens]
        for _ in range(200):
            if sum(c.done() for c in calls) >= 3:
                break
            await asyncio.sleep(0.02)
        refused = [c.result() for c in calls if c.done()]
        assert len(refused) == 3, f"{len(refused)} answered while the calls were held"
        for status_code, headers, text in refused:
            assert status_code == 503, text
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(text)["error"]["code"] == -32000
        assert issuer.introspections_in_flight == 2
        issuer.release_introspection.set()
        served = await asyncio.wait_for(asyncio.gather(*(c for c in calls if not c.done())), 5)
        assert [s[0] for s in served] == [200, 200]
        assert issuer.introspections == 2 and issuer.most_introspections_in_flight == 2
        assert await refusals(http, gateway.admin_url, "token", "introspection_busy") == 3
        assert await metric(http, gateway.admin_url, "mcp_gateway_introspection_busy_total") == 3


async def test_r6_cache_hits_and_joins_of_a_call_in_flight_take_no_place(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, auth={"introspection": {**INTROSPECTION, "max_concurrent": 1}})
    cached, new, other = issuer.opaque(sub="cached"), issuer.opaque(sub="new"), issuer.opaque(sub="other")
    async with aiohttp.ClientSession() as http:
        assert (await post(http, gateway.url, cached))[0] == 200
        issuer.introspection_hold = 5.0
        same = [asyncio.create_task(post(http, gateway.url, new)) for _ in range(5)]  # T9: one call for all five
        for _ in range(200):
            if issuer.introspections_in_flight == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # let the other four join
        assert not any(c.done() for c in same)
        status_code, headers, _ = await asyncio.wait_for(post(http, gateway.url, other), 2)
        assert status_code == 503 and "Retry-After" in headers  # the one place is taken
        assert (await asyncio.wait_for(post(http, gateway.url, cached), 2))[0] == 200  # a cache hit takes none
        issuer.release_introspection.set()
        assert [s[0] for s in await asyncio.wait_for(asyncio.gather(*same), 5)] == [200] * 5
    assert issuer.introspections == 2  # `cached` once, `new` once; `other` never reached the issuer


async def test_r6_a_caller_that_leaves_does_not_cancel_the_call_others_wait_for(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"introspection": INTROSPECTION})
    introspector = client.gateway.introspector
    token = issuer.opaque()
    issuer.introspection_hold = 5.0
    leaving = asyncio.create_task(introspector.introspect(token, token_hash(token)))
    staying = asyncio.create_task(introspector.introspect(token, token_hash(token)))
    for _ in range(200):
        if issuer.introspections_in_flight == 1:
            break
        await asyncio.sleep(0.01)
    leaving.cancel()
    await asyncio.sleep(0.05)
    issuer.release_introspection.set()
    assert (await asyncio.wait_for(staying, 5)).subject == "alice"
    assert issuer.introspections == 1


async def test_r2_negative_introspection_answers_are_cached_without_their_traceback(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"introspection": INTROSPECTION})
    introspector = client.gateway.introspector
    inactive = "not-a-token-the-issuer-knows"
    with pytest.raises(Unauthenticated):
        await introspector.introspect(inactive, token_hash(inactive))
    # A traceback would keep the call's frames (the token, the whole answer) alive for the cache's lifetime.
    cached = introspector._cache[token_hash(inactive)]
    assert isinstance(cached, Unauthenticated) and cached.__traceback__ is None
