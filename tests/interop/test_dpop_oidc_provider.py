"""S1, S2 against a real authorization server: oidc-provider (``features.dPoP``) issues DPoP-bound access
tokens (``token_type: DPoP``, ``cnf.jkt``) to a client that signs its proofs with PyJWT, for the token
endpoint and then for the gateway. Calls with good proofs pass; each hostile one is refused with its reason
in the gateway's log, and nothing reaches the upstream.

The JWT tokens' ``cnf.jkt`` is oidc-provider's RFC 7638 thumbprint (the ``jose`` library's), so a call that
passes also shows the gateway computes the same thumbprint. Opaque tokens carry ``cnf.jkt`` in their RFC
7662 introspection answer.
"""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.dpop_proofs import DpopKey, ath
from tests.factories import RESOURCE
from tests.interop.conftest import decoded_claims
from tests.test_dpop import INIT, call, refusal_reasons
from tests.test_dpop_redis import redis_url  # noqa: F401 - the module-scoped Redis fixture


async def dpop_token(authorization_server, key: DpopKey, *, client_id: str = "gateway-test") -> str:
    """client_credentials with a DPoP proof for the token endpoint (RFC 9449 §5): a DPoP-bound token."""
    proof = key.proof(authorization_server.token_endpoint)  # htm POST, htu the token endpoint, no ath
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.token_endpoint, data={
            "grant_type": "client_credentials", "resource": RESOURCE, "scope": "mcp",
        }, headers={"Authorization": aiohttp.encode_basic_auth(client_id, "gateway-secret"), "DPoP": proof}) as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["token_type"] == "DPoP"
            return body["access_token"]


@pytest.fixture
def dpop_gateway(start_gateway, authorization_server, upstream):
    async def start(**overrides):
        auth = {"issuers": [{"issuer": authorization_server.issuer}],
                "introspection": {"client_id": "gateway-introspect", "client_secret": "introspect-secret"},
                **overrides.pop("auth", {})}
        return await start_gateway(upstream.url, authenticated=False, auth=auth, **overrides)
    return start


@pytest.fixture
async def bound(authorization_server):
    key = DpopKey.ec()
    return key, await dpop_token(authorization_server, key)


async def test_s1_oidc_provider_dpop_token_with_proofs_passes(dpop_gateway, bound, upstream):
    key, token = bound
    assert decoded_claims(token)["cnf"] == {"jkt": key.jkt}
    client = await dpop_gateway()
    for _ in range(3):  # a fresh proof each time
        response = await call(client, token, key.proof(RESOURCE, token))
        assert response.status == 200, await response.text()
    assert len(upstream.received) == 3
    for received in upstream.received:
        assert token not in str(received.headers) and "dpop" not in {name.lower() for name in received.headers}


async def test_s1_oidc_provider_opaque_dpop_token_checked_through_introspection(dpop_gateway, authorization_server, caplog):
    key = DpopKey.ec()
    token = await dpop_token(authorization_server, key, client_id="gateway-test-opaque")
    assert "." not in token
    client = await dpop_gateway()
    assert (await call(client, token, key.proof(RESOURCE, token))).status == 200
    assert (await call(client, token, DpopKey.ec().proof(RESOURCE, token))).status == 401
    assert (await call(client, token, None, scheme="Bearer")).status == 401
    assert {"dpop_key_mismatch", "dpop_bound_token_as_bearer"} <= set(refusal_reasons(caplog))


def _hostile(case: str, key: DpopKey, token: str) -> tuple[dict | list, str]:
    """The request headers of one hostile case, and the reason the gateway must log."""
    now = int(time.time())
    proof = lambda **kw: key.proof(RESOURCE, token, **kw)  # noqa: E731
    auth = f"DPoP {token}"
    cases = {
        "no proof": ({"Authorization": auth}, "dpop_proof_missing"),
        "two proofs": ([("Authorization", auth), ("DPoP", proof()), ("DPoP", proof())], "dpop_proof_multiple"),
        "wrong htm": ({"Authorization": auth, "DPoP": proof(htm="GET")}, "dpop_wrong_htm"),
        "htu of another host": ({"Authorization": auth, "DPoP": key.proof("https://evil.example.com/mcp", token)}, "dpop_wrong_htu"),
        "htu of another path": ({"Authorization": auth, "DPoP": key.proof("https://mcp.example.com/other", token)}, "dpop_wrong_htu"),
        "stale iat": ({"Authorization": auth, "DPoP": proof(iat=now - 300)}, "dpop_proof_stale"),
        "future iat": ({"Authorization": auth, "DPoP": proof(iat=now + 300)}, "dpop_proof_in_future"),
        "wrong ath": ({"Authorization": auth, "DPoP": proof(ath=ath(token + "x"))}, "dpop_wrong_ath"),
        "another key than cnf.jkt": ({"Authorization": auth, "DPoP": DpopKey.ec().proof(RESOURCE, token)}, "dpop_key_mismatch"),
        "alg none": ({"Authorization": auth, "DPoP": proof(header={"alg": "none"})}, "dpop_alg_not_allowed"),
        "alg HS256": ({"Authorization": auth, "DPoP": proof(header={"alg": "HS256"})}, "dpop_alg_not_allowed"),
        "private key in jwk": ({"Authorization": auth, "DPoP": proof(header={"jwk": key.private_jwk()})}, "dpop_jwk_private"),
        "bound token as Bearer": ({"Authorization": f"Bearer {token}", "DPoP": proof()}, "dpop_bound_token_as_bearer"),
        "bound token as Bearer, no proof": ({"Authorization": f"Bearer {token}"}, "dpop_bound_token_as_bearer"),
    }
    return cases[case]


