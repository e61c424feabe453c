"""Cedar authorization end to end (Z1-Z6, E4): real policies on disk, a real upstream, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from gateway.authz.cedar import PolicyLoadError, load_policies
from gateway.config import AuthorizationConfig
from tests.factories import bearer
from tests.upstreams import Received, sse_event, start_sse

POLICIES = """\
@id("list")
permit (principal, action in [Action::"tools/list", Action::"prompts/list", Action::"resources/list"], resource);

@id("search-for-all")
permit (principal, action == Action::"tools/call", resource == Tool::"search");

@id("admins")
permit (principal in Group::"admins", action, resource);

@id("no-prod-drops")
forbid (principal, action == Action::"tools/call", resource == Tool::"drop_table")
when { context.arguments has database && context.arguments.database == "prod" };
"""

TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("search", "drop_table", "admin_reset")]


def rpc(method: str, rpc_id=1, **params):
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params:
        message["params"] = params
    return message


def call(name: str, rpc_id=1, **arguments):
    return rpc("tools/call", rpc_id, name=name, arguments=arguments)


def write_policies(folder: Path, text: str, name: str = "policies.cedar") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


async def answer_tools_list(request: web.Request, received: Received) -> web.StreamResponse:
    message = json.loads(received.body)
    if isinstance(message, dict) and message.get("method") == "tools/list":
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS, "nextCursor": "page-2"}})
    return web.json_response({"jsonrpc": "2.0", "id": message.get("id") if isinstance(message, dict) else None, "result": {}})


async def answer_tools_list_sse(request: web.Request, received: Received) -> web.StreamResponse:
    message = json.loads(received.body)
    response = await start_sse(request)
    await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "listing"}}))
    await response.write(b"event: message\ndata: {not json\n\n")
    await response.write(sse_event({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS, "nextCursor": "page-2"}}, "9"))
    await response.write_eof()
    return response


@pytest.fixture
async def gateway(upstream, start_gateway, tmp_path):
    upstream.behaviour = answer_tools_list
    folder = write_policies(tmp_path / "cedar", POLICIES)
    return await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})


async def post(client, token, body, **headers):
    return await client.post("/mcp", json=body, headers={**bearer(token), **headers})


# -- Z1: every request decided, with the entity model of cedar.md ------------------------------------------


async def test_z1_allowed_and_denied_tool_calls(gateway, issuer, upstream):
    token = issuer.mint(groups=["engineering"])
    assert (await post(gateway, token, call("search"))).status == 200
    response = await post(gateway, token, call("admin_reset", rpc_id=42))
    assert response.status == 403
    assert len(upstream.received) == 1


async def test_z1_group_claim_makes_a_group_parent(gateway, issuer):
    assert (await post(gateway, issuer.mint(groups=["admins"]), call("admin_reset"))).status == 200
    assert (await post(gateway, issuer.mint(roles=["admins"]), call("admin_reset"))).status == 200


async def test_z1_group_claims_with_dot_paths(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", POLICIES)
    client = await start_gateway(upstream.url, authenticated=False, authorization={
        "policies": str(folder), "group_claims": ["realm_access.roles"]})
    token = issuer.mint(realm_access={"roles": ["admins", "user"]})
    assert (await post(client, token, call("admin_reset"))).status == 200
    assert (await post(client, issuer.mint(groups=["admins"]), call("admin_reset"))).status == 403


async def test_z1_handshake_ping_notifications_and_responses_are_not_evaluated(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", "forbid (principal, action, resource);\n")
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    token = issuer.mint()
    assert (await post(client, token, rpc("initialize", protocolVersion="2025-11-25"))).status == 200
    assert (await post(client, token, rpc("ping"))).status == 200
    assert (await post(client, token, {"jsonrpc": "2.0", "method": "notifications/initialized"})).status == 200
    assert (await post(client, token, {"jsonrpc": "2.0", "id": 5, "result": {}})).status == 200
    assert (await post(client, token, rpc("tools/list"))).status == 403


async def test_z1_a_call_without_id_is_still_decided(gateway, issuer, upstream):
    # JSON-RPC calls this a notification, but it names tools/call: a server may well run it.
    sneaky = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "admin_reset", "arguments": {}}}
    response = await post(gateway, issuer.mint(), sneaky)
    assert response.status == 403
    assert upstream.received == []


async def test_z1_unknown_methods_are_evaluated_and_denied_by_default(gateway, issuer, upstream):
    assert (await post(gateway, issuer.mint(), rpc("tools/destroy_everything"))).status == 403
    assert upstream.received == []


async def test_z1_method_in_other_letter_case_is_not_the_real_method(gateway, issuer, upstream):
    response = await post(gateway, issuer.mint(), {**call("search"), "method": "Tools/Call"})
    assert response.status == 403
    assert upstream.received == []


async def test_z1_static_entity_attributes_survive_request_entities(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", """
        permit (principal, action == Action::"tools/call", resource == Tool::"report")
        when { principal has department && principal.department == "finance" && principal in Group::"auditors"
               && principal.scopes.contains("mcp") };
        permit (principal, action == Action::"tools/call", resource)
        when { resource has owner && resource.owner == principal.sub };
    """)
    entities = tmp_path / "entities.json"
    entities.write_text(json.dumps([
        {"uid": {"type": "User", "id": "alice"}, "attrs": {"department": "finance"}, "parents": [{"type": "Group", "id": "auditors"}]},
        {"uid": {"type": "Tool", "id": "ledger"}, "attrs": {"owner": "bob"}, "parents": []},
    ]))
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder), "entities": str(entities)})
    assert (await post(client, issuer.mint(sub="alice", groups=["engineering"]), call("report"))).status == 200
    assert (await post(client, issuer.mint(sub="carol"), call("report"))).status == 403
    assert (await post(client, issuer.mint(sub="bob"), call("ledger"))).status == 200
    assert (await post(client, issuer.mint(sub="alice"), call("ledger"))).status == 403


async def test_z1_integer_claims_stay_long_and_lists_become_sets(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", """
        permit (principal, action == Action::"tools/call", resource)
        when { principal.claims has level && principal.claims.level >= 3 && principal.claims.teams.contains("blue") };
    """)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    assert (await post(client, issuer.mint(level=3, teams=["blue", "red"]), call("x"))).status == 200
    assert (await post(client, issuer.mint(level=2, teams=["blue"]), call("x"))).status == 403
    assert (await post(client, issuer.mint(level="3", teams=["blue"]), call("x"))).status == 403  # a String is not a Long


@pytest.mark.parametrize(("arguments", "status"), [
    ({"database": "prod"}, 403), ({"database": "staging"}, 200), ({}, 200),
])
async def test_z1_argument_conditions_with_strings(gateway, issuer, arguments, status):
    assert (await post(gateway, issuer.mint(groups=["admins"]), call("drop_table", **arguments))).status == status


async def test_z1_argument_conditions_with_integers_and_booleans(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", """
        permit (principal, action == Action::"tools/call", resource == Tool::"transfer")
        when { context.arguments has amount && context.arguments.amount <= 100
               && context.arguments has dry_run && context.arguments.dry_run == false };
    """)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    token = issuer.mint()
    assert (await post(client, token, call("transfer", amount=100, dry_run=False))).status == 200
    assert (await post(client, token, call("transfer", amount=101, dry_run=False))).status == 403
    assert (await post(client, token, call("transfer", amount=5, dry_run=True))).status == 403
    assert (await post(client, token, call("transfer", amount="5", dry_run=False))).status == 403
    assert (await post(client, token, call("transfer", amount=101.0, dry_run=False))).status == 403  # 101.0 is 101


async def test_z1_arguments_cannot_smuggle_entity_references(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", """
        permit (principal, action == Action::"tools/call", resource)
        when { context.arguments has target && context.arguments.target in Group::"admins" };
    """)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    smuggled = call("x", target={"__entity": {"type": "Group", "id": "admins"}})
    assert (await post(client, issuer.mint(), smuggled)).status == 403


async def test_z1_evaluation_error_fails_closed(upstream, start_gateway, tmp_path, issuer):
    # Without `has`, this forbid errors when the argument is absent; Cedar would skip it and allow.
    folder = write_policies(tmp_path / "cedar", """
        permit (principal, action == Action::"tools/call", resource);
        forbid (principal, action == Action::"tools/call", resource) when { context.arguments.database == "prod" };
    """)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    assert (await post(client, issuer.mint(), call("x"))).status == 403
    assert (await post(client, issuer.mint(), call("x", database="dev"))).status == 200


# -- Z2: policy store -------------------------------------------------------------------------------------


def test_z2_parse_error_names_file_and_line(tmp_path):
    folder = write_policies(tmp_path / "cedar", "permit (principal, action, resource);\n\n// two\npermit (principal, action, resource)\nwhen { context.a = 1 };\n", "b.cedar")
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(AuthorizationConfig(policies=folder))
    assert caught.value.problems[0].startswith(f"{folder / 'b.cedar'}:4: ")


def test_z2_schema_violation_names_file_and_line(tmp_path):
    folder = write_policies(tmp_path / "cedar", "permit (principal, action, resource);\n@id(\"typo\")\npermit (principal, action == Action::\"tools/cal\", resource);\n", "a.cedar")
    schema = Path(__file__).parent.parent / "policies" / "mcp.cedarschema"
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(AuthorizationConfig(policies=folder, schema=schema))
    assert any("typo" in p and "tools/cal" in p for p in caught.value.problems)


def test_z2_shipped_policies_validate_against_the_shipped_schema():
    root = Path(__file__).parent.parent / "policies"
    loaded = load_policies(AuthorizationConfig(policies=root, schema=root / "mcp.cedarschema", entities=root / "entities.json"))
    assert loaded.policy_count >= 5


def test_z2_validate_command_checks_policies(tmp_path):
    folder = write_policies(tmp_path / "cedar", "permit (principal, action, resource)\nwhen { context.a = 1 };\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
server: {{public_url: https://mcp.example.com/mcp}}
upstream: {{url: http://127.0.0.1:3000/mcp}}
auth: {{issuers: [{{issuer: https://idp.example.com}}]}}
authorization: {{policies: {folder}}}
""")
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{folder / 'policies.cedar'}:1: " in result.stderr


