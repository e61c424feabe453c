"""S1: DPoP proofs (RFC 9449 §4.3) — the proof checker's table, then the gateway end to end on loopback
with the test issuer minting DPoP-bound tokens (``cnf.jkt``)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from gateway.auth.dpop import (
    MAX_PROOF_BYTES,
    DpopNonces,
    DpopRules,
    access_token_hash,
    expected_htu,
    htu_matches,
    jwk_thumbprint,
    read_proof,
)
from gateway.auth.replay import MemoryReplayWindow
from gateway.errors import InvalidDpopProof, UseDpopNonce, VerifierUnavailable
from tests.dpop_proofs import DpopKey, ath, dpop_headers, thumbprint
from tests.factories import RESOURCE, b64url

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"  # any token: read_proof only hashes it
KEY = DpopKey.ec()
RULES = DpopRules(algorithms=frozenset({"ES256", "RS256"}), max_age=60.0, htu=expected_htu(RESOURCE))


def check(proof: str | list[str], *, method: str = "POST", token: str = TOKEN, rules: DpopRules = RULES, now: float | None = None):
    values = proof if isinstance(proof, list) else [proof]
    return read_proof(values, method=method, token=token, rules=rules, now=time.time() if now is None else now)


def reason(proof: str | list[str], **kwargs) -> str:
    with pytest.raises(InvalidDpopProof) as refused:
        check(proof, **kwargs)
    return refused.value.reason


# -- the checker's table (RFC 9449 §4.3, in its order) ----------------------------------------------------

def test_s1_good_proof_yields_its_key_thumbprint_and_jti():
    proof = KEY.proof(RESOURCE, TOKEN, jti="abc")
    read = check(proof)
    assert read.thumbprint == KEY.jkt and read.jti == "abc" and read.alg == "ES256"
    read.confirm(KEY.jkt)  # the signature holds for the key cnf.jkt names


def test_s1_rsa_proof_accepted():
    key = DpopKey.rsa()
    check(key.proof(RESOURCE, TOKEN)).confirm(key.jkt)


HEADER = {"typ": "dpop+jwt", "alg": "ES256", "jwk": KEY.public_jwk()}


def _compact(header: dict, claims: dict, signature: str = "c2ln") -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}.{signature}"


GOOD_CLAIMS = {"jti": "j", "htm": "POST", "htu": RESOURCE, "ath": access_token_hash(TOKEN)}

# Made when the test runs, not at collection: the time-window cases must be fresh.
CASES = {
    # (1) one header
    "dpop_proof_missing": lambda: [],
    "dpop_proof_multiple": lambda: [KEY.proof(RESOURCE, TOKEN), KEY.proof(RESOURCE, TOKEN)],
    "dpop_proof_too_large": lambda: KEY.proof(RESOURCE, TOKEN, pad="x" * MAX_PROOF_BYTES),
    # (2) one well-formed JWT
    "dpop_proof_malformed": lambda: "a.b",
    # (3)-(5) typ and alg
    "dpop_wrong_type": lambda: KEY.proof(RESOURCE, TOKEN, header={"typ": "JWT"}),
    "dpop_alg_not_allowed": lambda: KEY.proof(RESOURCE, TOKEN, header={"alg": "HS256"}),
    # (7) the jwk: public, of a kind that fits alg
    "dpop_jwk_private": lambda: KEY.proof(RESOURCE, TOKEN, header={"jwk": KEY.private_jwk()}),
    "dpop_jwk_wrong_type": lambda: KEY.proof(RESOURCE, TOKEN, header={"jwk": DpopKey.rsa().public_jwk()}),
    "dpop_jwk_malformed": lambda: KEY.proof(RESOURCE, TOKEN, header={"jwk": None}),
    # (8), (9) the request
    "dpop_wrong_htm": lambda: KEY.proof(RESOURCE, TOKEN, htm="GET"),
    # (11) the time window
    "dpop_proof_stale": lambda: KEY.proof(RESOURCE, TOKEN, iat=int(time.time()) - 120),
    "dpop_proof_in_future": lambda: KEY.proof(RESOURCE, TOKEN, iat=int(time.time()) + 120),
    # (12a) the token
    "dpop_wrong_ath": lambda: KEY.proof(RESOURCE, TOKEN, ath=ath("another token")),
}


@pytest.mark.parametrize("expected", sorted(CASES))
def test_s1_proof_checks_refuse_with_their_reason(expected):
    assert reason(CASES[expected]()) == expected


@pytest.mark.parametrize("header", [
    {"typ": "dpop+jwt", "alg": "none", "jwk": KEY.public_jwk()},
    {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
])
def test_s1_alg_none_and_hmac_refused_before_any_key_use(header):
    assert reason(_compact(header, GOOD_CLAIMS | {"iat": int(time.time())}, signature="")) == "dpop_alg_not_allowed"
    assert reason(_compact(header, GOOD_CLAIMS | {"iat": int(time.time())})) == "dpop_alg_not_allowed"


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_s1_any_private_member_in_jwk_refused(member):
    jwk = KEY.public_jwk() | {member: "AQAB"}
    assert reason(_compact(HEADER | {"jwk": jwk}, GOOD_CLAIMS | {"iat": int(time.time())})) == "dpop_jwk_private"


@pytest.mark.parametrize("part", ["padded", "plus", "duplicate", "crit", "no-jti", "long-jti", "iat-string", "iat-nan"])
def test_s1_malformed_proofs_refused(part):
    now = int(time.time())
    claims = GOOD_CLAIMS | {"iat": now}
    proof = {
        "padded": KEY.proof(RESOURCE, TOKEN) + "==",
        "plus": "+" + KEY.proof(RESOURCE, TOKEN),
        "duplicate": b64url(b'{"typ":"dpop+jwt","typ":"x"}') + "." + b64url(json.dumps(claims).encode()) + ".c2ln",
        "crit": KEY.proof(RESOURCE, TOKEN, header={"crit": ["exp"]}),
        "no-jti": KEY.proof(RESOURCE, TOKEN, jti=None),
        "long-jti": KEY.proof(RESOURCE, TOKEN, jti="j" * 300),
        "iat-string": KEY.proof(RESOURCE, TOKEN, iat=str(now)),
        "iat-nan": _compact(HEADER, claims).replace(b64url(json.dumps(claims).encode()), b64url(json.dumps(claims).replace(str(now), "NaN").encode())),
    }[part]
    assert reason(proof).startswith("dpop_")


@pytest.mark.parametrize("htu, good", [
    (RESOURCE, True),
    ("HTTPS://MCP.EXAMPLE.COM/mcp", True),  # RFC 3986 §6.2.2.1: scheme and host are case-insensitive
    ("https://mcp.example.com:443/mcp", True),  # §6.2.3: the default port
    ("https://mcp.example.com/mcp?x=1#frag", True),  # RFC 9449 §4.3 (9): query and fragment ignored
    ("https://mcp.example.com/MCP", False),  # the path is case-sensitive
    ("https://mcp.example.com/mcp/", False),
    ("https://mcp.example.com/other", False),
    ("https://evil.example.com/mcp", False),
    ("http://mcp.example.com/mcp", False),
    ("https://mcp.example.com:8443/mcp", False),
    ("https://user@mcp.example.com/mcp", False),
    ("https://mcp.example.com/m%63p", False),  # no percent-decoding: one spelling
    ("https://mcp.exa\tmple.com/mcp", False),
    ("/mcp", False),
])
def test_s1_htu_compared_with_the_public_url(htu, good):
    assert htu_matches(htu, RULES.htu) is good
    if not good:
        assert reason(KEY.proof(htu, TOKEN)) == "dpop_wrong_htu"


def test_s1_unsigned_proof_with_an_allowed_alg_refused():
    assert reason(_compact(HEADER, GOOD_CLAIMS | {"iat": int(time.time())}, signature="")) == "dpop_proof_malformed"


def test_s1_iat_window_edges():
    now = time.time()
    check(KEY.proof(RESOURCE, TOKEN, iat=int(now) - 59), now=now)
    check(KEY.proof(RESOURCE, TOKEN, iat=int(now) + 4), now=now)
    assert reason(KEY.proof(RESOURCE, TOKEN, iat=int(now) - 61), now=now) == "dpop_proof_stale"
    assert reason(KEY.proof(RESOURCE, TOKEN, iat=int(now) + 6), now=now) == "dpop_proof_in_future"


def test_s1_proof_by_another_key_than_cnf_jkt_refused_before_its_signature():
    other = DpopKey.ec()
    with pytest.raises(InvalidDpopProof) as refused:
        check(other.proof(RESOURCE, TOKEN)).confirm(KEY.jkt)
    assert refused.value.reason == "dpop_key_mismatch" and refused.value.oauth_error == "invalid_token"


def test_s1_jwk_of_one_key_signature_of_another_refused():
    forged = KEY.proof(RESOURCE, TOKEN, signer=DpopKey.ec())  # KEY's jwk, another key's signature
    with pytest.raises(InvalidDpopProof) as refused:
        check(forged).confirm(KEY.jkt)
    assert refused.value.reason == "dpop_bad_signature"


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")
def test_s1_rsa_keys_outside_the_size_bounds_refused():
    assert reason(DpopKey.rsa(1024).proof(RESOURCE, TOKEN)) == "dpop_jwk_malformed"


def test_s1_thumbprint_is_rfc7638():
    # RFC 7638 §3.1: the RFC 7517 Appendix A.1 key and its thumbprint.
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
                "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
                "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwk_thumbprint(KEY.public_jwk()) == thumbprint(KEY.public_jwk())


def test_s1_nonces_stateless_shared_by_key_and_time_bounded():
    a, b, other = DpopNonces(b"k" * 32, 60), DpopNonces(b"k" * 32, 60), DpopNonces(b"x" * 32, 60)
    now = 1_000_000.0
    nonce = a.current(now)
    assert b.valid(nonce, now) and b.valid(nonce, now + 60)  # a replica with the same key accepts it
    assert not b.valid(nonce, now + 121) and not other.valid(nonce, now)
    assert not a.valid(nonce[:-1] + ("A" if nonce[-1] != "A" else "B"), now)
    rules = DpopRules(algorithms=RULES.algorithms, max_age=60, htu=RULES.htu, nonces=a)
    with pytest.raises(UseDpopNonce) as missing:
        check(KEY.proof(RESOURCE, TOKEN), rules=rules)
    assert missing.value.reason == "dpop_nonce_missing" and missing.value.oauth_error == "use_dpop_nonce"
    with pytest.raises(UseDpopNonce):
        check(KEY.proof(RESOURCE, TOKEN, nonce=a.current(time.time() - 600)), rules=rules)
    check(KEY.proof(RESOURCE, TOKEN, nonce=a.current(time.time())), rules=rules)


async def test_s1_memory_replay_window_bounded_and_fails_closed():
    clock = [0.0]
    window = MemoryReplayWindow(2, clock=lambda: clock[0])
    assert await window.first_use(b"a", 10) and not await window.first_use(b"a", 10)
    assert await window.first_use(b"b", 10)
    with pytest.raises(VerifierUnavailable) as full:
        await window.first_use(b"c", 10)  # full of live entries: refused, never evicted
    assert full.value.status == 503 and full.value.reason == "dpop_replay_window_full"
    clock[0] = 11.0
    assert await window.first_use(b"c", 10) and len(window) == 1  # expired entries make room


# -- the gateway, end to end -------------------------------------------------------------------------------

@pytest.fixture
def bound(issuer):
    """A DPoP key and a token bound to it."""
    key = DpopKey.ec()
    return key, issuer.mint(cnf={"jkt": key.jkt})


async def call(client, token: str, proof: str | None, *, scheme: str = "DPoP", **headers):
    sent = {"Authorization": f"{scheme} {token}", **headers}
    if proof is not None:
        sent["DPoP"] = proof
    return await client.post("/mcp", json=INIT, headers=sent)


def refusal_reasons(caplog) -> list[str]:
    return [r.fields["reason"] for r in caplog.records if hasattr(r, "fields") and "reason" in r.fields]


async def test_s1_bound_token_with_good_proof_reaches_upstream(upstream, start_gateway, bound):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False)
    response = await call(client, token, key.proof(RESOURCE, token))
    assert response.status == 200, await response.text()
    assert upstream.received and all("dpop" not in {k.lower() for k in r.headers} for r in upstream.received)


async def test_s1_refusals_are_generic_to_the_client_precise_in_log_and_audit(upstream, start_gateway, bound, caplog, audit_lines):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False)
    response = await call(client, token, key.proof(RESOURCE, token, htm="GET"))
    assert response.status == 401
    challenges = response.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith("Bearer resource_metadata=") and "error" not in challenges[0]
    assert challenges[1] == 'DPoP algs="ES256 RS256", error="invalid_dpop_proof", error_description="The DPoP proof is invalid"'
    assert (await response.json())["error"]["message"] == "Invalid DPoP proof"
    assert "dpop_wrong_htm" in refusal_reasons(caplog)
    assert any(event["reason"] == "dpop_wrong_htm" for event in audit_lines())
    assert not upstream.received


@pytest.mark.parametrize("case", ["no proof", "two proofs", "replayed", "bearer", "unbound token as DPoP", "other key"])
async def test_s1_hostile_requests_refused(upstream, start_gateway, bound, issuer, caplog, case):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False)
    proof = key.proof(RESOURCE, token)
    if case == "no proof":
        response, expected = await call(client, token, None), "dpop_proof_missing"
    elif case == "two proofs":
        response = await client.post("/mcp", json=INIT, headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof), ("DPoP", proof)])
        expected = "dpop_proof_multiple"
    elif case == "replayed":
        assert (await call(client, token, proof)).status == 200
        response, expected = await call(client, token, proof), "dpop_replayed"
    elif case == "bearer":
        response, expected = await call(client, token, proof, scheme="Bearer"), "dpop_bound_token_as_bearer"
    elif case == "unbound token as DPoP":
        plain = issuer.mint()
        response, expected = await call(client, plain, key.proof(RESOURCE, plain)), "token_not_dpop_bound"
    else:
        other = DpopKey.ec()
        response, expected = await call(client, token, other.proof(RESOURCE, token)), "dpop_key_mismatch"
    assert response.status == 401
    assert expected in refusal_reasons(caplog)
    assert len(upstream.received) == (1 if case == "replayed" else 0)


async def test_s1_bound_token_as_bearer_gets_bearer_error_and_dpop_offer(upstream, start_gateway, bound):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False)
    response = await call(client, token, None, scheme="Bearer")
    assert response.status == 401
    bearer, dpop = response.headers.getall("WWW-Authenticate")
    assert 'error="invalid_token"' in bearer and dpop == 'DPoP algs="ES256 RS256"'


async def test_s1_no_credentials_challenge_offers_both_schemes(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False)
    response = await client.post("/mcp", json=INIT)
    assert response.status == 401
    bearer, dpop = response.headers.getall("WWW-Authenticate")
    assert bearer == 'Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp"'
    assert dpop == 'DPoP algs="ES256 RS256"'


async def test_s1_introspected_token_with_cnf_jkt_needs_the_proof(upstream, start_gateway, issuer, caplog):
    key = DpopKey.ec()
    token = issuer.opaque(cnf={"jkt": key.jkt})
    client = await start_gateway(upstream.url, authenticated=False,
                                 auth={"introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}})
    assert (await call(client, token, key.proof(RESOURCE, token))).status == 200
    assert (await call(client, token, None, scheme="Bearer")).status == 401
    assert (await call(client, token, DpopKey.ec().proof(RESOURCE, token))).status == 401
    assert {"dpop_bound_token_as_bearer", "dpop_key_mismatch"} <= set(refusal_reasons(caplog))


async def test_s1_required_refuses_bearer_and_unbound_tokens(upstream, start_gateway, issuer, bound, caplog):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False, auth={"dpop": {"required": True}})
    response = await call(client, issuer.mint(), None, scheme="Bearer")
    assert response.status == 401
    assert response.headers.getall("WWW-Authenticate") == [
        'DPoP algs="ES256 RS256", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", '
        'error="invalid_token", error_description="The access token is invalid or expired"']
    assert (await call(client, token, key.proof(RESOURCE, token))).status == 200
    body = await (await client.get("/.well-known/oauth-protected-resource")).json()
    assert body["dpop_bound_access_tokens_required"] is True
    assert "dpop_required" in refusal_reasons(caplog)


async def test_s1_nonce_required_missing_then_given(upstream, start_gateway, bound, caplog):
    key, token = bound
    client = await start_gateway(upstream.url, authenticated=False, auth={"dpop": {"nonce": True}})
    response = await call(client, token, key.proof(RESOURCE, token))
    assert response.status == 401
    assert 'error="use_dpop_nonce"' in response.headers.getall("WWW-Authenticate")[1]
    nonce = response.headers["DPoP-Nonce"]
    assert "dpop_nonce_missing" in refusal_reasons(caplog)
    answered = await call(client, token, key.proof(RESOURCE, token, nonce=nonce))
    assert answered.status == 200 and answered.headers["DPoP-Nonce"]
    stale = await call(client, token, key.proof(RESOURCE, token, nonce=nonce[:-2] + "AA"))
    assert stale.status == 401 and "dpop_nonce_stale" in refusal_reasons(caplog)


async def test_s1_metadata_advertises_dpop(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False, auth={"dpop": {"algorithms": ["ES256"]}})
    body = await (await client.get("/.well-known/oauth-protected-resource")).json()
    assert body["dpop_signing_alg_values_supported"] == ["ES256"] and body["dpop_bound_access_tokens_required"] is False
    assert "tls_client_certificate_bound_access_tokens" not in body


async def test_s1_cnf_the_gateway_cannot_check_is_refused(upstream, start_gateway, issuer, caplog):
    client = await start_gateway(upstream.url, authenticated=False)
    response = await call(client, issuer.mint(cnf={"jwk": DpopKey.ec().public_jwk()}), None, scheme="Bearer")
    assert response.status == 401 and "cnf_unsupported" in refusal_reasons(caplog)


def test_s1_config_refuses_symmetric_dpop_algorithms():
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as problems:
        parse_config({"server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
                      "auth": {"issuers": [{"issuer": "https://idp.example.com"}], "dpop": {"algorithms": ["HS256", "none"]}},
                      "authorization": {"policies": "/"}}, source="g.yaml")
    assert "g.yaml: auth.dpop.algorithms[0]: 'HS256' is not allowed" in str(problems.value)
    assert "auth.dpop.algorithms[1]" in str(problems.value)


def test_s1_unused_helpers_stay_consistent():
    assert base64.urlsafe_b64decode(ath(TOKEN) + "=") == base64.urlsafe_b64decode(access_token_hash(TOKEN) + "=")
    assert dpop_headers("t", "p") == {"Authorization": "DPoP t", "DPoP": "p"}


def test_s1_eddsa_proof_accepted_when_configured():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from jwt.algorithms import OKPAlgorithm

    private = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    import jwt as pyjwt

    claims = {"jti": "e", "htm": "POST", "htu": RESOURCE, "iat": int(time.time()), "ath": access_token_hash(TOKEN)}
    proof = pyjwt.encode(claims, private, algorithm="EdDSA", headers={"typ": "dpop+jwt", "jwk": jwk})
    rules = DpopRules(algorithms=frozenset({"EdDSA"}), max_age=60, htu=RULES.htu)
    check(proof, rules=rules).confirm(jwk_thumbprint(jwk))
    assert reason(proof) == "dpop_alg_not_allowed"  # not in the default [ES256, RS256]


def test_s2_config_warns_about_workers_without_redis():
    from gateway.config import parse_config

    base = {"server": {"public_url": RESOURCE, "workers": 2}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "/"}}
    assert any("state.redis_url" in w for w in parse_config(base, source="g.yaml").warnings)
    with_redis = {**base, "state": {"redis_url": "redis://127.0.0.1:6379/0"}}
    assert not any("state.redis_url" in w for w in parse_config(with_redis, source="g.yaml").warnings)


async def test_s1_insufficient_scope_with_dpop_goes_on_the_dpop_challenge(upstream, start_gateway, bound):
    key, token = bound  # scope "mcp"
    client = await start_gateway(upstream.url, authenticated=False, auth={"required_scopes": ["mcp", "mcp.admin"]})
    response = await call(client, token, key.proof(RESOURCE, token))
    assert response.status == 403
    bearer, dpop = response.headers.getall("WWW-Authenticate")
    assert "error" not in bearer
    assert dpop.startswith('DPoP algs="ES256 RS256", error="insufficient_scope", scope="mcp mcp.admin"')
