"""One reading of every token (I6) and one principal per issuer and subject (I7).

I6: whether a token is a JWT is decided leniently (any reading that some decoder would take for a JWT
makes it one), and a JWT is then held to the strict rules: it is verified or refused, never introspected,
so a lenient authorization server never gets to accept what T2-T7 refuse.

I7: with several issuers the Cedar principal is ``User::"<issuer name>/<sub>"``, so the same ``sub`` from
two identity providers never shares static entities, policies or cached decisions.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.auth.jwt import IssuerRules, canonical_url, looks_like_jwt, read_jose_header, time_claim
from gateway.auth.principal import principal_from_claims
from gateway.config import ConfigError, IssuerConfig, parse_config
from gateway.errors import Unauthenticated
from tests.factories import RESOURCE, SigningKey, TestIssuer, b64url, bearer
from tests.upstreams import answer_json

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


def call(name: str, rpc_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


async def post(client, token: str, body=INIT):
    return await client.post("/mcp", json=body, headers=bearer(token))


def reasons(caplog) -> list[str]:
    return [getattr(r, "fields", {}).get("reason") for r in caplog.records]


async def assert_refused(response, upstream, reason: str | None = None, caplog=None):
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert upstream.received == []
    if reason is not None:
        assert reason in reasons(caplog), reasons(caplog)


@pytest.fixture
async def introspecting(upstream, start_gateway):
    """A gateway that introspects tokens that are not JWTs: the old reading sent odd JWTs there."""
    return await start_gateway(
        upstream.url, authenticated=False,
        auth={"introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}},
    )


# -- I6: the shape test (JWT or not), decided leniently -------------------------------------------------

HEADER = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
H = b64url(json.dumps(HEADER).encode())  # {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
P = b64url(b'{"sub":"alice"}')
S = b64url(b"\x01" * 32)


def std_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A header whose standard base64 has a '+' (and whose base64url has a '-' there).
PLUS_SLASH_HEADER = json.dumps({"alg": "RS256", "x": "\u00fb\u00ff>?"}).encode()
SHORT = b64url(b'{"alg":"RS256"}')  # 20 characters: a whole number of base64 quads
JUNK_AFTER = b64url(b'{"alg":"RS256"}junk')
BOM = b64url(b'\xef\xbb\xbf{"alg":"RS256"}')
UTF16 = b64url('{"alg":"RS256"}'.encode("utf-16"))
DUPLICATE = b64url(b'{"alg":"RS256","alg":"none"}')
NOT_UTF8 = b64url(b'{"a":"\xff"}')
DEEP = b64url(b'{"a":' * 1500 + b"1" + b"}" * 1500)
ARRAY = b64url(b"[1, 2]")
STRING = b64url(b'"str"')


@pytest.mark.parametrize(("token", "jwt_shaped"), [
    (f"{H}.{P}.{S}", True),                                    # the ordinary form
    (f"{H}.{P}.", True),                                       # unsecured JWS (empty signature)
    (f"{H}=.{P}.{S}", True),                                   # padded header
    (f"{H}.{P}.{S}==", True),                                  # padded signature
    (f"{std_b64(json.dumps(HEADER).encode())}.{P}.{S}", True),  # standard base64, padded
    (f"{std_b64(PLUS_SLASH_HEADER)}.{P}.{S}", True),           # standard alphabet: '+' and '/'
    (f"{b64url(PLUS_SLASH_HEADER)}.{P}.{S}", True),            # url alphabet with '-' and '_'
    (f"{H[:10]}~{H[10:]}.{P}.{S}", True),                      # '~': skipped by lenient decoders
    (f"{H[:10]} \n{H[10:]}.{P}.{S}", True),                     # whitespace: skipped too
    (f"{H[:8]}={H[8:]}.{P}.{S}", True),                        # '=' inside: some decoders skip it
    (f"{SHORT}A.{P}.{S}", True),                               # a dangling 4n+1th character (Node drops it)
    (f"{JUNK_AFTER}.{P}.{S}", True),    # trailing bytes after the object (Jackson)
    (f"{BOM}.{P}.{S}", True),  # UTF-8 BOM
    (f"{UTF16}.{P}.{S}", True),  # UTF-16: json.loads(bytes) reads it
    (f"{DUPLICATE}.{P}.{S}", True),  # duplicate keys
    (f"{NOT_UTF8}.{P}.{S}", True),          # not UTF-8 inside a string
    (f"{DEEP}.{P}.{S}", True),                  # too deep for us is not "not a JWT"
    (f"{H}.{P}.{S}.x", False),                                 # four parts
    (f"{H}.e.n.c.x", False),                                   # five parts (JWE): opaque to us
    (f"{H}.{P}", False),                                       # two parts
    (f".{P}.{S}", False),                                      # empty header
    ("bm90LWpzb24.eyJzdWIiOiJ4In0.c2ln", False),               # header "not-json"
    (f"{ARRAY}.{P}.{S}", False),                   # a JSON array is not a JOSE header
    (f"{STRING}.{P}.{S}", False),                  # nor a JSON string
    (secrets.token_urlsafe(32), False),                        # an opaque token
    ("a.b.c", False),
])
def test_i6_shape_test_is_lenient(token, jwt_shaped):
    assert looks_like_jwt(token) is jwt_shaped


@pytest.mark.parametrize("token", [
    f"{H}=.{P}.{S}",
    f"{H}.{P}=.{S}",
    f"{H}.{P}.{S}==",
    f"{std_b64(PLUS_SLASH_HEADER)}.{P}.{S}",
    f"{H[:10]}~{H[10:]}.{P}.{S}",
    f"{H}.{P[:4]}~{P[4:]}.{S}",
    f"{H}.{P}.{S[:5]}+{S[5:]}",
    f"{H}.{P}.{S}AA",                                           # 4n+1 characters: no such base64url
    f"{H}.{P}.{S[:-1]}{chr(ord(S[-1]) + 1)}",                   # non-zero trailing bits (not canonical)
    f"{H}..{S}",                                                # empty payload
    f"{JUNK_AFTER}.{P}.{S}",
    f"{BOM}.{P}.{S}",
    f"{UTF16}.{P}.{S}",
    f"{DUPLICATE}.{P}.{S}",
    f"{NOT_UTF8}.{P}.{S}",
])
def test_i6_jwt_shaped_token_breaking_a_strict_rule_is_refused_not_passed_on(token):
    with pytest.raises(Unauthenticated) as refused:
        read_jose_header(token)
    assert refused.value.reason == "jwt_malformed"


def test_i6_strict_jwt_header_is_read_and_opaque_token_is_not_a_jwt():
    assert read_jose_header(f"{H}.{P}.{S}") == HEADER
    assert read_jose_header(secrets.token_urlsafe(32)) is None
    assert read_jose_header("bm90LWpzb24.eyJzdWIiOiJ4In0.c2ln") is None


# -- I6 end to end: odd JWTs are refused, never introspected ----------------------------------------------


def padded(token: str) -> str:
    return token + "=" * (-len(token.rsplit(".", 1)[1]) % 4 or 1)


def with_tilde(token: str, part: int) -> str:
    parts = token.split(".")
    parts[part] = parts[part] + "~"
    return ".".join(parts)


@pytest.mark.parametrize("oddity", ["padded", "tilde-in-header", "tilde-in-signature"])
async def test_i6_odd_jwt_is_refused_and_never_introspected(introspecting, issuer, upstream, caplog, oddity):
    token = issuer.mint()
    odd = {"padded": padded(token), "tilde-in-header": with_tilde(token, 0), "tilde-in-signature": with_tilde(token, 2)}[oddity]
    # A lenient authorization server would call it active: the gateway must not even ask.
    issuer.opaque_tokens[odd] = {"active": True, **issuer.claims()}
    await assert_refused(await post(introspecting, odd), upstream, "jwt_malformed", caplog)
    assert issuer.introspections == 0
    assert (await post(introspecting, token)).status == 200  # the token itself is fine


TIME_CLAIM_CASES = [
    ("exp", "NaN"), ("exp", "Infinity"), ("exp", "1e400"), ("exp", str(2**53 + 1)),
    ("nbf", "NaN"), ("nbf", "-Infinity"), ("nbf", "-1e400"), ("nbf", str(-(2**53) - 1)),
    ("iat", "NaN"), ("iat", "-Infinity"), ("iat", str(-(2**53) - 1)),
]


@pytest.mark.parametrize(("claim", "literal"), TIME_CLAIM_CASES)
async def test_i6_signed_time_claim_that_is_not_a_finite_number_within_2_53_is_refused(
        introspecting, issuer, upstream, caplog, claim, literal):
    await assert_refused(await post(introspecting, issuer.mint_raw(issuer.raw_claims(**{claim: literal}))),
                         upstream, "jwt_claim_malformed", caplog)
    assert issuer.introspections == 0


async def test_i6_hand_signed_token_with_ordinary_times_is_accepted(introspecting, issuer):
    # The control for the test above: the same hand-made token with plain numbers verifies.
    now = int(time.time())
    token = issuer.mint_raw(issuer.raw_claims(exp=str(now + 300), nbf=f"{now}.0", iat=str(now)))
    assert (await post(introspecting, token)).status == 200


async def test_i6_signed_payload_with_a_duplicate_claim_is_refused(introspecting, issuer, upstream, caplog):
    # json.loads lets the last "sub" win; a reader that takes the first sees another caller.
    token = issuer.mint_raw('{"sub": "mallory", ' + issuer.raw_claims()[1:])
    await assert_refused(await post(introspecting, token), upstream, "jwt_payload_malformed", caplog)


def _header(text: str) -> str:
    return text.replace("KID", "rsa-1")


@pytest.mark.parametrize("header", [
    _header('{"alg":"RS256","typ":"at+jwt","kid":"KID"}').encode("utf-16"),          # json.loads(bytes) reads UTF-16
    b"\xef\xbb\xbf" + _header('{"alg":"RS256","typ":"at+jwt","kid":"KID"}').encode(),  # and skips a UTF-8 BOM
    _header('{"alg":"RS256","typ":"JWT","kid":"KID","typ":"at+jwt"}').encode(),     # and lets the last typ win
], ids=["utf-16", "bom", "duplicate-typ"])
async def test_i6_validly_signed_jwt_with_a_header_pyjwt_reads_leniently_is_refused(introspecting, issuer, upstream, caplog, header):
    token = issuer.mint_compact(header, json.dumps(issuer.claims()).encode())
    await assert_refused(await post(introspecting, token), upstream, "jwt_malformed", caplog)
    assert issuer.introspections == 0
    control = issuer.mint_compact(_header('{"alg":"RS256","typ":"at+jwt","kid":"KID"}').encode(), json.dumps(issuer.claims()).encode())
    assert (await post(introspecting, control)).status == 200


def test_i6_time_claim_bounds():
    assert time_claim({"exp": 2**53}, "exp") == 2.0**53
    assert time_claim({"exp": -(2**53)}, "exp") == -(2.0**53)
    assert time_claim({"exp": 1.5}, "exp") == 1.5
    assert time_claim({}, "exp") is None
    for value in (2**53 + 1, float("nan"), float("inf"), float("-inf"), True, "1", [1]):
        with pytest.raises(Unauthenticated) as refused:
            time_claim({"exp": value}, "exp")
        assert refused.value.reason == "jwt_claim_malformed"


@pytest.mark.parametrize("aud", [
    "https://mcp.exa\tmple.com/mcp",
    "https://mcp.example.com/m\ncp",
    "https://mcp.example.com\r/mcp",
    " https://mcp.example.com/mcp",
    "\x00https://mcp.example.com/mcp",
    "\x1fhttps://mcp.example.com/mcp",
    "https://mcp.example.com:0443/mcp",
    "https://mcp.example.com:00443/mcp",
    "https://mcp.example.com:/mcp",
    ["https://other.example.com/mcp", "https://mcp.exa\tmple.com/mcp"],
])
async def test_i6_audience_with_whitespace_control_or_odd_port_never_matches(introspecting, issuer, upstream, caplog, aud):
    await assert_refused(await post(introspecting, issuer.mint(aud=aud)), upstream, "jwt_wrong_audience", caplog)


@pytest.mark.parametrize("value", [
    "https://mcp.exa\tmple.com/mcp", "https://mcp.example.com/mcp\n", " https://mcp.example.com/mcp",
    "https://mcp.example.com/mcp ", "https://mcp.example.com/mcp\x00", "https://mcp.example.com/mcp\x7f",
    "https://mcp.example.com/mcp\x85", "https://mcp.exa\u200bmple.com/mcp", "\ufeffhttps://mcp.example.com/mcp",
    "https://mcp.example.com/mcp\u00a0", "https://mcp.example.com/mcp\u2028", "https://mcp.example.com:0443/mcp",
    "https://mcp.example.com:/mcp", "https://mcp.example.com:+443/mcp", "https://mcp.example.com:99999/mcp",
    "https://user@mcp.example.com/mcp", "https://mcp.example.co\u212a/mcp",  # Kelvin sign: lower() is 'k'
    "api://mcp\t", "mcp internal",
])
def test_i6_canonical_url_refuses_rather_than_normalises(value):
    assert canonical_url(value) is None


@pytest.mark.parametrize(("value", "canonical"), [
    ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
    ("HTTPS://MCP.Example.COM:443/mcp", "https://mcp.example.com/mcp"),
    ("https://mcp.example.com:8443/mcp", "https://mcp.example.com:8443/mcp"),
    ("http://mcp.example.com:80", "http://mcp.example.com/"),
    ("https://mcp.example.com/mcp#frag", "https://mcp.example.com/mcp"),
    ("https://[::1]:443/mcp", "https://[::1]/mcp"),
    ("api://mcp", "api://mcp"),
    ("mcp-internal", "mcp-internal"),
])
def test_i6_configured_and_ordinary_values_canonicalise_as_before(value, canonical):
    assert canonical_url(value) == canonical


def test_i6_unusable_configured_alias_never_matches_unusable_audiences():
    # Two values that both "never match" must not match each other.
    config = IssuerConfig(issuer="https://idp.example.com", audiences=("https://user@h/mcp", "api://mcp"))
    rules = IssuerRules.build(config, "HTTPS://MCP.EXAMPLE.COM:443/mcp", 0)
    assert rules.names_resource(["https://mcp.example.com/mcp"]) and rules.names_resource("api://mcp")
    assert not rules.names_resource("https://other@x/mcp")
    assert not rules.names_resource(["https://mcp.example.com:0443/mcp", "https://mcp.exa\tmple.com/mcp"])


def test_i6_issuer_with_whitespace_never_matches_even_when_configured_so():
    from gateway.auth.jwt import check_claims

    config = IssuerConfig(issuer="https://idp.example.com ")
    rules = IssuerRules.build(config, RESOURCE, 0)
    claims = {"iss": "https://idp.example.com ", "aud": RESOURCE, "sub": "alice", "exp": time.time() + 300}
    with pytest.raises(Unauthenticated) as refused:
        check_claims(claims, rules, time.time())
    assert refused.value.reason == "jwt_wrong_issuer"


INTROSPECTION_CASES = [
    {"exp": float("nan")}, {"exp": float("inf")}, {"exp": 2**53 + 1}, {"exp": 10**30},
    {"nbf": float("nan")}, {"nbf": float("-inf")}, {"nbf": "yesterday"},
    {"iat": float("nan")}, {"iat": -(2**53) - 1},
]


@pytest.mark.parametrize("answer", INTROSPECTION_CASES, ids=lambda a: json.dumps(a))
async def test_i6_introspection_answer_with_time_that_is_not_a_finite_number_is_refused(
        introspecting, issuer, upstream, caplog, answer):
    # aiohttp's json_response writes NaN and Infinity as the bare literals many JSON readers accept.
    await assert_refused(await post(introspecting, issuer.opaque(**answer)), upstream, "introspection_claim_malformed", caplog)
    assert issuer.introspections == 1


@pytest.mark.parametrize("aud", ["https://mcp.exa\tmple.com/mcp", " https://mcp.example.com/mcp", "https://mcp.example.com:0443/mcp"])
async def test_i6_introspection_audience_with_whitespace_or_odd_port_never_matches(introspecting, issuer, upstream, caplog, aud):
    await assert_refused(await post(introspecting, issuer.opaque(aud=aud)), upstream, "introspection_wrong_audience", caplog)


# -- I7: principals from different issuers are different principals ----------------------------------------

I7_POLICIES = """\
@id("admins-may-reset")
permit (principal in Group::"admins", action == Action::"tools/call", resource == Tool::"admin_reset");

