"""M5 (and the completion/complete resource of cedar.md) with the shipped policies: the housekeeping a
client needs to connect is permitted to everyone signed in, and decided like any other method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.auth.principal import principal_from_claims
from gateway.authz.cedar import Authorizer, PolicyStore
from gateway.config import AuthorizationConfig
from gateway.mcp.jsonrpc import MalformedMessage, parse_body

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SHIPPED = AuthorizationConfig(policies=POLICIES, schema=POLICIES / "mcp.cedarschema", entities=POLICIES / "entities.json")
BOB = principal_from_claims({"iss": "https://idp", "sub": "bob", "groups": ["engineering"], "scope": "mcp"}, token_type="jwt")


def message(method: str, **params):
    [parsed] = parse_body(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
                          "application/json").messages
    return parsed


def shipped(config: AuthorizationConfig = SHIPPED) -> Authorizer:
    return Authorizer(PolicyStore(config), config, server_name="Demo MCP server")


@pytest.mark.parametrize("method, params", [
    ("logging/setLevel", {"level": "info"}),
    ("server/discover", {}),
    ("subscriptions/listen", {}),
    ("resources/subscribe", {"uri": "demo://readme"}),
    ("resources/unsubscribe", {"uri": "demo://readme"}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "summarize"}, "argument": {"name": "text", "value": "a"}}),
    ("completion/complete", {"ref": {"type": "ref/resource", "uri": "demo://readme"}, "argument": {"name": "x", "value": ""}}),
])
def test_m5_housekeeping_is_permitted_to_a_non_admin_by_the_shipped_policies(method, params):
    msg = message(method, **params)
    assert msg.evaluated  # decided like any method (server/discover too: cedar.md's housekeeping group)
    decision = shipped().decide(BOB, msg)
    assert decision.allowed, (method, decision)


def test_m5_completion_is_decided_against_the_prompt_it_names(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    for name in ("everyone.cedar", "admins.cedar"):
        (folder / name).write_text((POLICIES / name).read_text())
    (folder / "secret.cedar").write_text(
        'forbid (principal, action in [Action::"prompts/get", Action::"completion/complete"], resource == Prompt::"secret");\n')
    config = AuthorizationConfig(policies=folder, schema=POLICIES / "mcp.cedarschema", entities=POLICIES / "entities.json")
    ref = {"type": "ref/prompt", "name": "secret"}
    assert not shipped(config).decide(BOB, message("completion/complete", ref=ref, argument={"name": "a", "value": ""})).allowed
    other = {"type": "ref/prompt", "name": "summarize"}
    assert shipped(config).decide(BOB, message("completion/complete", ref=other, argument={"name": "a", "value": ""})).allowed
    assert shipped(config).build(BOB, message("completion/complete", ref=ref)).resource == {"type": "Prompt", "id": "secret"}


@pytest.mark.parametrize("ref", [None, {}, {"type": "ref/tool", "name": "x"}, {"type": "ref/prompt"}, {"type": "ref/prompt", "Name": "x"},
                                 {"type": "ref/resource", "name": "x"}, {"type": "ref/prompt", "name": " x"}])
def test_m5_a_completion_without_one_plain_reference_is_400(ref):
    with pytest.raises(MalformedMessage):
        message("completion/complete", **({"ref": ref} if ref is not None else {}))


# -- M2: Mcp-Param-{Name} headers from x-mcp-header annotations -------------------------------------------

from gateway.mcp.catalogue import InvalidAnnotation, ToolCatalogue, param_headers  # noqa: E402

SQL_SCHEMA = {"type": "object", "properties": {
    "region": {"type": "string", "x-mcp-header": "Region"},
    "limit": {"type": "integer", "x-mcp-header": "Limit"},
    "dry": {"type": "boolean", "x-mcp-header": "Dry"},
    "options": {"type": "object", "properties": {"tenant": {"type": "string", "x-mcp-header": "Tenant"}}},
    "query": {"type": "string"}}}


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "number", "x-mcp-header": "A"}}},  # number is not allowed
    {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "A B"}}},  # not a token
    {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": ""}}},
    {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "X"}, "b": {"type": "string", "x-mcp-header": "x"}}},
    {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "A"}}}},
    {"type": "object", "oneOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]},
    {"type": "object", "x-mcp-header": "Root"},
])
def test_m2_invalid_x_mcp_header_annotations_are_recognised(schema):
    with pytest.raises(InvalidAnnotation):
        param_headers(schema)


def test_m2_valid_annotations_are_learned_with_their_property_paths():
    assert {(h.path, h.header, h.type) for h in param_headers(SQL_SCHEMA)} == {
        (("region",), "Mcp-Param-Region", "string"), (("limit",), "Mcp-Param-Limit", "integer"),
        (("dry",), "Mcp-Param-Dry", "boolean"), (("options", "tenant"), "Mcp-Param-Tenant", "string")}


def catalogue() -> ToolCatalogue:
    tools = ToolCatalogue()
    tools.learn([{"name": "execute_sql", "inputSchema": SQL_SCHEMA}])
    return tools


@pytest.mark.parametrize("arguments, headers", [
    ({"region": "us-west1", "query": "q"}, {"Mcp-Param-Region": "us-west1"}),
    ({"region": "Hello, \u4e16\u754c"}, {"Mcp-Param-Region": "=?base64?SGVsbG8sIOS4lueVjA==?="}),
    ({"limit": 42}, {"Mcp-Param-Limit": "42"}),
    ({"limit": 42.0}, {"Mcp-Param-Limit": "42"}),  # compared numerically
    ({"dry": False}, {"Mcp-Param-Dry": "false"}),
    ({"options": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "acme"}),
    ({"region": None, "query": "q"}, {}),  # null: no header expected
    ({"query": "q"}, {"Mcp-Param-Other": "anything"}),  # unknown Mcp-Param headers pass
])
def test_m2_headers_that_say_what_the_body_says_pass(arguments, headers):
    catalogue().check_call("execute_sql", arguments, {k.lower(): v for k, v in headers.items()} | headers)


@pytest.mark.parametrize("arguments, headers, reason", [
    ({"region": "us-west1"}, {}, "param_header_missing"),
    ({"region": "us-west1"}, {"Mcp-Param-Region": "eu-west1"}, "param_header_mismatch"),
    ({"region": "=?base64?x?="}, {"Mcp-Param-Region": "=?base64?x?="}, "param_header_mismatch"),  # must be encoded
    ({"limit": 42}, {"Mcp-Param-Limit": "42.5"}, "param_header_mismatch"),
    ({"dry": True}, {"Mcp-Param-Dry": "True"}, "param_header_mismatch"),
    ({"query": "q"}, {"Mcp-Param-Region": "us-west1"}, "param_header_mismatch"),  # a header with no value behind it
    ({"options": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "other"}, "param_header_mismatch"),
])
def test_m2_a_missing_or_mismatching_header_is_a_header_mismatch(arguments, headers, reason):
    with pytest.raises(MalformedMessage) as caught:
        catalogue().check_call("execute_sql", arguments, headers)
    assert caught.value.reason == reason and caught.value.status == 400 and caught.value.jsonrpc_code == -32020


def test_m2_a_tool_with_an_invalid_annotation_is_not_checked():
    tools = ToolCatalogue()
    tools.learn([{"name": "t", "inputSchema": {"type": "object", "properties": {"a": {"type": "number", "x-mcp-header": "A"}}}}])
    tools.check_call("t", {"a": 1.5}, {})


async def test_m2_mcp_param_headers_are_checked_against_the_learned_schema_end_to_end(serve_gateway, upstream, issuer):
    import aiohttp
    from aiohttp import web

    from tests.factories import bearer

    async def behaviour(request, received):
        body = json.loads(received.body)
        if body["method"] == "tools/list":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [{"name": "execute_sql", "inputSchema": SQL_SCHEMA}]}})
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"content": []}})

    upstream.behaviour = behaviour
    gateway = await serve_gateway(upstream.url)

    async def call(arguments, headers):
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "execute_sql", "arguments": arguments}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gateway.url}/mcp", json=body, headers={**bearer(issuer.mint()), **headers}) as response:
                return response.status, await response.json()

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(issuer.mint())) as response:
            assert response.status == 200
    assert (await call({"region": "us-west1"}, {"Mcp-Param-Region": "us-west1", "Mcp-Param-Unknown": "x"}))[0] == 200
    assert upstream.received[-1].headers["Mcp-Param-Region"] == "us-west1" and upstream.received[-1].headers["Mcp-Param-Unknown"] == "x"
    forwarded = len(upstream.received)
    status, answer = await call({"region": "us-west1"}, {"Mcp-Param-Region": "eu-west1"})
    assert status == 400 and answer["error"]["code"] == -32020
    status, answer = await call({"region": "us-west1"}, {})
    assert status == 400 and answer["error"]["code"] == -32020
    assert len(upstream.received) == forwarded


# -- M6: multi round-trip requests ---------------------------------------------------------------------------


async def test_m6_input_required_results_pass_and_every_retry_is_decided(serve_gateway, upstream, issuer, policies_dir):
    import aiohttp
    from aiohttp import web

    from tests.factories import bearer

    (policies_dir / "allow-all.cedar").write_text(
        'permit (principal, action, resource);\nforbid (principal, action == Action::"tools/call", resource == Tool::"deploy")\n'
        'when { context.arguments has env && context.arguments.env == "prod" };\n')

    async def behaviour(request, received):
        body = json.loads(received.body)
        if "inputResponses" not in body["params"]:
            result = {"resultType": "input_required", "inputRequests": {
                "confirm": {"method": "elicitation/create", "params": {"message": "Sure?", "requestedSchema": {"type": "object"}}}}}
        else:
            result = {"resultType": "complete", "content": [{"type": "text", "text": "deployed"}]}
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})

    upstream.behaviour = behaviour
    gateway = await serve_gateway(upstream.url)

    async def call(rpc_id, arguments, **params):
        body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": "deploy", "arguments": arguments, **params}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gateway.url}/mcp", json=body, headers=bearer(issuer.mint())) as response:
                return response.status, await response.json()

    status, first = await call(1, {"env": "staging"})
    assert status == 200 and first["result"]["resultType"] == "input_required"
    responses = {"confirm": {"action": "accept", "content": {}}}
    status, second = await call(2, {"env": "staging"}, inputResponses=responses)
    assert status == 200 and second["result"]["content"][0]["text"] == "deployed"
    assert json.loads(upstream.received[-1].body)["params"]["inputResponses"] == responses  # passed through
    # A retry is a new request: decided again, and refused when its arguments are.
    status, refused = await call(3, {"env": "prod"}, inputResponses=responses)
    assert status == 403 and len(upstream.received) == 2
    assert [e["outcome"] for e in gateway.audit() if e.get("method") == "tools/call"] == ["allow", "allow", "deny"]


# -- M1: caching hints --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["public", "Public", "shared"])
def test_m1_a_filtered_list_leaves_private_with_its_ttl_kept(scope):
    from gateway.mcp.listing import ListFilter

    answer = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, {"name": "b"}], "cacheScope": scope, "ttlMs": 60000}}
    out = json.loads(ListFilter(lambda _scope: (lambda method, name: name == "a")).filter_json_body(json.dumps(answer).encode()))
    assert out["result"] == {"tools": [{"name": "a"}], "cacheScope": "private", "ttlMs": 60000}
    # Nothing removed: still the caller's view, still private.
    out = json.loads(ListFilter(lambda _scope: (lambda method, name: True)).filter_json_body(json.dumps(answer).encode()))
    assert out["result"]["cacheScope"] == "private" and out["result"]["ttlMs"] == 60000


def test_m1_an_answer_without_a_list_keeps_its_cache_scope():
    from gateway.mcp.listing import ListFilter

    answer = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "cacheScope": "public"}}).encode()
    assert ListFilter(lambda _scope: (lambda method, name: False)).filter_json_body(answer) == answer