async def test_z2_policy_change_on_disk_changes_decisions_without_restart(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", POLICIES)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    store = client.gateway.policies
    token = issuer.mint()
    assert (await post(client, token, call("admin_reset"))).status == 403
    (folder / "policies.cedar").write_text(POLICIES + '\npermit (principal, action == Action::"tools/call", resource == Tool::"admin_reset");\n')
    os.utime(folder / "policies.cedar", ns=(1, 10**18))
    for _ in range(60):
        if store.current.version == 2:
            break
        await asyncio.sleep(0.1)
    assert store.current.version == 2
    assert (await post(client, token, call("admin_reset"))).status == 200


async def test_z2_broken_edit_is_refused_and_old_set_stays(upstream, start_gateway, tmp_path, issuer):
    folder = write_policies(tmp_path / "cedar", POLICIES)
    client = await start_gateway(upstream.url, authenticated=False, authorization={"policies": str(folder)})
    store = client.gateway.policies
    (folder / "policies.cedar").write_text("permit (principal, action resource);\n")
    os.utime(folder / "policies.cedar", ns=(1, 10**18))
    assert store.reload_if_changed() is False
    assert store.current.version == 1 and store.failed_reloads == 1
    assert (await post(client, issuer.mint(), call("search"))).status == 200
    assert (await post(client, issuer.mint(), call("admin_reset"))).status == 403


# -- Z3: denials --------------------------------------------------------------------------------------------


async def test_z3_denial_is_403_with_jsonrpc_error_carrying_the_id(gateway, issuer, audit_lines):
    response = await post(gateway, issuer.mint(), call("drop_table", rpc_id="req-7", database="prod"))
    assert response.status == 403
    body = await response.json()
    assert body["id"] == "req-7"
    assert body["error"]["message"] == "Forbidden"
    assert "WWW-Authenticate" not in response.headers
    [event] = [e for e in audit_lines() if e["outcome"] == "deny"]
    assert event["policies"] == ["no-prod-drops"]


# -- Z4: list filtering ----------------------------------------------------------------------------------------


async def test_z4_denied_tool_absent_from_json_list_and_refused_when_called(gateway, issuer):
    token = issuer.mint()
    body = await (await post(gateway, token, rpc("tools/list"))).json()
    assert [t["name"] for t in body["result"]["tools"]] == ["search"]
    assert body["result"]["nextCursor"] == "page-2"
    assert (await post(gateway, token, call("drop_table"))).status == 403


async def test_z4_list_differs_by_user(gateway, issuer):
    body = await (await post(gateway, issuer.mint(groups=["admins"]), rpc("tools/list"))).json()
    assert [t["name"] for t in body["result"]["tools"]] == ["search", "drop_table", "admin_reset"]


async def test_z4_denied_tool_absent_from_sse_list_and_bad_frame_dropped(gateway, issuer, upstream):
    upstream.behaviour = answer_tools_list_sse
    response = await post(gateway, issuer.mint(), rpc("tools/list", rpc_id=3), Accept="application/json, text/event-stream")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = await response.text()
    events = [block for block in text.split("\n\n") if block.strip()]
    assert len(events) == 2  # the notification and the filtered result; the unparsable frame is gone
    assert "not json" not in text
    result = json.loads(events[1].split("data: ", 1)[1])
    assert [t["name"] for t in result["result"]["tools"]] == ["search"]
    assert result["result"]["nextCursor"] == "page-2"
    assert "id: 9" in events[1]


async def test_z4_unparsable_json_list_body_fails_closed(gateway, issuer, upstream):
    async def broken(request, received):
        return web.Response(body=b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [', content_type="application/json")

    upstream.behaviour = broken
    response = await post(gateway, issuer.mint(), rpc("tools/list"))
    assert response.status == 502
    assert "drop_table" not in await response.text()


async def test_z4_listing_decisions_are_cached(gateway, issuer):
    token = issuer.mint()
    authorizer = gateway.gateway.authorizer
    calls = 0
    original = authorizer.evaluate_all

    def counting(requests):
        nonlocal calls
        calls += len(requests)
        return original(requests)

    authorizer.evaluate_all = counting
    for _ in range(3):
        await post(gateway, token, rpc("tools/list"))
    assert calls == 3 + 3  # three tools/list decisions, three item decisions once


# -- Z5: message parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}', "text/plain"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"', "application/json"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "name": "drop_table"}}', "application/json"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"a": 1, "a": 2}, "name": "search"}}', "application/json"),
    (b'{"id": 1, "method": "tools/list"}', "application/json"),
    (b'[]', "application/json"),
    (b'"tools/list"', "application/json"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"x": NaN}}}', "application/json"),
])
async def test_z5_malformed_bodies_are_400_and_never_forwarded(gateway, issuer, upstream, body, content_type):
    response = await gateway.post("/mcp", data=body, headers={**bearer(issuer.mint()), "Content-Type": content_type})
    assert response.status == 400
    assert (await response.json())["jsonrpc"] == "2.0"
    assert upstream.received == []


