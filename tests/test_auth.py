"""Authentication end to end (D1-D4, T1-T11, E1, U5): a real test issuer, a real upstream, real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import secrets

import jwt
import pytest

from tests.factories import RESOURCE, SigningKey, TestIssuer, bearer, unsigned_token

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search", "arguments": {}}}
PRM = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


def challenge_params(header: str) -> dict[str, str]:
    """Reads a challenge the way real MCP clients do: a simple regex over quoted values."""
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


@pytest.fixture
async def gateway(upstream, start_gateway):
    return await start_gateway(upstream.url, authenticated=False)


async def post(client, token: str | None = None, body=INIT, **headers):
    if token is not None:
        headers.update(bearer(token))
    return await client.post("/mcp", json=body, headers=headers)


async def assert_invalid_token(response, upstream, *, forwarded_before: int = 0):
    assert response.status == 401
    params = challenge_params(response.headers["WWW-Authenticate"])
    assert params["error"] == "invalid_token"
    assert params["resource_metadata"] == PRM
    assert params["error_description"] == "The access token is invalid or expired"  # T7: generic
    assert len(upstream.received) == forwarded_before


# -- D: discovery -----------------------------------------------------------------------------------


async def test_d1_missing_token_gets_bare_challenge(gateway, upstream):
    response = await post(gateway)
    assert response.status == 401
    params = challenge_params(response.headers["WWW-Authenticate"])
    assert params == {"resource_metadata": PRM}
    body = await response.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["message"] == "Authentication required"
    assert upstream.received == []


async def test_d1_challenge_names_required_scopes(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False, auth={"required_scopes": ["mcp", "mcp.read"]})
    response = await post(client)
    assert challenge_params(response.headers["WWW-Authenticate"]) == {"resource_metadata": PRM, "scope": "mcp mcp.read"}


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"])
async def test_d2_metadata_served_at_suffixed_and_root_urls(gateway, path):
    response = await gateway.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "max-age=" in response.headers["Cache-Control"]
    head = await gateway.head(path)
    assert head.status == 200


async def test_d2_other_well_known_paths_are_404(gateway):
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration", "/.well-known/oauth-protected-resource/other"):
        assert (await gateway.get(path)).status == 404, path


async def test_d3_metadata_body(upstream, start_gateway, issuer):
    client = await start_gateway(
        upstream.url, authenticated=False,
        resource={"name": "Demo", "documentation": "https://docs.example.com/mcp", "scopes_supported": ["mcp", "mcp.admin"]},
    )
    body = await (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert body == {
        "resource": RESOURCE,
        "authorization_servers": [issuer.url],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["ES256", "RS256"],  # S1: DPoP is accepted beside Bearer
        "dpop_bound_access_tokens_required": False,
        "scopes_supported": ["mcp", "mcp.admin"],
        "resource_name": "Demo",
        "resource_documentation": "https://docs.example.com/mcp",
    }


async def test_d3_empty_fields_are_left_out(gateway, issuer):
    body = await (await gateway.get("/.well-known/oauth-protected-resource")).json()
    assert body == {"resource": RESOURCE, "authorization_servers": [issuer.url], "bearer_methods_supported": ["header"],
                    "dpop_signing_alg_values_supported": ["ES256", "RS256"], "dpop_bound_access_tokens_required": False}


async def test_d4_metadata_and_challenge_ignore_host_and_forwarded_headers(gateway):
    spoof = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}
    body = await (await gateway.get("/.well-known/oauth-protected-resource/mcp", headers=spoof)).json()
    assert body["resource"] == RESOURCE
    response = await gateway.post("/mcp", json=INIT, headers=spoof)
    assert challenge_params(response.headers["WWW-Authenticate"])["resource_metadata"] == PRM


def test_d4_challenge_values_never_contain_quote_or_backslash():
    from gateway.edge.challenge import bearer_challenge

    header = bearer_challenge('https://h/.well-known/x"y', error="invalid_request", description='say "hi" \\ now', scopes=['a"b'])
    assert header.count('"') == 8  # only the quotes around the four values
    assert "\\" not in header


# -- T1: where credentials may come from ------------------------------------------------------------


async def test_t1_token_in_query_is_invalid_request(gateway, issuer, upstream):
    response = await gateway.post(f"/mcp?access_token={issuer.mint()}", json=INIT)
    assert response.status == 400
    assert challenge_params(response.headers["WWW-Authenticate"])["error"] == "invalid_request"
    assert upstream.received == []


async def test_t1_form_body_token_is_invalid_request(gateway, issuer, upstream):
    response = await gateway.post("/mcp", data={"access_token": issuer.mint()})
    assert response.status == 400
    assert challenge_params(response.headers["WWW-Authenticate"])["error"] == "invalid_request"
    assert upstream.received == []


async def test_t1_two_authorization_headers_are_invalid_request(gateway, issuer, upstream):
    from multidict import CIMultiDict

    headers = CIMultiDict([("Authorization", f"Bearer {issuer.mint()}"), ("Authorization", f"Bearer {issuer.mint()}")])
    response = await gateway.post("/mcp", json=INIT, headers=headers)
    assert response.status == 400
    assert challenge_params(response.headers["WWW-Authenticate"])["error"] == "invalid_request"
    assert upstream.received == []


async def test_t1_empty_bearer_is_invalid_request(gateway):
    response = await gateway.post("/mcp", json=INIT, headers={"Authorization": "Bearer "})
    assert response.status == 400


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_t1_scheme_is_case_insensitive(gateway, issuer, scheme):
    response = await gateway.post("/mcp", json=INIT, headers={"Authorization": f"{scheme} {issuer.mint()}"})
    assert response.status == 200


async def test_t1_other_scheme_is_treated_as_no_credentials(gateway):
    response = await gateway.post("/mcp", json=INIT, headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert response.status == 401
    assert "error" not in challenge_params(response.headers["WWW-Authenticate"])


async def test_t1_oversized_token_is_refused(gateway, upstream):
    response = await post(gateway, "a" * 9000)
    await assert_invalid_token(response, upstream)


# -- T2: what a JWT may say about itself ---------------------------------------------------------------


async def test_t2_alg_none_is_refused(gateway, issuer, upstream):
    token = unsigned_token({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}, issuer.claims())
    await assert_invalid_token(await post(gateway, token), upstream)


async def test_t2_hs256_signed_with_the_rsa_public_key_is_refused(gateway, issuer, upstream):
    # The classic algorithm-confusion attack: the public key (public!) used as an HMAC secret.
    public_pem = issuer.keys[0].public_pem()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    signing_input = unsigned_token(header, issuer.claims()).rsplit(".", 1)[0]
    import hashlib
    import hmac

    from tests.factories import b64url

    token = signing_input + "." + b64url(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    await assert_invalid_token(await post(gateway, token), upstream)
    assert issuer.introspections == 0


async def test_t2_jku_pointing_at_another_key_set_is_never_followed(gateway, issuer, upstream, aiohttp_server):
    attacker = TestIssuer(keys=[SigningKey.rsa(kid="attacker")])
    server = await aiohttp_server(attacker.app())
    jku = str(server.make_url("/jwks"))
    token = issuer.mint(key=attacker.keys[0], headers={"jku": jku})
    await assert_invalid_token(await post(gateway, token), upstream)
    assert attacker.jwks_fetches == 0


async def test_t2_embedded_jwk_is_never_trusted(gateway, issuer, upstream):
    attacker_key = SigningKey.rsa(kid="rsa-1")  # same kid as the real key, different key
    token = issuer.mint(key=attacker_key, headers={"jwk": attacker_key.public_jwk()})
    await assert_invalid_token(await post(gateway, token), upstream)


async def test_t2_unknown_crit_is_refused(gateway, issuer, upstream):
    token = issuer.mint(headers={"crit": ["exp-ext"], "exp-ext": 1})
    await assert_invalid_token(await post(gateway, token), upstream)


async def test_t2_es256_key_is_used_with_es256(gateway, issuer):
    response = await post(gateway, issuer.mint(key=issuer.keys[1]))
    assert response.status == 200


async def test_t2_key_is_used_with_its_one_algorithm_only(gateway, issuer, upstream):
    # The RSA key is published for RS256; a PS256 signature with the same key must not verify.
    key = issuer.keys[0]
    token = jwt.encode(issuer.claims(), key.private, algorithm="PS256", headers={"typ": "at+jwt", "kid": key.kid})
    await assert_invalid_token(await post(gateway, token), upstream)


async def test_t2_token_without_kid_accepted_only_when_one_key_fits(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False)
    assert (await post(client, issuer.mint(headers={"kid": None}))).status == 200  # one RS256 key
    issuer.keys.append(SigningKey.rsa(kid="rsa-2"))
    other = await start_gateway(upstream.url, authenticated=False)
    await assert_invalid_token(await post(other, issuer.mint(headers={"kid": None})), upstream, forwarded_before=1)


# -- T3-T6: claims ------------------------------------------------------------------------------------


async def test_t3_wrong_issuer_is_refused(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, issuer.mint(iss="https://other.example.com")), upstream)


async def test_t3_each_issuer_verifies_with_its_own_keys(upstream, start_gateway, issuer, aiohttp_server):
    second = TestIssuer(keys=[SigningKey.ec(kid="second")])
    server = await aiohttp_server(second.app())
    second.url = str(server.make_url("")).rstrip("/")
    client = await start_gateway(upstream.url, authenticated=False, auth={"issuers": [{"issuer": issuer.url, "name": "first"}, {"issuer": second.url, "name": "second"}]})
    assert (await post(client, issuer.mint())).status == 200
    assert (await post(client, second.mint())).status == 200
    # A token claiming the first issuer but signed with the second's key fails.
    await assert_invalid_token(await post(client, second.mint(iss=issuer.url)), upstream, forwarded_before=2)


async def test_t4_missing_audience_is_refused(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, issuer.mint(aud=None)), upstream)


async def test_t4_wrong_audience_is_refused(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, issuer.mint(aud="https://other.example.com/mcp")), upstream)


@pytest.mark.parametrize("aud", [
    RESOURCE, [RESOURCE, "https://other"], "HTTPS://MCP.EXAMPLE.COM:443/mcp", "https://mcp.example.com/mcp#frag",
])
async def test_t4_audience_in_canonical_form_is_accepted(gateway, issuer, aud):
    assert (await post(gateway, issuer.mint(aud=aud))).status == 200


async def test_t4_audience_path_must_match(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, issuer.mint(aud="https://mcp.example.com/MCP")), upstream)


async def test_t4_configured_alias_is_accepted(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"issuers": [{"issuer": issuer.url, "audiences": ["api://mcp"]}]})
    assert (await post(client, issuer.mint(aud="api://mcp"))).status == 200


async def test_t5_expired_token_is_refused(gateway, issuer, upstream):
    import time

    await assert_invalid_token(await post(gateway, issuer.mint(exp=int(time.time()) - 120)), upstream)


async def test_t5_expiry_within_leeway_is_accepted(gateway, issuer):
    import time

    assert (await post(gateway, issuer.mint(exp=int(time.time()) - 30))).status == 200


async def test_t5_not_yet_valid_token_is_refused(gateway, issuer, upstream):
    import time

    await assert_invalid_token(await post(gateway, issuer.mint(nbf=int(time.time()) + 600)), upstream)


async def test_t5_token_without_exp_is_refused(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, issuer.mint(exp=None)), upstream)


async def test_t6_id_token_shaped_token_is_refused(gateway, issuer, upstream, caplog):
    # An OpenID Connect ID token: typ JWT, audience the client, a nonce.
    token = issuer.mint(headers={"typ": "JWT"}, aud="test-client", nonce="n-0S6_WzA2Mj")
    await assert_invalid_token(await post(gateway, token), upstream)


async def test_t6_wrong_type_log_says_how_to_accept_it(gateway, issuer, caplog):
    await post(gateway, issuer.mint(headers={"typ": "JWT"}))
    assert "token_type: any" in caplog.text


async def test_t6_issuer_set_to_any_accepts_plain_jwt(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"issuers": [{"issuer": issuer.url, "token_type": "any"}]})
    assert (await post(client, issuer.mint(headers={"typ": "JWT"}))).status == 200


async def test_t7_client_sees_generic_message_and_log_has_reason(gateway, issuer, caplog):
    response = await post(gateway, issuer.mint(aud="https://other.example.com/mcp"))
    body = await response.text()
    assert "aud" not in body and "audience" not in body
    assert any(getattr(r, "fields", {}).get("reason") == "jwt_wrong_audience" for r in caplog.records)


async def test_t7_bad_signature_is_invalid_token(gateway, issuer, upstream):
    token = issuer.mint()
    header, payload, signature = token.split(".")
    tampered = ".".join((header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")))
    await assert_invalid_token(await post(gateway, tampered), upstream)


# -- T8: keys -------------------------------------------------------------------------------------------


async def test_t8_keys_discovered_from_metadata(gateway, issuer):
    assert (await post(gateway, issuer.mint())).status == 200
    assert issuer.metadata_fetches >= 1 and issuer.jwks_fetches == 1


async def test_t8_rotated_key_accepted_on_first_request_that_uses_it(gateway, issuer):
    assert (await post(gateway, issuer.mint())).status == 200
    new_key = SigningKey.rsa(kid="rsa-rotated")
    issuer.keys.append(new_key)
    assert (await post(gateway, issuer.mint(key=new_key))).status == 200
    assert issuer.jwks_fetches == 2


async def test_t8_flood_of_unknown_kids_causes_one_fetch_per_cooldown(gateway, issuer):
    assert (await post(gateway, issuer.mint())).status == 200
    before = issuer.jwks_fetches
    stranger = SigningKey.rsa(kid="x")
    tokens = [issuer.mint(key=stranger, headers={"kid": f"unknown-{i}"}) for i in range(30)]
    responses = await asyncio.gather(*(post(gateway, t) for t in tokens))
    assert {r.status for r in responses} == {401}
    assert issuer.jwks_fetches - before <= 1


async def test_t8_concurrent_first_requests_share_one_fetch(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False)
    responses = await asyncio.gather(*(post(client, issuer.mint()) for _ in range(10)))
    assert {r.status for r in responses} == {200}
    assert issuer.jwks_fetches == 1


async def test_t8_unreachable_jwks_keeps_cached_keys_working(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"jwks": {"cache_min": "100ms", "cache_max": "100ms", "refresh_cooldown": "100ms"}})
    assert (await post(client, issuer.mint())).status == 200
    issuer.jwks_status = 503
    await asyncio.sleep(0.3)  # the cached keys are now stale
    assert (await post(client, issuer.mint())).status == 200  # served from the stale keys at once (R6)
    for _ in range(50):  # the refresh runs in the background
        if issuer.jwks_fetches >= 2:
            break
        await asyncio.sleep(0.02)
    assert issuer.jwks_fetches >= 2  # a refresh was tried and failed


async def test_t8_no_keys_at_all_is_503_not_401(gateway, issuer):
    issuer.jwks_status = 500
    response = await post(gateway, issuer.mint())
    assert response.status == 503
    assert "Retry-After" in response.headers


async def test_t8_metadata_for_another_issuer_is_refused(upstream, start_gateway, issuer):
    original = issuer.metadata
    issuer.metadata = lambda: {**original(), "issuer": "https://evil.example.com"}
    client = await start_gateway(upstream.url, authenticated=False)
    assert (await post(client, issuer.mint())).status == 503
    assert issuer.jwks_fetches == 0


def test_t8_metadata_urls_insert_then_append_for_issuers_with_a_path():
    from gateway.auth.jwks import metadata_urls

    assert metadata_urls("https://h/realms/x") == [
        "https://h/.well-known/oauth-authorization-server/realms/x",
        "https://h/.well-known/openid-configuration/realms/x",
        "https://h/realms/x/.well-known/openid-configuration",
        "https://h/realms/x/.well-known/oauth-authorization-server",
    ]
    assert metadata_urls("https://h") == [
        "https://h/.well-known/oauth-authorization-server",
        "https://h/.well-known/openid-configuration",
    ]


async def test_t8_signature_checked_once_per_token(gateway, issuer):
    token = issuer.mint()
    for _ in range(5):
        assert (await post(gateway, token)).status == 200
    assert gateway.gateway.authenticator.verifications == 1


# -- T9: introspection ----------------------------------------------------------------------------------


@pytest.fixture
async def introspecting(upstream, start_gateway, issuer):
    return await start_gateway(
        upstream.url, authenticated=False,
        auth={"introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}},
    )


async def test_t9_opaque_token_is_introspected(introspecting, issuer, upstream):
    response = await post(introspecting, issuer.opaque())
    assert response.status == 200
    assert issuer.introspections == 1
    assert issuer.last_introspection_auth.startswith("Basic ")
    assert "Authorization" not in upstream.received[0].headers


async def test_t9_client_secret_post_is_supported(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"introspection": {
        "client_id": "gateway", "client_secret": "gateway-secret", "auth_method": "client_secret_post"}})
    assert (await post(client, issuer.opaque())).status == 200
    assert issuer.last_introspection_auth is None


async def test_t9_inactive_token_is_invalid(introspecting, issuer, upstream):
    await assert_invalid_token(await post(introspecting, secrets.token_urlsafe(32)), upstream)


async def test_t9_three_part_token_with_non_json_header_goes_to_introspection(introspecting, issuer):
    token = "bm90LWpzb24.eyJzdWIiOiJ4In0.c2ln"  # "not-json" . {"sub":"x"} . "sig"
    issuer.opaque_tokens[token] = {"active": True, **issuer.claims()}
    assert (await post(introspecting, token)).status == 200
    assert issuer.introspections == 1


async def test_t9_well_formed_jwt_with_bad_signature_is_never_introspected(introspecting, issuer, upstream):
    forged = issuer.mint(key=SigningKey.rsa(kid="rsa-1"))
    await assert_invalid_token(await post(introspecting, forged), upstream)
    assert issuer.introspections == 0


async def test_t9_answers_are_checked_like_jwts(introspecting, issuer, upstream):
    import time

    for answer in ({"aud": "https://other/mcp"}, {"iss": "https://other"}, {"exp": int(time.time()) - 600}, {"aud": None}):
        await assert_invalid_token(await post(introspecting, issuer.opaque(**answer)), upstream)


async def test_t9_results_are_cached(introspecting, issuer):
    token = issuer.opaque()
    for _ in range(3):
        assert (await post(introspecting, token)).status == 200
    inactive = secrets.token_urlsafe(32)
    for _ in range(3):
        assert (await post(introspecting, inactive)).status == 401
    assert issuer.introspections == 2


async def test_t9_concurrent_requests_with_same_new_token_cause_one_call(introspecting, issuer):
    issuer.introspection_delay = 0.2
    token = issuer.opaque()
    responses = await asyncio.gather(*(post(introspecting, token) for _ in range(10)))
    assert {r.status for r in responses} == {200}
    assert issuer.introspections == 1


async def test_t9_unreachable_endpoint_is_503_with_retry_after(introspecting, issuer, upstream):
    issuer.introspection_status = 502
    response = await post(introspecting, issuer.opaque())
    assert response.status == 503
    assert "Retry-After" in response.headers
    assert "WWW-Authenticate" not in response.headers
    assert upstream.received == []


async def test_t9_without_introspection_an_opaque_token_is_invalid(gateway, issuer, upstream):
    await assert_invalid_token(await post(gateway, secrets.token_urlsafe(32)), upstream)


# -- T10: scopes ------------------------------------------------------------------------------------------


@pytest.fixture
async def scoped(upstream, start_gateway):
    return await start_gateway(upstream.url, authenticated=False, auth={
        "required_scopes": ["mcp"],
        "method_scopes": {"tools/call": ["mcp.tools"]},
        "tool_scopes": {"admin_*": ["mcp.admin"], "search": ["mcp.search"]},
    })


async def test_t10_missing_scope_gets_403_insufficient_scope_with_all_needed(scoped, issuer, upstream):
    call = {**CALL, "params": {"name": "admin_reset"}}
    response = await post(scoped, issuer.mint(scope="mcp mcp.tools"), call)
    assert response.status == 403
    params = challenge_params(response.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "mcp mcp.tools mcp.admin"
    assert params["resource_metadata"] == PRM
    assert (await response.json())["id"] == 7
    assert upstream.received == []


async def test_t10_scopes_met_pass(scoped, issuer):
    assert (await post(scoped, issuer.mint(scope="mcp mcp.tools mcp.search"), CALL)).status == 200
    assert (await post(scoped, issuer.mint(scope="mcp"), INIT)).status == 200


async def test_t10_scp_array_counts(scoped, issuer):
    assert (await post(scoped, issuer.mint(scope=None, scp=["mcp", "mcp.tools", "mcp.search"]), CALL)).status == 200


async def test_t10_validity_beats_scope(scoped, issuer):
    import time

    response = await post(scoped, issuer.mint(scope="", exp=int(time.time()) - 600), CALL)
    assert response.status == 401


async def test_t10_batch_needs_every_elements_scopes(scoped, issuer):
    batch = [INIT | {"id": 1}, {**CALL, "id": 2, "params": {"name": "admin_x"}}]
    response = await post(scoped, issuer.mint(scope="mcp mcp.tools"), batch)
    assert response.status == 403


# -- T11: tokens never logged ------------------------------------------------------------------------------


async def test_t11_raw_tokens_never_appear_in_logs(introspecting, issuer, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    tokens = [issuer.mint(), issuer.mint(aud="https://other"), issuer.opaque(), secrets.token_urlsafe(20), issuer.mint(headers={"typ": "JWT"})]
    for token in tokens:
        await post(introspecting, token)
    text = caplog.text + json.dumps([getattr(r, "fields", None) for r in caplog.records], default=str)
    for token in tokens:
        assert token not in text
        assert token.split(".")[-1] not in text


# -- E1: origin and CORS ------------------------------------------------------------------------------------


@pytest.fixture
async def browser_gateway(upstream, start_gateway):
    return await start_gateway(upstream.url, authenticated=False, server={"allowed_origins": ["https://app.example.com"]})


async def test_e1_disallowed_origin_is_403(browser_gateway, issuer, upstream):
    response = await post(browser_gateway, issuer.mint(), Origin="https://evil.example.com")
    assert response.status == 403
    assert upstream.received == []


async def test_e1_preflight_needs_no_token(browser_gateway):
    response = await browser_gateway.options("/mcp", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


async def test_e1_responses_expose_mcp_headers(browser_gateway, issuer):
    for token in (None, issuer.mint()):
        response = await post(browser_gateway, token, Origin="https://app.example.com")
        exposed = response.headers["Access-Control-Expose-Headers"]
        for name in ("WWW-Authenticate", "Mcp-Session-Id", "MCP-Protocol-Version"):
            assert name in exposed


async def test_e1_no_origin_is_not_a_browser_and_passes(browser_gateway, issuer):
    assert (await post(browser_gateway, issuer.mint())).status == 200


# -- U5: sessions --------------------------------------------------------------------------------------------


async def test_u5_session_is_bound_to_the_principal_that_opened_it(gateway, issuer, upstream):
    alice, bob = issuer.mint(sub="alice"), issuer.mint(sub="bob")
    opened = await post(gateway, alice)
    session = opened.headers["Mcp-Session-Id"]
    assert (await post(gateway, alice, CALL, **{"Mcp-Session-Id": session})).status == 200
    response = await post(gateway, bob, CALL, **{"Mcp-Session-Id": session})
    assert response.status == 404
    assert len(upstream.received) == 2


async def test_u5_unknown_session_is_404(gateway, issuer, upstream):
    response = await post(gateway, issuer.mint(), CALL, **{"Mcp-Session-Id": "never-issued"})
    assert response.status == 404
    assert upstream.received == []


async def test_u5_same_subject_from_another_issuer_is_another_principal(upstream, start_gateway, issuer, aiohttp_server):
    second = TestIssuer(keys=[SigningKey.ec(kid="second")])
    server = await aiohttp_server(second.app())
    second.url = str(server.make_url("")).rstrip("/")
    client = await start_gateway(upstream.url, authenticated=False, auth={"issuers": [{"issuer": issuer.url, "name": "first"}, {"issuer": second.url, "name": "second"}]})
    session = (await post(client, issuer.mint(sub="alice"))).headers["Mcp-Session-Id"]
    assert (await post(client, second.mint(sub="alice"), CALL, **{"Mcp-Session-Id": session})).status == 404


@pytest.mark.parametrize("claim", ["client_id", "azp", "cid", "appid"])
def test_t3_client_id_is_read_from_each_providers_claim(claim):
    from gateway.auth.principal import principal_from_claims

    claims = {"iss": "https://idp", "sub": "alice", claim: "the-client"}
    assert principal_from_claims(claims, token_type="jwt").client_id == "the-client"


async def test_e1_m2_preflight_allows_the_mcp_param_headers_the_browser_asks_for(browser_gateway):
    """A browser calling a tool with an x-mcp-header parameter sends Mcp-Param-{Name}: its preflight must pass.
    Only names the gateway would forward (I5) are echoed, never another header the page asks for."""
    response = await browser_gateway.options("/mcp", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, mcp-param-region, Mcp-Param-Table-Name, mcp-param-a_b, "
                                          "x-forwarded-user, mcp-param-region"})
    assert response.status == 204
    allowed = [name.strip() for name in response.headers["Access-Control-Allow-Headers"].split(",")]
    assert "mcp-param-region" in allowed and "mcp-param-table-name" in allowed
    assert allowed.count("mcp-param-region") == 1
    assert "mcp-param-a_b" not in allowed and "x-forwarded-user" not in allowed
