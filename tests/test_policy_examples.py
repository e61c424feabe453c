"""The example policy sets in policies/examples (Z1-Z4): each loads and validates, and decides as its README says.

Every folder under policies/examples is a complete policy set. It is validated against its own
``mcp.cedarschema`` when it ships one (a copy of the shipped schema, extended), else against
policies/mcp.cedarschema. Decisions are made exactly as the gateway makes them: claims → Principal,
POST body → Message, Authorizer.decide (and Authorizer.item_check for list filtering).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cedarpy
import pytest

from gateway.auth.principal import principal_from_claims
from gateway.authz.cedar import Authorizer, Decision, PolicyLoadError, PolicyStore, load_policies, policy_files
from gateway.config import AuthorizationConfig
from gateway.mcp.jsonrpc import parse_body

POLICIES = Path(__file__).parent.parent / "policies"
EXAMPLES = POLICIES / "examples"
SHIPPED_SCHEMA = POLICIES / "mcp.cedarschema"
TESTED = {
    "read-only-for-everyone",
    "admin-group",
    "per-tool-allow-lists",
    "argument-conditions",
    "by-client",
    "by-scope",
    "tool-annotations",  # decisions: tests/test_policy_authoring.py
    "action-groups",  # decisions: tests/test_policy_authoring.py
}


def example_config(name: str) -> AuthorizationConfig:
    folder = EXAMPLES / name
    own_schema = folder / "mcp.cedarschema"
    entities = folder / "entities.json"
    return AuthorizationConfig(
        policies=folder,
        schema=own_schema if own_schema.is_file() else SHIPPED_SCHEMA,
        entities=entities if entities.is_file() else None,
    )


def authorizer(name: str) -> Authorizer:
    config = example_config(name)
    return Authorizer(PolicyStore(config), config, server_name="mcp")


def claims(sub: str = "alice", **extra) -> dict:
    return {"iss": "https://idp.example.com", "sub": sub, "aud": "https://mcp.example.com/mcp", "exp": 2_000_000_000, **extra}


def decide(name: str, token_claims: dict, body: dict) -> Decision:
    principal = principal_from_claims(token_claims, token_type="jwt")
    [message] = parse_body(json.dumps(body).encode(), "application/json").messages
    return authorizer(name).decide(principal, message)


def call(tool: str, **arguments) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def rpc(method: str, **params) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def listed(name: str, token_claims: dict, tools: list[str]) -> list[str]:
    """What a tools/list answer naming ``tools`` keeps for this caller (Z4)."""
    allowed = authorizer(name).item_check(principal_from_claims(token_claims, token_type="jwt"))
    return [tool for tool in tools if allowed("tools/list", tool)]


def assert_validates(name: str) -> None:
    loaded = load_policies(example_config(name))
    assert loaded.policy_count >= 2


# -- Z2: every example is complete and validates -------------------------------------------------------------


def test_z2_every_example_folder_is_tested():
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert folders == TESTED


def test_z2_example_read_only_for_everyone_validates_against_its_schema():
    assert_validates("read-only-for-everyone")


def test_z2_example_admin_group_validates_against_its_schema():
    assert_validates("admin-group")


def test_z2_example_per_tool_allow_lists_validates_against_its_schema():
    assert_validates("per-tool-allow-lists")


def test_z2_example_argument_conditions_validates_against_its_schema():
    assert (EXAMPLES / "argument-conditions" / "mcp.cedarschema").is_file()  # declares the arguments it reads
    assert_validates("argument-conditions")


def test_z2_example_argument_conditions_schema_type_checks_its_arguments(tmp_path):
    # `has` on an argument the schema does not declare is accepted, and the rest of the `&&` goes unchecked.
    # The example's own schema declares its arguments, so a type mistake is refused at load.
    (tmp_path / "typo.cedar").write_text(
        'permit (principal, action == Action::"tools/call", resource == Tool::"run_query")\n'
        'when { context.arguments has limit && context.arguments.limit like "1*" };\n')
    load_policies(AuthorizationConfig(policies=tmp_path, schema=SHIPPED_SCHEMA))
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(AuthorizationConfig(policies=tmp_path, schema=EXAMPLES / "argument-conditions" / "mcp.cedarschema"))
    assert "Long" in str(caught.value)


def test_z2_example_by_client_validates_against_its_schema():
    assert_validates("by-client")


def test_z2_example_by_scope_validates_against_its_schema():
    assert_validates("by-scope")


def test_z2_example_schemas_extend_the_shipped_schema():
    # An example's own schema is the shipped one plus additions: the shipped policies still validate with it.
    for schema in EXAMPLES.glob("*/mcp.cedarschema"):
        load_policies(AuthorizationConfig(policies=POLICIES, schema=schema, entities=POLICIES / "entities.json"))


def test_z2_validate_command_accepts_every_example(tmp_path):
    for name in sorted(TESTED):
        config = example_config(name)
        entities = f", entities: {config.entities}" if config.entities else ""
        path = tmp_path / f"example-{name}.yaml"
        path.write_text(f"""