HOSTILE = ["no proof", "two proofs", "wrong htm", "htu of another host", "htu of another path", "stale iat", "future iat",
           "wrong ath", "another key than cnf.jkt", "alg none", "alg HS256", "private key in jwk", "bound token as Bearer",
           "bound token as Bearer, no proof"]


@pytest.mark.parametrize("case", HOSTILE)
async def test_s1_oidc_provider_token_hostile_request_refused(dpop_gateway, bound, upstream, caplog, case):
    key, token = bound
    client = await dpop_gateway()
    headers, expected = _hostile(case, key, token)
    response = await client.post("/mcp", json=INIT, headers=headers)
    assert response.status == 401, case
    assert expected in refusal_reasons(caplog), (case, refusal_reasons(caplog))
    assert (await response.json())["error"]["message"] in ("Invalid DPoP proof", "Invalid token")
    assert token not in caplog.text
    assert not upstream.received


async def test_s1_oidc_provider_token_replayed_proof_refused(dpop_gateway, bound, upstream, caplog):
    key, token = bound
    client = await dpop_gateway()
    proof = key.proof(RESOURCE, token)
    assert (await call(client, token, proof)).status == 200
    again = await call(client, token, proof)
    assert again.status == 401 and 'error="invalid_dpop_proof"' in again.headers.getall("WWW-Authenticate")[1]
    assert "dpop_replayed" in refusal_reasons(caplog) and len(upstream.received) == 1


async def test_s2_oidc_provider_token_proof_replayed_across_gateways_sharing_redis(dpop_gateway, bound, upstream, caplog, redis_url):  # noqa: F811
    key, token = bound
    first = await dpop_gateway(state={"redis_url": redis_url})
    second = await dpop_gateway(state={"redis_url": redis_url})
    proof = key.proof(RESOURCE, token)
    assert (await call(first, token, proof)).status == 200
    assert (await call(second, token, proof)).status == 401
    assert "dpop_replayed" in refusal_reasons(caplog) and len(upstream.received) == 1


async def test_s1_oidc_provider_token_nonce_required_missing_then_used(dpop_gateway, bound, upstream, caplog):
    key, token = bound
    client = await dpop_gateway(auth={"dpop": {"nonce": True}})
    missing = await call(client, token, key.proof(RESOURCE, token))
    assert missing.status == 401 and "dpop_nonce_missing" in refusal_reasons(caplog)
    assert 'error="use_dpop_nonce"' in missing.headers.getall("WWW-Authenticate")[1]
    response = await call(client, token, key.proof(RESOURCE, token, nonce=missing.headers["DPoP-Nonce"]))
    assert response.status == 200 and len(upstream.received) == 1


async def test_s1_served_gateway_checks_oidc_provider_dpop_tokens(serve_gateway, authorization_server, upstream, bound):
    """The same through ``python -m gateway serve``: the reasons reach the JSON log and the audit file."""
    key, token = bound
    served = await serve_gateway(upstream.url, auth={"issuers": [{"issuer": authorization_server.issuer}]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/mcp", json=INIT, headers={"Authorization": f"DPoP {token}", "DPoP": key.proof(RESOURCE, token)}) as ok:
            assert ok.status == 200
        async with http.post(f"{served.url}/mcp", json=INIT, headers={"Authorization": f"Bearer {token}"}) as refused:
            assert refused.status == 401
    reasons = [record.get("reason") for record in served.log_records()]
    assert "dpop_bound_token_as_bearer" in reasons
    assert any(event.get("reason") == "dpop_bound_token_as_bearer" for event in served.audit())
    assert token not in served.log_text()
