"""S1-S3, A6, O2 under attack: what a fresh red-team pass found, each against a real ``serve`` process.

Every test here is a regression test for one finding (the commit that fixed it says what the attack was).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dpop_proofs import DpopKey
from tests.factories import RESOURCE
from tests.test_dpop import INIT
from tests.test_dpop_redis import redis_url  # noqa: F401 (fixture)
from tests.test_tracing import otlp, traced  # noqa: F401 (fixtures)


async def post(gateway, headers: Any, body: Any = INIT) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/mcp", json=body, headers=headers) as response:
            return response.status, response.headers, await response.text()


def reasons(gateway) -> list[str]:
    return [record["reason"] for record in gateway.log_records() if "reason" in record]


@pytest.fixture
def bound(issuer):
    key = DpopKey.ec()
    return key, issuer.mint(cnf={"jkt": key.jkt})


async def test_S1_proof_iat_beyond_the_float_range_is_a_401_not_a_500(serve_gateway, upstream, bound):
    """math.isfinite(10**400) raises OverflowError: the proof's iat made the gateway answer 500 with a traceback."""
    key, token = bound
    gateway = await serve_gateway(upstream.url)
    for iat in (10**400, -(10**400), 2**53):
        status, _, body = await post(gateway, {"Authorization": f"DPoP {token}", "DPoP": key.proof(RESOURCE, token, iat=iat)})
        assert status == 401, body
    assert reasons(gateway).count("dpop_claim_malformed") == 3
    assert "Traceback" not in gateway.log_text()
    assert not upstream.received