server: {{public_url: https://mcp.example.com/mcp}}
upstream: {{url: http://127.0.0.1:3000/mcp}}
auth: {{issuers: [{{issuer: https://idp.example.com}}]}}
authorization: {{policies: {config.policies}, schema: {config.schema}{entities}}}
""")
        result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "validated against the schema" in result.stdout


def test_z3_every_example_policy_has_a_unique_id():
    # @id is what audit events and `policy explain` show; without it they show file:line.
    for name in sorted(TESTED):
        ids = []
        for path in policy_files(example_config(name)):
            document = json.loads(cedarpy.policies_to_json_str(path.read_text()))
            for policy in document["staticPolicies"].values():
                assert "id" in policy.get("annotations", {}), f"{path}: a policy without @id"
                ids.append(policy["annotations"]["id"])
        assert len(ids) == len(set(ids)), f"{name}: duplicate @id"


def test_z2_readme_cedar_blocks_parse():
    text = (POLICIES / "README.md").read_text()
    blocks = re.findall(r"```cedar\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        cedarpy.PolicySet.from_str(block)


# -- read-only-for-everyone ------------------------------------------------------------------------------------


def test_z1_example_read_only_for_everyone_allows_read_only_tools():
    decision = decide("read-only-for-everyone", claims(), call("search", q="cedar"))
    assert decision.allowed and decision.policies == ("everyone-may-call-read-only-tools",)


def test_z1_example_read_only_for_everyone_denies_write_and_unknown_tools():
    assert decide("read-only-for-everyone", claims(groups=["admins"]), call("create_ticket")).reason == "no_policy_permits"
    assert not decide("read-only-for-everyone", claims(), call("not_in_entities_json")).allowed


def test_z1_example_read_only_for_everyone_allows_prompts_and_resources():
    assert decide("read-only-for-everyone", claims(), rpc("prompts/get", name="summarize")).allowed
    assert decide("read-only-for-everyone", claims(), rpc("resources/read", uri="file:///README.md")).allowed
    assert not decide("read-only-for-everyone", claims(), rpc("logging/setLevel", level="debug")).allowed


# -- admin-group -----------------------------------------------------------------------------------------------


def test_z1_example_admin_group_admins_may_do_anything():
    decision = decide("admin-group", claims(groups=["admins"]), call("delete_records", table="x"))
    assert decision.allowed and decision.policies == ("admins-may-do-anything",)
    assert decide("admin-group", claims(roles=["admins"]), rpc("logging/setLevel", level="debug")).allowed


def test_z1_example_admin_group_nested_group_from_entities_json():
    # entities.json puts Group::"platform-team" in Group::"admins".
    assert decide("admin-group", claims(groups=["platform-team"]), call("delete_records")).allowed


def test_z1_example_admin_group_others_only_list():
    assert decide("admin-group", claims(groups=["engineering"]), rpc("tools/list")).allowed
    assert decide("admin-group", claims(groups=["engineering"]), call("search")).reason == "no_policy_permits"


def test_z4_example_admin_group_others_see_the_catalogue():
    assert listed("admin-group", claims(groups=["engineering"]), ["search", "delete_records"]) == ["search", "delete_records"]


# -- per-tool-allow-lists --------------------------------------------------------------------------------------


def test_z1_example_per_tool_allow_lists_engineering():
    engineer = claims(groups=["engineering"])
    assert decide("per-tool-allow-lists", engineer, call("run_query", sql="select 1")).policies == ("engineering-tools",)
    assert not decide("per-tool-allow-lists", engineer, call("create_ticket")).allowed


def test_z1_example_per_tool_allow_lists_support():
    agent = claims("sam", groups=["support"])
    assert decide("per-tool-allow-lists", agent, call("create_ticket")).policies == ("support-tools",)
    assert not decide("per-tool-allow-lists", agent, call("run_query")).allowed
    assert decide("per-tool-allow-lists", agent, rpc("prompts/get", name="draft_reply")).allowed


def test_z4_example_per_tool_allow_lists_lists_differ_by_group():
    tools = ["search", "run_query", "create_ticket", "delete_records"]
    assert listed("per-tool-allow-lists", claims(groups=["engineering"]), tools) == ["search", "run_query"]
    assert listed("per-tool-allow-lists", claims(groups=["support"]), tools) == ["search", "create_ticket"]
    assert listed("per-tool-allow-lists", claims(groups=["support", "engineering"]), tools) == tools[:3]
    assert listed("per-tool-allow-lists", claims(), tools) == []


# -- argument-conditions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "allowed"), [
    ({"database": "analytics_web", "limit": 100}, True),
    ({"database": "prod_main", "limit": 100}, False),   # like "analytics_*"
    ({"database": "analytics_web", "limit": 5000}, False),
    ({"database": "analytics_web"}, False),             # no limit: `has` is false
    ({"database": "analytics_web", "limit": 100.0}, True),  # a whole-number float is the Long 100
    ({"database": "analytics_web", "limit": 100.5}, False),  # a fraction arrives as a String: evaluation error, denied
])
def test_z1_example_argument_conditions_strings_and_integers(arguments, allowed):
    assert decide("argument-conditions", claims(), call("run_query", **arguments)).allowed is allowed


def test_z1_example_argument_conditions_float_is_a_policy_error():
    decision = decide("argument-conditions", claims(), call("run_query", database="analytics_web", limit=100.5))
    assert decision.reason == "policy_error" and decision.errors


def test_z1_example_argument_conditions_booleans():
    assert decide("argument-conditions", claims(), call("transfer_funds", amount=50_000, dry_run=True)).allowed
    assert not decide("argument-conditions", claims(), call("transfer_funds", amount=50_000, dry_run=False)).allowed
    assert decide("argument-conditions", claims(), call("transfer_funds", amount=500)).allowed


def test_z1_example_argument_conditions_forbid_with_unless():
    dba = claims("dana", groups=["dba"])
    assert decide("argument-conditions", dba, call("delete_records", table="dev_orders")).allowed
    denied = decide("argument-conditions", dba, call("delete_records", table="prod_orders"))
    assert denied.reason == "denied_by_policy" and denied.policies == ("deletes-only-outside-production",)
    assert not decide("argument-conditions", dba, call("delete_records")).allowed  # no table: refused too


def test_z4_example_argument_conditions_tools_stay_listed():
    tools = ["run_query", "transfer_funds", "delete_records", "other"]
    assert listed("argument-conditions", claims(), tools) == ["run_query", "transfer_funds"]
    assert listed("argument-conditions", claims(groups=["dba"]), tools) == tools[:3]


# -- by-client -------------------------------------------------------------------------------------------------


def test_z1_example_by_client_write_tools_only_from_approved_clients():
    assert decide("by-client", claims(client_id="ops-console"), call("deploy")).allowed
    denied = decide("by-client", claims(client_id="chat-app"), call("deploy"))
    assert denied.reason == "denied_by_policy" and denied.policies == ("write-tools-only-from-approved-clients",)
    assert decide("by-client", claims(azp="ci-deployer"), call("restart_service")).allowed  # azp when no client_id


def test_z1_example_by_client_read_only_tools_from_any_client():
    assert decide("by-client", claims(), call("search")).allowed  # no client_id at all: ""
    assert not decide("by-client", claims(), call("tool_not_in_entities_json")).allowed  # unknown counts as write


# -- by-scope --------------------------------------------------------------------------------------------------


def test_z1_example_by_scope_read_scope_reads():
    reader = claims(scope="mcp.read")
    assert decide("by-scope", reader, call("search")).policies == ("mcp-read-may-call-read-only-tools",)
    assert not decide("by-scope", reader, call("create_ticket")).allowed
    assert not decide("by-scope", claims(), rpc("tools/list")).allowed  # no scope, no list


def test_z1_example_by_scope_write_scope_writes_and_sensitive_needs_admin():
    writer = claims(scp=["mcp.read", "mcp.write"])
    assert decide("by-scope", writer, call("create_ticket")).allowed
    assert decide("by-scope", writer, call("delete_records")).policies == ("sensitive-tools-need-write-and-admin",)
    assert decide("by-scope", claims(scope="mcp.write mcp.admin"), call("delete_records")).allowed


@pytest.mark.parametrize("name", sorted(TESTED))
def test_r4_a_batch_decided_in_one_cedar_call_equals_its_messages_decided_one_by_one(name):
    """Batches are decided with one is_authorized_batch call; the decisions must be those of one by one."""
    import random

    rng = random.Random(name)
    tools = ["search", "run_query", "create_ticket", "delete_records", "transfer_funds", "admin_reset", "other"]
    arguments = [{}, {"table": "prod_orders"}, {"table": "dev"}, {"database": "analytics_x", "limit": 10},
                 {"amount": 50}, {"dry_run": True}, {"confirm": 1.0}]
    people = [claims(), claims("bob", groups=["admins"]), claims("carol", groups=["dba"], scope="mcp.write mcp.admin"),
              claims("dave", client_id="ci-bot", scope="mcp.read")]
    for token_claims in people:
        principal = principal_from_claims(token_claims, token_type="jwt")
        messages = []
        for i in range(30):
            body = call(rng.choice(tools), **rng.choice(arguments)) if i % 5 else rpc(rng.choice(["tools/list", "prompts/get", "resources/read"]), name="p", uri="demo://x")
            body["id"] = i
            [message] = parse_body(json.dumps(body).encode(), "application/json").messages
            messages.append(message)
        together = authorizer(name).decide_all(principal, messages)
        one_by_one = [authorizer(name).decide(principal, message) for message in messages]
        assert [(d.allowed, d.reason, set(d.policies)) for d in together] == [(d.allowed, d.reason, set(d.policies)) for d in one_by_one]


def test_r4_a_batch_reading_another_entitys_data_is_decided_as_single_calls_would(tmp_path):
    """In one Cedar batch every request sees the union of their entities; a policy that reads an entity's data
    through a literal must not see Tool::"a" in the batch when it would not in a single call."""
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "p.cedar").write_text('permit (principal, action, resource);\n'
                                    'forbid (principal, action == Action::"tools/call", resource) when { Tool::"a" in Server::"mcp" };\n')
    config = AuthorizationConfig(policies=folder)
    authorizer = Authorizer(PolicyStore(config), config, server_name="mcp")
    principal = principal_from_claims(claims(), token_type="jwt")
    messages = [parse_body(json.dumps(call(tool)).encode(), "application/json").messages[0] for tool in ("a", "x")]
    together = [d.allowed for d in authorizer.decide_all(principal, messages)]
    alone = [Authorizer(PolicyStore(config), config, server_name="mcp").decide(principal, m).allowed for m in messages]
    assert together == alone