@id("everyone-may-list")
permit (principal, action == Action::"tools/list", resource);
"""

TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("search", "admin_reset")]


def write_authorization(tmp_path: Path, principal_id: str) -> dict:
    folder = tmp_path / "i7-policies"
    folder.mkdir(exist_ok=True)
    (folder / "policies.cedar").write_text(I7_POLICIES)
    entities = tmp_path / "i7-entities.json"
    entities.write_text(json.dumps([
        {"uid": {"type": "User", "id": principal_id}, "attrs": {}, "parents": [{"type": "Group", "id": "admins"}]},
        {"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": []},
    ]))
    return {"policies": str(folder), "entities": str(entities)}


async def answer_tools_list(request: web.Request, received) -> web.StreamResponse:
    message = json.loads(received.body)
    if message.get("method") == "tools/list":
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS}})
    return await answer_json(request, received)


@pytest.fixture
async def partner(aiohttp_server) -> TestIssuer:
    """A second identity provider whose users may have the same ``sub`` as the first's."""
    second = TestIssuer(keys=[SigningKey.ec(kid="partner")])
    server = await aiohttp_server(second.app())
    second.url = str(server.make_url("")).rstrip("/")
    return second


@pytest.fixture
async def two_issuers(upstream, start_gateway, issuer, partner, tmp_path):
    upstream.behaviour = answer_tools_list
    return await start_gateway(
        upstream.url, authenticated=False,
        auth={"issuers": [{"issuer": issuer.url, "name": "corp"}, {"issuer": partner.url, "name": "partner"}],
              "introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}},
        authorization=write_authorization(tmp_path, "corp/alice"),
    )


async def test_i7_same_sub_from_another_issuer_does_not_get_the_static_entities(two_issuers, issuer, partner, upstream):
    assert (await post(two_issuers, issuer.mint(sub="alice"), call("admin_reset"))).status == 200
    assert (await post(two_issuers, partner.mint(sub="alice"), call("admin_reset"))).status == 403
    assert len(upstream.received) == 1


async def test_i7_decisions_are_not_shared_across_issuers(two_issuers, issuer, partner):
    # Back to back, in both orders: a cached decision for one issuer's alice never serves the other's.
    statuses = []
    for token in (partner.mint(sub="alice"), issuer.mint(sub="alice"), partner.mint(sub="alice"), issuer.mint(sub="alice")):
        statuses.append((await post(two_issuers, token, call("admin_reset"))).status)
    assert statuses == [403, 200, 403, 200]


async def test_i7_filtered_lists_are_not_shared_across_issuers(two_issuers, issuer, partner):
    async def names(token):
        body = await (await post(two_issuers, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).json()
        return [tool["name"] for tool in body["result"]["tools"]]

    for _ in range(2):
        assert await names(issuer.mint(sub="alice")) == ["admin_reset"]
        assert await names(partner.mint(sub="alice")) == []


async def test_i7_introspected_principal_is_qualified_by_its_issuer(two_issuers, issuer, partner):
    corp = issuer.opaque(sub="alice")
    other = issuer.opaque(sub="alice", iss=partner.url)  # the first issuer's endpoint answers for both
    assert (await post(two_issuers, corp, call("admin_reset"))).status == 200
    assert (await post(two_issuers, other, call("admin_reset"))).status == 403


async def test_i7_sessions_stay_bound_per_issuer(two_issuers, issuer, partner):
    opened = await post(two_issuers, issuer.mint(sub="alice"))
    session = opened.headers["Mcp-Session-Id"]

    async def use(token):
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}  # allowed to both: only the session differs
        return (await two_issuers.post("/mcp", json=listing, headers={**bearer(token), "Mcp-Session-Id": session})).status

    assert await use(issuer.mint(sub="alice")) == 200
    assert await use(partner.mint(sub="alice")) == 404


async def test_i7_one_issuer_keeps_the_plain_principal(upstream, start_gateway, issuer, tmp_path):
    # A name on a lone issuer changes nothing (cedar.md): User::"alice" is still alice.
    client = await start_gateway(upstream.url, authenticated=False,
                                 auth={"issuers": [{"issuer": issuer.url, "name": "corp"}]},
                                 authorization=write_authorization(tmp_path, "alice"))
    assert (await post(client, issuer.mint(sub="alice"), call("admin_reset"))).status == 200
    assert (await post(client, issuer.mint(sub="bob"), call("admin_reset"))).status == 403
    principal = await client.gateway.authenticator.authenticate(issuer.mint(sub="alice"))
    request = client.gateway.authorizer.build(principal, _message(call("admin_reset")))
    assert request.principal == {"type": "User", "id": "alice"}


def _message(body: dict):
    from gateway.mcp.jsonrpc import parse_body

    [message] = parse_body(json.dumps(body).encode(), "application/json").messages
    return message


def explain_config(tmp_path: Path, issuers: list[dict]):
    return parse_config({
        "server": {"public_url": RESOURCE},
        "upstream": {"url": "http://127.0.0.1:3000/mcp"},
        "auth": {"issuers": issuers},
        "authorization": write_authorization(tmp_path, "corp/alice"),
    }, source="test.yaml")


def run_explain(tmp_path: Path, config, claims: dict) -> dict:
    from gateway.authz.explain import explain

    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps(claims))
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(call("admin_reset")))
    return explain(config, claims_file, request_file)