async def test_S3_a_client_prefix_cannot_swallow_the_trusted_proxys_xfcc_element(serve_gateway, upstream, issuer):
    """APPEND_FORWARD keeps what the client sent and appends the proxy's element after a comma. A client
    prefix ending in an open quote, before a proxy element that holds one escaped quote (the subject of the
    attacker's own certificate, RFC 4514 ``\\"``), read left to right, made the whole header one element
    whose only Hash outside quotes was the client's: a stolen token bound to another certificate passed."""
    from tests.test_mtls import der_sha256, make_certificate, x5t

    victim, attacker = make_certificate("victim"), make_certificate("attacker")
    gateway = await serve_gateway(upstream.url, auth={"mtls": {"trusted_proxies": ["127.0.0.1/32"]}})
    token = issuer.mint(cnf={"x5t#S256": x5t(victim)})  # stolen
    client_part = f"Hash={der_sha256(victim).hex()};x=\""
    proxy_part = (f"By=spiffe://cluster.local/ns/mcp/sa/gateway;Hash={der_sha256(attacker).hex()};"
                  'Subject="CN=a\\"b,O=Example";URI=spiffe://cluster.local/ns/mcp/sa/attacker')
    status, headers, _ = await post(gateway, {"Authorization": f"Bearer {token}",
                                              "X-Forwarded-Client-Cert": f"{client_part},{proxy_part}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert "mtls_xfcc_malformed" in reasons(gateway)
    assert not upstream.received
    # The proxy's element alone, or after a well-formed client element, still reads as the proxy wrote it.
    own = issuer.mint(cnf={"x5t#S256": x5t(attacker)})
    for value in (proxy_part, f"Hash={der_sha256(victim).hex()};Subject=\"CN=x,y\",{proxy_part}"):
        status, _, body = await post(gateway, {"Authorization": f"Bearer {own}", "X-Forwarded-Client-Cert": value})
        assert status == 200, body


def _envoy_quoted(text: str) -> str:
    """How Envoy writes Subject: always double-quoted; the subject itself has ``"`` and ``\\`` escaped (RFC 4514)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.text(alphabet=st.sampled_from('ab=;,"\\ '), max_size=24),
       subject=st.text(alphabet=st.sampled_from('ab=;,"\\ '), max_size=12))
def test_S3_whatever_the_client_prefix_the_proxys_element_is_read_or_refused(prefix, subject):
    """The property behind the XFCC fix: the last element is the proxy's, exactly, or the header is refused."""
    from gateway.auth.mtls import proxy_element

    proxy = {"by": "spiffe://gw", "hash": "ab" * 32, "subject": subject}
    written = f"By=spiffe://gw;Hash={'ab' * 32};Subject={_envoy_quoted(subject)}"
    try:
        element = proxy_element(f"{prefix},{written}")
    except ValueError:
        return
    assert element == proxy


async def test_S1_one_token_holder_cannot_fill_the_replay_window_for_everyone(serve_gateway, upstream, issuer):
    """A valid DPoP token holder sent fresh proofs as fast as it could: once auth.dpop.jti_cache_size
    entries were live, every DPoP caller of the process got 503 (dpop_replay_window_full) for a minute.
    Now one principal holds at most a tenth of the window (at least 100): it gets 429, the others pass."""
    gateway = await serve_gateway(upstream.url, auth={"dpop": {"jti_cache_size": 1000}})
    mallory, alice = DpopKey.ec(), DpopKey.ec()
    flood, token = issuer.mint(sub="mallory", cnf={"jkt": mallory.jkt}), issuer.mint(sub="alice", cnf={"jkt": alice.jkt})
    async with aiohttp.ClientSession() as http:
        async def send(key, bound):
            headers = {"Authorization": f"DPoP {bound}", "DPoP": key.proof(RESOURCE, bound)}
            async with http.post(gateway.url + "/mcp", json=INIT, headers=headers) as response:
                return response.status, response.headers.get("Retry-After")

        statuses = [(await send(mallory, flood))[0] for _ in range(101)]
        assert statuses[:100] == [200] * 100 and statuses[100] == 429
        status, retry_after = await send(mallory, flood)
        assert status == 429 and retry_after is not None
        assert (await send(alice, token))[0] == 200
    assert "dpop_replay_share_used" in reasons(gateway)


# What a client may put in params._meta (SEP-414) that a tracer upstream could read another way than the
# gateway: uppercase hex, an all-zero trace id, a non-string, another spelling, a tracestate on its own.
HOSTILE_META = [
    {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "tracestate": "A=1,,=="},
    {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
    {"traceparent": 5},
    {"TraceParent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    {"tracestate": "vendor=forged"},
]
GOOD_META = {"traceparent": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", "TRACESTATE": "x=1"}


def _tool_call(meta: dict, rpc_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": "echo", "arguments": {}, "_meta": meta}}


def _forwarded_meta(received) -> list:
    body = json.loads(received.body)
    return [message["params"]["_meta"] for message in (body if isinstance(body, list) else [body])]


async def test_O2_tracing_off_a_client_trace_context_in_meta_is_reserialized_or_dropped(serve_gateway, upstream, issuer):
    """With tracing off the traceparent header was parsed and re-serialized, but params._meta went to the
    upstream exactly as the client wrote it (malformed, all-zero ids, other spellings)."""
    from tests.factories import bearer

    gateway = await serve_gateway(upstream.url)
    for meta in HOSTILE_META:
        status, _, body = await post(gateway, bearer(issuer.mint()), _tool_call(meta))
        assert status == 200, body
        assert _forwarded_meta(upstream.received[-1]) == [{}], meta
    status, _, _ = await post(gateway, bearer(issuer.mint()), [_tool_call(GOOD_META), _tool_call({"other": 1}, 2)])
    assert status == 200
    assert _forwarded_meta(upstream.received[-1]) == [
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {"other": 1}]


async def test_O2_tracing_on_no_spelling_of_the_client_trace_context_in_meta_reaches_the_upstream(traced, issuer):
    """With tracing on, only a member spelled exactly ``traceparent`` was replaced by the gateway's
    context: a ``tracestate`` on its own, or ``TraceParent``, went upstream as the client wrote it."""
    from tests.factories import bearer

    served, _, upstream, stop = traced
    for meta in HOSTILE_META:
        status, _, body = await post(served, bearer(issuer.mint()), [_tool_call(meta), _tool_call({"other": 1}, 2)])
        assert status == 200, body
        replaced, untouched = _forwarded_meta(upstream.received[-1])
        assert set(replaced) == {"traceparent"} and replaced["traceparent"] == upstream.received[-1].headers["traceparent"], meta
        assert untouched == {"other": 1}
    await stop()


@pytest.mark.parametrize("url", ["redis://:hunter2@[::1", "redis://:hunter2@127.0.0.1:abc/0", "http://:hunter2@127.0.0.1:6379"])
def test_S2_a_redis_url_the_client_cannot_read_names_the_key_never_the_password(tmp_path, url):
    """``redis://[::1`` made validate (and serve) end in a ValueError traceback; a port that is not a
    number passed validate and failed serve at start-up."""
    import subprocess
    import sys

    (tmp_path / "policies").mkdir()
    (tmp_path / "g.yaml").write_text(json.dumps({
        "server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
        "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": str(tmp_path / "policies")},
        "state": {"redis_url": url}}))
    done = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(tmp_path / "g.yaml")],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "g.yaml: state.redis_url: must be a redis://" in output, output
    assert "Traceback" not in output and "hunter2" not in output


async def test_S2_a_burst_of_concurrent_proofs_waits_for_a_redis_connection_rather_than_503(serve_gateway, upstream, issuer, redis_url):
    """redis-py's plain pool raises MaxConnectionsError at once when its 64 connections are busy: 200 valid
    DPoP requests arriving together got 137 answers of 503 from a healthy Redis."""
    import asyncio
    from collections import Counter

    gateway = await serve_gateway(upstream.url, state={"redis_url": redis_url})
    callers = []
    for index in range(200):
        key = DpopKey.ec()
        callers.append((key, issuer.mint(sub=f"user-{index}", cnf={"jkt": key.jkt})))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def send(key, token):
            headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof(RESOURCE, token)}
            async with http.post(gateway.url + "/mcp", json=INIT, headers=headers) as response:
                return response.status

        statuses = Counter(await asyncio.gather(*(send(key, token) for key, token in callers)))
    assert statuses == {200: 200}, (statuses, [r.get("detail") for r in gateway.log_records() if r.get("status") == 503][:3])


@pytest.mark.parametrize("cnf", [{"x5t#S256": None}, "null", {"jkt": None}, {"x5t#S256": ["a"]}, {"jkt": 7, "x5t#S256": "a"}])
async def test_S3_a_cnf_member_that_is_not_a_string_is_refused_never_ignored(serve_gateway, upstream, issuer, cnf):
    """``cnf: {"x5t#S256": null}`` was read as no binding at all: the certificate-bound token worked as a
    bearer token from anywhere."""
    from tests.factories import bearer

    gateway = await serve_gateway(upstream.url, auth={"mtls": {"trusted_proxies": ["127.0.0.1/32"]}})
    token = issuer.mint_raw(json.dumps(issuer.claims()).rstrip("}") + ', "cnf": null}') if cnf == "null" else issuer.mint(cnf=cnf)
    status, headers, _ = await post(gateway, bearer(token))
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert "cnf_malformed" in reasons(gateway)
    assert not upstream.received


async def test_S3_a_forwarded_certificate_with_an_unknown_x509_version_is_a_401_not_a_500(serve_gateway, upstream, issuer):
    """cryptography raises x509.InvalidVersion, which is no ValueError, for a certificate whose version
    field is not v1-v3: the request was answered 500 with a traceback (R5)."""
    from urllib.parse import quote

    from cryptography.hazmat.primitives import serialization

    from tests.test_mtls import CERT, x5t

    der = bytearray(CERT.public_bytes(serialization.Encoding.DER))
    version_at = der.index(bytes.fromhex("a003020102")) + 4  # TBSCertificate's [0] EXPLICIT INTEGER 2 (v3)
    der[version_at] = 49
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.b64encode(bytes(der)).decode() + "\n-----END CERTIFICATE-----\n"
    gateway = await serve_gateway(upstream.url, auth={"mtls": {"trusted_proxies": ["127.0.0.1/32"]}})
    status, _, body = await post(gateway, {"Authorization": f"Bearer {issuer.mint(cnf={'x5t#S256': x5t(CERT)})}",
                                           "X-Forwarded-Client-Cert": f'By=spiffe://gw;Cert="{quote(pem, safe="")}"'})
    assert status == 401, body
    assert "mtls_xfcc_malformed" in reasons(gateway) and "Traceback" not in gateway.log_text()
    assert not upstream.received


async def test_O2_collector_credentials_in_the_endpoint_url_never_reach_the_log(serve_gateway, upstream, otlp, issuer):
    """The start-up line said ``tracing on: OTLP/HTTP to https://user:secret@collector/...``."""
    from tests.factories import bearer

    _, endpoint = otlp
    gateway = await serve_gateway(upstream.url, tracing={
        "enabled": True, "endpoint": endpoint.replace("http://", "http://collector-user:s3cret-pass@"), "sample_ratio": 1.0})
    status, _, _ = await post(gateway, bearer(issuer.mint()))
    assert status == 200
    gateway.process.terminate()
    assert await gateway.process.wait() == 0
    log = gateway.log_text()
    assert "tracing on: OTLP/HTTP to http://***@127.0.0.1:" in log
    assert "s3cret-pass" not in log and "collector-user" not in log