async def test_z5_batch_with_one_denied_element_is_refused_whole(gateway, issuer, upstream):
    batch = [call("search", rpc_id=1), call("admin_reset", rpc_id=2)]
    response = await post(gateway, issuer.mint(), batch)
    assert response.status == 403
    assert (await response.json())["id"] == 2
    assert upstream.received == []


async def test_z5_batch_of_allowed_elements_passes(gateway, issuer, upstream):
    response = await post(gateway, issuer.mint(), [call("search", rpc_id=1), rpc("tools/list", rpc_id=2)])
    assert response.status == 200
    assert len(upstream.received) == 1


# -- Z6: routing headers -----------------------------------------------------------------------------------


async def test_z6_mcp_method_header_must_match_body(gateway, issuer, upstream):
    response = await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/list"})
    assert response.status == 400
    assert upstream.received == []


async def test_z6_mcp_name_header_must_match_body(gateway, issuer, upstream):
    response = await post(gateway, issuer.mint(), call("drop_table"), **{"Mcp-Method": "tools/call", "Mcp-Name": "search"})
    assert response.status == 400
    assert upstream.received == []


async def test_z6_mismatch_carries_header_mismatch_code(gateway, issuer):
    response = await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": "drop_table"})
    assert (await response.json())["error"]["code"] == -32020