def test_i7_policy_explain_builds_the_principal_the_gateway_builds(tmp_path):
    config = explain_config(tmp_path, [{"issuer": "https://idp.example.com", "name": "corp"},
                                       {"issuer": "https://partner.example.com", "name": "partner"}])
    corp = run_explain(tmp_path, config, {"iss": "https://idp.example.com", "sub": "alice"})
    assert corp["messages"][0]["request"]["principal"] == {"type": "User", "id": "corp/alice"}
    assert corp["result"] == "allow"
    other = run_explain(tmp_path, config, {"iss": "https://partner.example.com", "sub": "alice"})
    assert other["messages"][0]["request"]["principal"] == {"type": "User", "id": "partner/alice"}
    assert other["messages"][0]["request"]["principal"] != corp["messages"][0]["request"]["principal"]
    assert other["result"] == "deny"
    with pytest.raises(ValueError, match="iss"):
        run_explain(tmp_path, config, {"iss": "https://stranger.example.com", "sub": "alice"})


def test_i7_policy_explain_with_one_issuer_keeps_the_plain_principal(tmp_path):
    config = explain_config(tmp_path, [{"issuer": "https://idp.example.com"}])
    report = run_explain(tmp_path, config, {"iss": "https://idp.example.com", "sub": "alice"})
    assert report["messages"][0]["request"]["principal"] == {"type": "User", "id": "alice"}


