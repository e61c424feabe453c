"""A1, A2, A3, A5 in process: the tool catalogue's learned attributes and pins, the pins file, Action
groups in batches and lists, candidate decisions, and ``policy explain`` showing what it learned.

The end-to-end proofs (a real ``serve`` process, FastMCP upstream) are in tests/test_policy_authoring.py;
these pin the edges that are slow or impossible to reach from outside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.auth.principal import principal_from_claims
from gateway.authz.cedar import Authorizer, PolicyLoadError, PolicyStore
from gateway.authz.pins import PinsError, PinStore, read_pins, write_pins
from gateway.config import AuthorizationConfig
from gateway.mcp.catalogue import MAX_TOOLS, ToolCatalogue, definition_digest, learned_attributes
from gateway.mcp.jsonrpc import Message

POLICIES = Path(__file__).parent.parent / "policies"
SCHEMA = POLICIES / "mcp.cedarschema"
ALICE = principal_from_claims({"iss": "https://idp.example.com", "sub": "alice", "scope": "mcp"}, token_type="jwt")
WEATHER = {"name": "weather", "title": "Weather", "description": "The forecast.",
           "inputSchema": {"type": "object", "properties": {"region": {"type": "string"}}},
           "annotations": {"readOnlyHint": True, "openWorldHint": True, "destructiveHint": "no"}}


def call(tool: str) -> Message:
    return Message(kind="request", method="tools/call", params={"name": tool, "arguments": {}})


def authorizer_for(tmp_path: Path, policies: str, **settings) -> Authorizer:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.cedar").write_text(policies)
    config = AuthorizationConfig(policies=folder, **settings)
    return Authorizer(PolicyStore(config), config, server_name="mcp")


# -- A1 ------------------------------------------------------------------------------------------------------

def test_A1_only_boolean_hints_and_a_string_title_are_learned():
    assert learned_attributes(WEATHER) == {"annotations": {"readOnlyHint": True, "openWorldHint": True}, "title": "Weather"}
    assert learned_attributes({"name": "x", "annotations": {"title": "From annotations", "readOnlyHint": 1}}) == \
        {"annotations": {}, "title": "From annotations"}
    assert learned_attributes({"name": "x", "annotations": ["readOnlyHint"], "title": 7}) == {"annotations": {}}


def test_A1_learned_attributes_reach_the_entity_only_when_a_policy_reads_them(tmp_path):
    reading = authorizer_for(tmp_path, 'permit (principal, action, resource) when { resource has title };')
    reading.catalogue.learn([WEATHER])
    [entity] = [e for e in reading.build(ALICE, call("weather")).entities if e["uid"]["type"] == "Tool"]
    assert entity["attrs"] == {"title": "Weather"}  # annotations are read by no policy: left off
    assert reading.decide(ALICE, call("weather")).allowed
    assert not reading.decide(ALICE, call("never-listed")).allowed


def test_A1_a_changed_annotation_changes_the_decision_cache_key(tmp_path):
    authorizer = authorizer_for(tmp_path, 'permit (principal, action, resource) when '
                                          '{ resource has annotations && resource.annotations has readOnlyHint && resource.annotations.readOnlyHint };')
    authorizer.catalogue.learn([WEATHER])
    first = authorizer.build(ALICE, call("weather")).key
    assert authorizer.decide(ALICE, call("weather")).allowed
    authorizer.catalogue.learn([{**WEATHER, "annotations": {"readOnlyHint": False}}])
    assert authorizer.build(ALICE, call("weather")).key != first
    assert not authorizer.decide(ALICE, call("weather")).allowed
    listed = authorizer.item_check(ALICE).check_many("tools/list", ["weather"])
    assert listed == frozenset()


def test_A1_a_call_naming_a_listed_tool_in_another_spelling_is_refused():
    from gateway.mcp.jsonrpc import MalformedMessage

    catalogue = ToolCatalogue(max_tools=3)
    catalogue.check_call("Weather", {}, {})  # nothing listed yet: nothing to compare with
    catalogue.learn([WEATHER, {"name": "get_time"}, {"name": "status"}])
    for variant in ("Weather", "WEATHER", "w\u200beather", "GET-TIME", "\u017ftatus"):
        with pytest.raises(MalformedMessage):
            catalogue.check_call(variant, {}, {})
    catalogue.check_call("weather", {}, {})
    catalogue.check_call("forecast", {}, {})
    catalogue.learn([{"name": f"junk{i}"} for i in range(3)])  # both evicted: the index follows
    catalogue.check_call("Weather", {}, {})


def test_A1_the_catalogue_stays_bounded():
    catalogue = ToolCatalogue(max_tools=100)
    catalogue.learn([{"name": f"t{i}", "description": "x"} for i in range(250)])
    assert len(catalogue) == 100 and catalogue.attributes("t0") is None and catalogue.attributes("t249") is not None
    assert MAX_TOOLS == 10_000


# -- A2 ------------------------------------------------------------------------------------------------------

def test_A2_the_digest_is_of_the_canonical_definition_only():
    respelled = json.loads(json.dumps({**WEATHER, "title": "Other title", "_meta": {"x": 1}}, sort_keys=True))
    assert definition_digest(respelled) == definition_digest(WEATHER)  # key order, title, _meta: not the definition
    assert definition_digest({**WEATHER, "description": "The forecast!"}) != definition_digest(WEATHER)
    assert definition_digest(WEATHER).startswith("sha256:") and len(definition_digest(WEATHER)) == 71


def test_A2_another_spelling_of_a_definition_part_is_part_of_the_definition():
    assert definition_digest({**WEATHER, "Description": "evil"}) != definition_digest(WEATHER)
    assert definition_digest({**WEATHER, "input_schema": {}}) != definition_digest(WEATHER)
    catalogue = ToolCatalogue()
    catalogue.learn([WEATHER])
    [change] = catalogue.learn([{**WEATHER, "DESCRIPTION": "evil"}])
    assert change.parts == ("description",) and catalogue.is_changed("weather")


def test_A2_a_change_is_reported_once_and_stays_until_accepted(caplog):
    catalogue = ToolCatalogue()
    assert catalogue.learn([WEATHER]) == []
    assert catalogue.learn([json.loads(json.dumps(WEATHER))]) == []  # listed again, same definition
    changed = {**WEATHER, "inputSchema": {"type": "object", "properties": {"region": {"type": "string"}, "key": {}}}}
    [change] = catalogue.learn([changed])
    assert (change.tool, change.parts, change.changed) == ("weather", ("inputSchema",), True)
    assert change.accepted == definition_digest(WEATHER) and change.digest == definition_digest(changed)
    assert catalogue.is_changed("weather") and catalogue.changes_seen == 1
    assert catalogue.learn([changed]) == []  # no new change
    assert catalogue.learn([WEATHER]) == []  # the accepted one listed again (another session?): still changed
    assert catalogue.is_changed("weather") and catalogue.changes_seen == 1
    [accepted] = catalogue.set_pins({"weather": definition_digest(WEATHER)})  # an operator accepts
    assert not accepted.changed and not catalogue.is_changed("weather")
    assert "pins accept --tool 'weather=sha256:" in caplog.text


def test_A2_nan_in_a_schema_is_not_a_change_every_time():
    nan = {**WEATHER, "inputSchema": {"type": "object", "default": float("nan")}}
    catalogue = ToolCatalogue()
    catalogue.learn([nan])
    assert catalogue.learn([json.loads(json.dumps(nan))]) == []
    assert not catalogue.is_changed("weather")


def test_A2_a_pin_from_the_file_judges_the_first_listing_and_a_reload_accepts():
    catalogue = ToolCatalogue()
    catalogue.set_pins({"weather": definition_digest({**WEATHER, "description": "reviewed"})})
    [change] = catalogue.learn([WEATHER])
    assert change.changed and catalogue.is_changed("weather")
    [accepted] = catalogue.set_pins({"weather": definition_digest(WEATHER)})
    assert not accepted.changed and not catalogue.is_changed("weather")


def test_A2_flooding_the_catalogue_does_not_reset_a_pin():
    catalogue = ToolCatalogue(max_tools=10)
    catalogue.learn([WEATHER])
    catalogue.learn([{"name": f"junk{i}"} for i in range(20)])  # weather is forgotten...
    [change] = catalogue.learn([{**WEATHER, "description": "now asks for secrets"}])  # ...its pin is not
    assert change.changed and catalogue.is_changed("weather")


def test_A2_accepting_another_tool_does_not_clear_a_change():
    catalogue = ToolCatalogue()
    catalogue.set_pins({"weather": definition_digest(WEATHER)})
    catalogue.learn([WEATHER])
    catalogue.learn([{**WEATHER, "description": "now asks for secrets"}])
    catalogue.learn([WEATHER])  # the pinned one listed again: still changed
    assert catalogue.set_pins({"weather": definition_digest(WEATHER), "echo": definition_digest({"name": "echo"})}) == []
    assert catalogue.is_changed("weather")


def test_A2_a_changed_tool_evicted_by_a_flood_stays_changed():
    catalogue = ToolCatalogue(max_tools=10)
    catalogue.learn([WEATHER])
    catalogue.learn([{**WEATHER, "description": "now asks for secrets"}])
    catalogue.learn([{"name": f"junk{i}"} for i in range(20)])
    assert catalogue.attributes("weather") is None and catalogue.is_changed("weather")
    catalogue.learn([WEATHER])  # back, with the accepted definition: still changed until accepted
    assert catalogue.is_changed("weather")


def test_A2_once_forgotten_pins_are_dropped_a_first_sight_counts_as_changed():
    catalogue = ToolCatalogue(max_tools=10, max_forgotten=20)
    catalogue.learn([WEATHER])
    catalogue.learn([{"name": f"junk{i}"} for i in range(30)])  # 31 tools for 10 + 20 places
    assert catalogue.forgot_pins
    catalogue.learn([{**WEATHER, "description": "now asks for secrets"}])
    assert catalogue.is_changed("weather")
    [accepted] = catalogue.set_pins({"weather": definition_digest({**WEATHER, "description": "now asks for secrets"})})
    assert not accepted.changed and not catalogue.is_changed("weather")


def test_A2_a_definition_too_deep_to_compare_fails_closed():
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    catalogue = ToolCatalogue()
    catalogue.learn([{**WEATHER}])
    catalogue.learn([{**WEATHER, "inputSchema": deep}])
    assert catalogue.is_changed("weather")


def test_A2_deny_refuses_a_changed_tool_whatever_the_policies_say(tmp_path):
    authorizer = authorizer_for(tmp_path, "permit (principal, action, resource);", tool_changes="deny")
    authorizer.catalogue.learn([WEATHER])
    assert authorizer.decide(ALICE, call("weather")).allowed
    authorizer.catalogue.learn([{**WEATHER, "description": "changed"}])
    decision = authorizer.decide(ALICE, call("weather"))
    assert (decision.allowed, decision.reason) == (False, "tool_definition_changed")
    assert authorizer.item_check(ALICE).check_many("tools/list", ["weather"]) == {"weather"}  # still listed


def test_A2_the_pins_file_is_checked_written_atomically_and_a_broken_edit_refused(tmp_path):
    path = tmp_path / "pins.json"
    assert read_pins(path) == {}
    write_pins(path, {"weather": definition_digest(WEATHER)})
    store = PinStore(path)
    assert store.pins == {"weather": definition_digest(WEATHER)}
    for broken in ('{"tools": {"weather": "sha256:12"}}', '{"pins": {}}', "[", '{"tools": []}'):
        with pytest.raises(PinsError, match=str(path)):
            path.write_text(broken)
            read_pins(path)
    assert store.reload_if_changed() is None and store.pins == {"weather": definition_digest(WEATHER)}
    write_pins(path, {})
    assert store.reload_if_changed() == {}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    path.write_text('{"tools": {"x": 1}}')
    with pytest.raises(PolicyLoadError):
        authorizer_for(tmp_path, "permit (principal, action, resource);", tool_pins=path)


# -- A3 ------------------------------------------------------------------------------------------------------

def test_A3_the_groups_without_a_schema_are_the_shipped_schemas():
    """tasks/update was in the schema's tasks group but not in the one used without a schema, so a
    ``forbid ... action in Action::"tasks"`` let it through when authorization.schema was not set."""
    from gateway.authz.cedar import ACTION_GROUPS, action_entities
    import cedarpy

    def parents(schema):
        return {e["uid"]["id"]: sorted(p["id"] for p in e["parents"]) for e in action_entities(schema, [])}

    shipped = parents(cedarpy.Schema.from_str(SCHEMA.read_text()))
    assert parents(None) == {name: groups for name, groups in shipped.items() if groups or name in ACTION_GROUPS}


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["shipped-schema", "no-schema"])
def test_A3_groups_hold_in_single_decisions_batches_and_lists(tmp_path, schema):
    authorizer = authorizer_for(tmp_path, 'permit (principal, action in Action::"read", resource);\n'
                                          'permit (principal, action in Action::"tasks", resource);\n', schema=schema)
    methods = ["tools/list", "prompts/get", "resources/read", "tasks/get", "tools/call", "resources/subscribe", "logging/setLevel"]
    messages = [Message(kind="request", method=m, params={"name": "p", "uri": "demo://x"}) for m in methods]
    expected = [True, True, True, True, False, False, False]
    assert [d.allowed for d in authorizer.decide_all(ALICE, messages)] == expected  # one Cedar call
    assert [authorizer.decide(ALICE, m).allowed for m in messages] == expected
    assert authorizer.item_check(ALICE).check_many("prompts/list", ["a", "b"]) == {"a", "b"}
    assert authorizer.item_check(ALICE).check_many("tools/list", ["a", "b"]) == frozenset()


def test_A3_a_schema_without_the_group_refuses_the_policy(tmp_path):
    old_schema = tmp_path / "old.cedarschema"
    old_schema.write_text(SCHEMA.read_text().replace('action "read", "subscribe", "housekeeping", "tasks";', "")
                          .replace(' in ["read"]', "").replace(' in ["subscribe"]', "").replace(' in ["housekeeping"]', "")
                          .replace(' in ["tasks"]', ""))
    with pytest.raises(PolicyLoadError, match="read"):
        authorizer_for(tmp_path, 'permit (principal, action in Action::"read", resource);', schema=old_schema)


# -- A5 ------------------------------------------------------------------------------------------------------

def test_A5_candidate_decisions_ride_along_and_disagreements_are_counted_by_bounded_method(tmp_path):
    candidates = tmp_path / "next"
    candidates.mkdir()
    (candidates / "c.cedar").write_text('@id("only-lists")\npermit (principal, action == Action::"tools/list", resource);\n')
    authorizer = authorizer_for(tmp_path, "permit (principal, action, resource);", candidate_policies=candidates)
    decision = authorizer.decide(ALICE, call("weather"))
    assert decision.allowed and decision.candidate is not None and not decision.candidate.allowed
    assert decision.audit_fields()["candidate_decision"] == "deny"
    authorizer.decide(ALICE, Message(kind="request", method="made/up", params={}))
    reports = []
    shown = authorizer.item_check(ALICE, report=lambda *r: reports.append(r)).check_many("tools/list", ["a", "b"])
    assert shown == {"a", "b"} and reports == [("tools/list", ["a", "b"], [])]
    assert authorizer.disagreements == {"tools/call": 1, "other": 1, "tools/list": 2}


def test_A5_without_candidates_nothing_is_evaluated_beside(tmp_path):
    authorizer = authorizer_for(tmp_path, "permit (principal, action, resource);")
    assert authorizer.candidate is None and authorizer.decide(ALICE, call("x")).candidate is None
    assert authorizer.decide(ALICE, call("x")).audit_fields() == {}


# -- explain -------------------------------------------------------------------------------------------------

def test_A1_policy_explain_shows_the_learned_annotations_it_used(tmp_path):
    claims, request, tools = tmp_path / "claims.json", tmp_path / "call.json", tmp_path / "tools.json"
    claims.write_text(json.dumps({"iss": "https://idp.example.com", "sub": "alice", "scope": "mcp"}))
    request.write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "weather", "arguments": {}}}))
    tools.write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [WEATHER]}}))
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({"server": {"public_url": "https://mcp.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:9/mcp"},
                                  "auth": {"issuers": [{"issuer": "https://idp.example.com"}]},
                                  "authorization": {"policies": str(POLICIES / "examples" / "tool-annotations"), "schema": str(SCHEMA),
                                                    "entities": str(POLICIES / "examples" / "tool-annotations" / "entities.json")}}))
    explain = [sys.executable, "-m", "gateway", "policy", "explain", "--config", str(config), "--token-claims", str(claims),
               "--request", str(request)]
    learned = subprocess.run([*explain, "--tools-list", str(tools)], capture_output=True, text=True)
    [message] = json.loads(learned.stdout)["messages"]
    assert message["learned_tool_attributes"] == {"listed": True, "annotations": {"readOnlyHint": True, "openWorldHint": True},
                                                  "title": "Weather", "read_by_policies": ["annotations"], "definition_changed": False}
    assert message["deciding_policies"] == ["open-world-tools-need-a-scope"] and learned.returncode == 3
    [tool] = [e for e in message["entities"] if e["uid"]["type"] == "Tool"]
    assert tool["attrs"] == {"annotations": {"readOnlyHint": True, "openWorldHint": True}}
    never = json.loads(subprocess.run(explain, capture_output=True, text=True).stdout)["messages"][0]
    assert never["learned_tool_attributes"]["listed"] is False


# -- configuration -------------------------------------------------------------------------------------------

def test_A2_A5_keys_are_checked_and_validate_reports_a_broken_candidate_set(tmp_path):
    from gateway.config import ConfigError, parse_config

    base = {"server": {"public_url": "https://mcp.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:9/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}}
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "authorization": {"policies": str(POLICIES), "tool_changes": "block",
                                                "candidate_policies": str(tmp_path / "missing"),
                                                "tool_pins": str(tmp_path / "no-such-folder" / "pins.json")}}, source="g.yaml")
    problems = "\n".join(caught.value.problems)
    for key in ("authorization.tool_changes", "authorization.candidate_policies", "authorization.tool_pins"):
        assert f"g.yaml: {key}" in problems
    config = parse_config({**base, "authorization": {"policies": str(POLICIES)}})
    assert (config.authorization.tool_changes, config.authorization.candidate_policies, config.authorization.tool_pins) == ("warn", None, None)

    candidates = tmp_path / "next"
    candidates.mkdir()
    (candidates / "bad.cedar").write_text("permit (principal, action, resource)\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({**base, "authorization": {"policies": str(POLICIES), "candidate_policies": str(candidates)}}))
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 1 and f"authorization.candidate_policies: {candidates / 'bad.cedar'}:1" in result.stderr