async def test_z6_base64_encoded_name_is_decoded_before_comparing(gateway, issuer, upstream):
    import base64

    encoded = "=?base64?" + base64.b64encode("search".encode()).decode() + "?="
    assert (await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": encoded})).status == 200
    other = "=?base64?" + base64.b64encode("drop_table".encode()).decode() + "?="
    assert (await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": other})).status == 400
    assert (await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?!!?="})).status == 400


async def test_z6_matching_headers_pass_and_decision_comes_from_body(gateway, issuer):
    assert (await post(gateway, issuer.mint(), call("search"), **{"Mcp-Method": "tools/call", "Mcp-Name": "search"})).status == 200


# -- E4: audit -----------------------------------------------------------------------------------------------


async def test_e4_one_audit_event_per_decision_with_the_fields_and_no_token(gateway, issuer, audit_lines):
    token = issuer.mint(sub="alice", client_id="cli")
    await post(gateway, token, call("search"))
    await post(gateway, token, call("admin_reset"))
    await gateway.post("/mcp", json=call("search"), headers=bearer("garbage-token"))
    events = audit_lines()
    assert [(e["outcome"], e.get("target")) for e in events] == [("allow", "search"), ("deny", "admin_reset"), ("deny", None)]
    allow = events[0]
    for key in ("time", "request_id", "issuer", "subject", "client_id", "method", "target", "outcome", "reason", "policies", "latency_ms"):
        assert key in allow, key
    assert allow["subject"] == "alice" and allow["client_id"] == "cli" and allow["policies"] == ["search-for-all"]
    assert events[2]["reason"] == "not_a_jwt"
    assert token not in json.dumps(events) and "garbage-token" not in json.dumps(events)


# -- explain -------------------------------------------------------------------------------------------------


def test_z3_policy_explain_names_the_deciding_policies(tmp_path):
    root = Path(__file__).parent.parent / "policies"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
server: {{public_url: https://mcp.example.com/mcp}}
upstream: {{url: http://127.0.0.1:3000/mcp}}
resource: {{name: Demo MCP server}}
auth: {{issuers: [{{issuer: https://idp.example.com}}]}}
authorization: {{policies: {root}, schema: {root / 'mcp.cedarschema'}, entities: {root / 'entities.json'}}}
""")
    claims = tmp_path / "bob.json"
    claims.write_text(json.dumps({"iss": "https://idp.example.com", "sub": "bob", "scope": "mcp", "groups": ["engineering"]}))
    request = tmp_path / "call.json"
    request.write_text(json.dumps(call("delete_records", table="prod_orders")))
    command = [sys.executable, "-m", "gateway", "policy", "explain", "--config", str(config), "--token-claims", str(claims), "--request", str(request)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["result"] == "deny"
    [message] = report["messages"]
    assert set(message["deciding_policies"]) == {"no-deletes-in-production", "sensitive-tools-need-admin-scope"}
    assert message["request"]["context"]["arguments"] == {"table": "prod_orders"}
    request.write_text(json.dumps(call("echo", text="hi")))
    allowed = subprocess.run(command, capture_output=True, text=True)
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["messages"][0]["deciding_policies"] == ["everyone-may-call-read-only-tools"]


async def test_z4_reused_filtered_lists_never_cross_callers_or_policy_versions(gateway, issuer, tmp_path):
    async def names(token):
        body = await (await post(gateway, token, rpc("tools/list"))).json()
        return [t["name"] for t in body["result"]["tools"]]

    user, admin = issuer.mint(sub="u"), issuer.mint(sub="a", groups=["admins"])
    for _ in range(2):  # interleaved, so the second round is served from the filtered-answer cache
        assert await names(user) == ["search"]
        assert await names(admin) == ["search", "drop_table", "admin_reset"]
    store = gateway.gateway.policies
    policy_file = next(store.config.policies.glob("*.cedar"))
    policy_file.write_text(POLICIES + '\npermit (principal, action == Action::"tools/call", resource == Tool::"drop_table");\n')
    os.utime(policy_file, ns=(1, 10**18))
    assert store.reload_if_changed()
    assert await names(user) == ["search", "drop_table"]