def test_i7_validate_refuses_several_issuers_without_names(tmp_path):
    with pytest.raises(ConfigError) as refused:
        explain_config(tmp_path, [{"issuer": "https://idp.example.com", "name": "corp"}, {"issuer": "https://partner.example.com"}])
    assert any("auth.issuers[1].name" in problem and "required" in problem for problem in refused.value.problems)


def test_i7_principal_id_keeps_sub_and_iss_raw():
    claims = {"iss": "https://idp.example.com", "sub": "alice"}
    qualified = principal_from_claims(claims, token_type="jwt", namespace="corp")
    assert (qualified.entity_id, qualified.subject, qualified.issuer) == ("corp/alice", "alice", "https://idp.example.com")
    assert principal_from_claims(claims, token_type="jwt").entity_id == "alice"


async def test_i6_an_introspected_sub_that_is_not_a_string_never_becomes_the_client(start_gateway, upstream, issuer):
    """Red-team finding: {"sub": 123, "client_id": "svc-admin"} used to be the principal svc-admin."""
    client = await start_gateway(upstream.url, authenticated=False, auth={"introspection": {
        "client_id": "gateway", "client_secret": "gateway-secret"}})
    for answer in ({"sub": 123, "client_id": "svc-admin"}, {"sub": "", "client_id": "svc-admin"}, {"sub": None, "client_id": "svc-admin"}):
        token = issuer.opaque(**answer)
        issuer.opaque_tokens[token]["sub"] = answer["sub"]  # opaque() drops None values; put it back
        response = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(token))
        assert response.status == 401, answer
    assert upstream.received == []


async def test_i6_an_introspected_refresh_token_is_not_an_access_token(start_gateway, upstream, issuer):
    client = await start_gateway(upstream.url, authenticated=False, auth={"introspection": {
        "client_id": "gateway", "client_secret": "gateway-secret"}})
    for token_type in ("refresh_token", "urn:ietf:params:oauth:token-type:refresh_token", "id_token"):
        response = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                     headers=bearer(issuer.opaque(token_type=token_type)))
        assert response.status == 401, token_type
    ok = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(issuer.opaque(token_type="Bearer")))
    assert ok.status == 200
