"""P2, Z4: grouped list decisions (gateway.authz.listing_decisions) equal per-item decisions.

The oracle is the per-item path as it was: ``Authorizer.decide`` of the call each listed item stands for
(``tools/call`` on ``Tool::"<name>"``, empty arguments, ``context.listing``), on a fresh authorizer, one
Cedar call per item. It is compared with what the gateway keeps: a ``ListFilter`` over a list answer (one
``check_many`` per list: named items alone, alike items as one group, one Cedar call) and with the
per-item seam ``item_check(...)(method, name)``, which is backed by the same groups.

The corpus is built to break the grouping: literal sets, ``==`` and ``!=`` literals, ``contains``, literals
reached through ``if`` and records, static parents (``in``, transitive, ``is ... in``), static attributes,
tags, entity references inside static attributes (of the principal, of a group, of the server), claim-gated
literals, ``context.listing`` and ``context.token_type``, forbid-with-unless, ``like`` (on strings, and on
an entity: a type error), policies that error for some items only, literals of another type or namespace
with the same id, a policy reading a *literal's* data (``Tool::"lit" has sensitive``: a batch of requests
evaluated against the union of their entities would see it, the per-item call does not), linked templates,
action groups, learned tool annotations, and the shipped policies and examples. Lists hold the literal ids,
look-alikes (case, spaces, NUL, the ``Type::"id"`` spelling, other types' ids), Unicode (NFC and NFD, long
s, RTL, emoji), duplicates, and thousands of unnamed tools.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import unicodedata
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from gateway.auth.principal import Principal, principal_from_claims
from gateway.authz import listing_decisions
from gateway.authz.cedar import LIST_CHECKS, Authorizer, PolicyStore
from gateway.config import AuthorizationConfig
from gateway.mcp.jsonrpc import Message
from gateway.mcp.listing import ListFilter

POLICIES = Path(__file__).parent.parent / "policies"
EXAMPLES = POLICIES / "examples"


def ref(kind: str, ident: str) -> dict[str, Any]:
    return {"__entity": {"type": kind, "id": ident}}


CORPUS: dict[str, tuple[str, list[dict[str, Any]] | None]] = {
    "literals": ("""
        @id("a literal set") permit (principal, action == Action::"tools/call", resource) when { resource in [Tool::"a", Tool::"b"] };
        @id("one literal") permit (principal, action == Action::"tools/call", resource == Tool::"c");
        permit (principal, action == Action::"tools/call", resource) when { [Tool::"d", Tool::"caf\\u{e9}"].contains(resource) };
        permit (principal, action == Action::"tools/call", resource)
          when { (if principal.claims has team then Tool::"ite" else Tool::"none") == resource };
        permit (principal, action == Action::"tools/call", resource) when { {k: Tool::"rec"}.k == resource };
        permit (principal, action == Action::"tools/call", resource) when { resource == NS::Tool::"e" };
        permit (principal, action == Action::"tools/call", resource)
          when { resource != Tool::"f" && principal.claims has team && principal.claims.team == "red" };
        permit (principal, action == Action::"tools/call", resource) when { resource in [Tool::"\\u{0}", Tool::"", Tool::"Tool::\\"a\\""] };
        permit (principal, action == Action::"prompts/get", resource == Prompt::"a");
        permit (principal, action == Action::"prompts/get", resource) when { resource in [Prompt::"p1", Prompt::"p2"] };
        permit (principal, action == Action::"resources/read", resource == Resource::"file:///a");
        permit (principal, action == Action::"resources/read", resource) when { resource in [Resource::"mem://{id}", Resource::"file:///b"] };
        forbid (principal, action == Action::"tools/call", resource) when { resource in [Tool::"b", Tool::"f"] && principal.claims has strict };
    """, None),
    "static": ("""
        permit (principal, action == Action::"tools/call", resource in ToolSet::"safe");
        permit (principal, action == Action::"tools/call", resource) when { resource has readOnly && resource.readOnly };
        @id("sensitive") forbid (principal, action == Action::"tools/call", resource)
          when { resource has sensitive && resource.sensitive } unless { principal.scopes.contains("admin") };
        permit (principal, action == Action::"tools/call", resource) when { principal has favourite && principal.favourite == resource };
        permit (principal in Group::"eng", action == Action::"tools/call", resource) when { Group::"eng".tools.contains(resource) };
        permit (principal, action == Action::"tools/call", resource in Tool::"parent");
        permit (principal, action == Action::"tools/call", resource is Tool in Group::"deep");
        forbid (principal, action == Action::"tools/call", resource) when { resource.hasTag("level") && resource.getTag("level") == "high" };
        permit (principal, action == Action::"tools/call", resource) when { resource has owner && resource.owner == principal };
        permit (principal, action == Action::"tools/call", resource) when { Server::"mcp".featured == resource };
        permit (principal, action == Action::"prompts/get", resource) when { resource has public && resource.public };
        permit (principal, action == Action::"resources/read", resource in Folder::"shared");
    """, [
        {"uid": {"type": "Tool", "id": "x"}, "attrs": {}, "parents": [{"type": "ToolSet", "id": "safe"}]},
        {"uid": {"type": "ToolSet", "id": "safe"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Tool", "id": "ro"}, "attrs": {"readOnly": True}, "parents": []},
        {"uid": {"type": "Tool", "id": "rw"}, "attrs": {"readOnly": False}, "parents": []},
        {"uid": {"type": "Tool", "id": "secret"}, "attrs": {"readOnly": True, "sensitive": True}, "parents": []},
        {"uid": {"type": "User", "id": "alice"}, "attrs": {"favourite": ref("Tool", "fav")}, "parents": []},
        {"uid": {"type": "Group", "id": "eng"}, "attrs": {"tools": [ref("Tool", "g1"), ref("Tool", "g2")]}, "parents": []},
        {"uid": {"type": "Tool", "id": "child"}, "attrs": {}, "parents": [{"type": "Tool", "id": "parent"}]},
        {"uid": {"type": "Tool", "id": "parent"}, "attrs": {}, "parents": [{"type": "Group", "id": "deep"}]},
        {"uid": {"type": "Group", "id": "deep"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Tool", "id": "tagged"}, "attrs": {"readOnly": True}, "parents": [], "tags": {"level": "high"}},
        {"uid": {"type": "Tool", "id": "mine"}, "attrs": {"owner": ref("User", "alice")}, "parents": []},
        {"uid": {"type": "Server", "id": "mcp"}, "attrs": {"featured": ref("Tool", "feat")}, "parents": []},
        {"uid": {"type": "Prompt", "id": "a"}, "attrs": {"public": True}, "parents": []},
        {"uid": {"type": "Resource", "id": "file:///b"}, "attrs": {}, "parents": [{"type": "Folder", "id": "shared"}]},
        {"uid": {"type": "Folder", "id": "shared"}, "attrs": {}, "parents": []},
    ]),
    # A policy reading a literal's data: only the literal's own request holds that entity (cedar.md builds
    # the resource's static entity per request), so a batch over the union of requests would differ.
    "literal-data": ("""
        permit (principal, action == Action::"tools/call", resource);
        forbid (principal, action == Action::"tools/call", resource) when { Tool::"lit" has sensitive };
        forbid (principal, action == Action::"tools/call", resource == Tool::"other") when { Tool::"lit" in Server::"mcp" };
        forbid (principal, action == Action::"tools/call", resource == Tool::"third") when { Tool::"lit".sensitive };
    """, [
        {"uid": {"type": "Tool", "id": "lit"}, "attrs": {"sensitive": True}, "parents": []},
        {"uid": {"type": "Tool", "id": "other"}, "attrs": {}, "parents": []},
    ]),
    "claims-and-context": ("""
        @id("claim-gated") permit (principal, action == Action::"tools/call", resource == Tool::"team_tool")
          when { principal.claims has team && principal.claims.team == "blue" };
        @id("browse") permit (principal, action == Action::"tools/call", resource) when { context.listing && principal.scopes.contains("browse") };
        @id("danger") forbid (principal, action == Action::"tools/call", resource == Tool::"danger") unless { principal in Group::"admins" };
        forbid (principal, action == Action::"tools/call", resource)
          when { context.token_type == "introspected" && !(resource in [Tool::"a", Tool::"team_tool"]) };
        permit (principal, action == Action::"tools/call", resource) when { principal.sub like "*ob" && context.arguments == {} };
        forbid (principal, action == Action::"tools/call", resource) when { context.arguments has x };
        forbid (principal, action, resource) unless { context.listing };
        permit (principal in Group::"admins", action, resource) when { context.method == "tools/call" };
        permit (principal, action == Action::"prompts/get", resource) when { context.listing && principal.claims has team };
    """, None),
    "errors-and-like": ("""
        permit (principal, action, resource);
        forbid (principal, action == Action::"tools/call", resource) when { principal.claims has strict && resource like "a*" };
        forbid (principal, action == Action::"tools/call", resource) when { resource == Tool::"needs_attr" && resource.missing };
        forbid (principal, action == Action::"tools/call", resource) when { principal.claims has deep && resource.name == "x" };
        forbid (principal, action == Action::"tools/call", resource) when { principal.sub like "c*" && resource in [Tool::"a*", Tool::"ab"] };
    """, None),
    "annotations": ("""
        permit (principal, action == Action::"tools/call", resource)
          when { resource has annotations && resource.annotations has readOnlyHint && resource.annotations.readOnlyHint };
        permit (principal, action == Action::"tools/call", resource) when { resource has title && resource.title like "Safe*" };
        permit (principal, action == Action::"tools/call", resource == Tool::"plain");
        forbid (principal, action == Action::"tools/call", resource)
          when { resource has annotations && resource.annotations has destructiveHint && resource.annotations.destructiveHint };
    """, None),
    "action-groups": ("""
        permit (principal, action in Action::"calls", resource) when { resource in [Tool::"a"] || principal.claims has team };
        forbid (principal, action in Action::"calls", resource == Tool::"b");
    """, [
        {"uid": {"type": "Action", "id": "tools/call"}, "attrs": {}, "parents": [{"type": "Action", "id": "calls"}]},
        {"uid": {"type": "Action", "id": "prompts/get"}, "attrs": {}, "parents": [{"type": "Action", "id": "calls"}]},
        {"uid": {"type": "Action", "id": "calls"}, "attrs": {}, "parents": []},
    ]),
    "default-deny": ('forbid (principal, action, resource) when { principal.claims has strict };', None),
    # Static entities that describe listed tools: grouped by their data unless something names them. Built
    # to catch an entity that is told apart by its id after all: a reference to itself (``resource.me ==
    # resource``), to another static tool whose data a policy reads through it (``resource.peer.level``),
    # a parent that is itself a static tool with parents of its own (a batch's union of entities would make
    # ``in`` transitive where the per-item request is not), twins with equal data, one named by a policy.
    "self-describing": ("""
        permit (principal, action == Action::"tools/call", resource) when { resource has level && resource.level == 1 };
        forbid (principal, action == Action::"tools/call", resource) when { resource has me && resource.me == resource };
        permit (principal, action == Action::"tools/call", resource)
          when { resource has peer && resource.peer has level && resource.peer.level == 2 };
        forbid (principal, action == Action::"tools/call", resource) when { resource in ToolSet::"closed" };
        forbid (principal, action == Action::"tools/call", resource == Tool::"twin_b") when { principal.claims has strict };
        permit (principal, action == Action::"prompts/get", resource) when { resource has level && resource.level == 1 };
    """, [
        {"uid": {"type": "Tool", "id": "s1"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Tool", "id": "s2"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Tool", "id": "s3"}, "attrs": {"level": 2}, "parents": []},
        {"uid": {"type": "Tool", "id": "me1"}, "attrs": {"level": 1, "me": ref("Tool", "me1")}, "parents": []},
        {"uid": {"type": "Tool", "id": "me2"}, "attrs": {"level": 1, "me": ref("Tool", "s1")}, "parents": []},
        {"uid": {"type": "Tool", "id": "peer1"}, "attrs": {"peer": ref("Tool", "s3")}, "parents": []},
        {"uid": {"type": "Tool", "id": "peer2"}, "attrs": {"peer": ref("Tool", "s1")}, "parents": []},
        {"uid": {"type": "Tool", "id": "hub"}, "attrs": {"level": 1}, "parents": [{"type": "ToolSet", "id": "closed"}]},
        {"uid": {"type": "Tool", "id": "spoke"}, "attrs": {"level": 1}, "parents": [{"type": "Tool", "id": "hub"}]},
        {"uid": {"type": "ToolSet", "id": "closed"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Tool", "id": "twin_a"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Tool", "id": "twin_b"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Prompt", "id": "s1"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Prompt", "id": "s3"}, "attrs": {"level": 2}, "parents": []},
    ]),
}

LITERAL_IDS = [
    "a", "b", "c", "d", "café", "ite", "none", "rec", "e", "f", "\x00", "", 'Tool::"a"', "x", "ro", "rw", "secret", "fav",
    "g1", "g2", "child", "parent", "tagged", "mine", "feat", "lit", "other", "third", "team_tool", "danger", "needs_attr",
    "ab", "a*", "plain", "p1", "p2", "file:///a", "file:///b", "mem://{id}", "safe", "eng", "deep", "admins", "mcp",
    "calls", "tools/call", "prompts/get", "alice", "s1", "s2", "s3", "me1", "me2", "peer1", "peer2", "hub", "spoke",
    "closed", "twin_a", "twin_b",
]
LOOKALIKES = [
    "A", "a ", " a", "a\x00", "Tool::a", "ToolSet::\"safe\"", 'Prompt::"a"', "NS::Tool::\"e\"", "jwt", "introspected",
    unicodedata.normalize("NFD", "café"), "ſearch", "search", "\u202eetirw", "🔧", "gateway-unnamed-", "Ab", "aa",
    "file:///A", "FILE:///a", "x" * 300, "a", "a", "c",  # duplicates are listed twice, and decided alike
]
MANY = [f"tool_{i}" for i in range(300)]


def claims(sub: str, **extra: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example.com", "sub": sub, "aud": "https://mcp.example.com/mcp", "exp": 2_000_000_000, **extra}


PRINCIPALS: dict[str, Principal] = {
    "alice": principal_from_claims(claims("alice", groups=["eng"], team="blue", scope="browse admin"), token_type="jwt"),
    "bob": principal_from_claims(claims("bob", groups=["admins"]), token_type="jwt"),
    "carol": principal_from_claims(claims("carol", team="red", strict=True, deep=True, roles=["deep"]), token_type="introspected"),
    "dave": principal_from_claims(claims("dave"), token_type="jwt"),
}

# list method -> (result key, item key)
LISTS = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}


def tool_item(index: int, name: str) -> dict[str, Any]:
    """A tool as an upstream lists it, with annotations and titles on some (the catalogue learns them)."""
    item: dict[str, Any] = {"name": name, "inputSchema": {"type": "object"}}
    if index % 3 == 0:
        item["annotations"] = {"readOnlyHint": index % 2 == 0, "destructiveHint": index % 5 == 0}
    if index % 4 == 0:
        item["title"] = "Safe tool" if index % 8 == 0 else "Tool"
    return item


def items_of(list_method: str, names: list[str]) -> list[dict[str, Any]]:
    _, item_key = LISTS[list_method]
    if list_method == "tools/list":
        return [tool_item(i, name) for i, name in enumerate(names)]
    return [{item_key: name} for name in names]


def store_for(tmp_path: Path, name: str, policies: str, entities: list[dict[str, Any]] | None) -> tuple[PolicyStore, AuthorizationConfig]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "policies.cedar").write_text(policies, encoding="utf-8")
    entities_file = None
    if entities is not None:
        entities_file = folder / "entities.json"
        entities_file.write_text(json.dumps(entities), encoding="utf-8")
    config = AuthorizationConfig(policies=folder, entities=entities_file)
    return PolicyStore(config), config


def oracle(store: PolicyStore, config: AuthorizationConfig, principal: Principal, list_method: str,
           items: list[dict[str, Any]]) -> list[str]:
    """One Authorizer.decide per item, on a fresh authorizer that learned the same tools."""
    authorizer = Authorizer(store, config, server_name="mcp")
    if list_method == "tools/list":
        authorizer.catalogue.learn(items)
    call_method, param = LIST_CHECKS[list_method]
    _, item_key = LISTS[list_method]
    kept = []
    for item in items:
        message = Message(kind="request", method=call_method, params={param: item[item_key]})
        if authorizer.decide(principal, message, listing=True).allowed:
            kept.append(item[item_key])
    return kept


def filtered(store: PolicyStore, config: AuthorizationConfig, principal: Principal, list_method: str,
             items: list[dict[str, Any]], authorizer: Authorizer | None = None) -> list[str]:
    """What the gateway's list filter keeps (the grouped path), on a fresh authorizer unless given one."""
    authorizer = authorizer or Authorizer(store, config, server_name="mcp")
    result_key, item_key = LISTS[list_method]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {result_key: items, "nextCursor": "n"}}).encode()
    list_filter = ListFilter(lambda scope: authorizer.item_check(principal, scope), strict=True,
                             observe_tools=authorizer.catalogue.learn)
    answer = json.loads(list_filter.filter_json_body(body))
    assert answer["result"]["nextCursor"] == "n"
    return [item[item_key] for item in answer["result"][result_key]]


def one_by_one(store: PolicyStore, config: AuthorizationConfig, principal: Principal, list_method: str,
               items: list[dict[str, Any]]) -> list[str]:
    """The per-item seam of item_check (still used by callers without a whole list), on a fresh authorizer."""
    authorizer = Authorizer(store, config, server_name="mcp")
    if list_method == "tools/list":
        authorizer.catalogue.learn(items)
    check = authorizer.item_check(principal)
    _, item_key = LISTS[list_method]
    return [item[item_key] for item in items if check(list_method, item[item_key])]


def assert_same(store: PolicyStore, config: AuthorizationConfig, principals: dict[str, Principal],
                names: list[str], methods: tuple[str, ...] = tuple(LISTS)) -> int:
    """Grouped == per-item for every principal and list method; returns how many items were allowed."""
    allowed = 0
    for who, principal in principals.items():
        for list_method in methods:
            items = items_of(list_method, names)
            expected = oracle(store, config, principal, list_method, items)
            assert filtered(store, config, principal, list_method, items) == expected, (who, list_method)
            assert one_by_one(store, config, principal, list_method, items) == expected, (who, list_method)
            allowed += len(expected)
    return allowed


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_grouped_equals_per_item_on_the_corpus(tmp_path, name):
    store, config = store_for(tmp_path, name, *CORPUS[name])
    listing_decisions.analysis_of(Authorizer(store, config, server_name="mcp"), store.current)  # analysable
    assert listing_decisions.analyse(store.current) is not None
    allowed = assert_same(store, config, PRINCIPALS, LITERAL_IDS + LOOKALIKES + MANY)
    total = len(PRINCIPALS) * len(LISTS) * len(LITERAL_IDS + LOOKALIKES + MANY)
    if name != "default-deny":
        assert 0 < allowed < total  # the corpus decides both ways, so equality means something


def test_the_corpus_exercises_what_it_claims(tmp_path):
    """Decisions the corpus relies on, spelled out: if these hold per item, the equality above is not vacuous."""
    cases = {
        ("literals", "alice"): {"a", "b", "c", "d", "café", "ite", "rec", "\x00", "", 'Tool::"a"'},
        # "parent": ``in`` is reflexive. "tagged": merge_entity keeps attrs and parents of entities.json, not
        # tags, so the tag policy never applies to a request-built entity (the same per item and grouped).
        ("static", "alice"): {"x", "ro", "fav", "g1", "g2", "child", "parent", "mine", "feat", "secret", "tagged"},
        ("static", "dave"): {"x", "ro", "child", "parent", "feat", "tagged"},
        ("literal-data", "dave"): None,  # checked below
        # me1 refers to itself (forbidden). spoke is in ToolSet::"closed" only through hub's parents, and
        # peer1's s3 has level 2, but neither hub nor s3 is in their requests (cedar.md: only the resource's
        # own static entity is merged per request): spoke is allowed, reading peer1's peer errors (denied).
        # A batch over the union of the requests' entities would decide both the other way.
        ("self-describing", "dave"): {"s1", "s2", "me2", "spoke", "twin_a", "twin_b"},
        ("self-describing", "carol"): {"s1", "s2", "me2", "spoke", "twin_a"},
    }
    for (name, who), expected in cases.items():
        store, config = store_for(tmp_path, f"{name}-{who}", *CORPUS[name])
        kept = set(oracle(store, config, PRINCIPALS[who], "tools/list", items_of("tools/list", LITERAL_IDS + ["unnamed"])))
        if expected is not None:
            assert kept == expected, (name, who, kept)
        else:
            assert "lit" not in kept and "third" not in kept and {"other", "unnamed", "a"} <= kept


def test_thousands_of_tools(tmp_path):
    names = LITERAL_IDS + LOOKALIKES + [f"tool_{i}" for i in range(5000)]
    for name in ("literals", "static"):
        store, config = store_for(tmp_path, name, *CORPUS[name])
        assert_same(store, config, {"alice": PRINCIPALS["alice"], "carol": PRINCIPALS["carol"]}, names, ("tools/list",))


def shipped_sets() -> list[tuple[str, AuthorizationConfig]]:
    sets = [("policies", AuthorizationConfig(policies=POLICIES, schema=POLICIES / "mcp.cedarschema",
                                             entities=POLICIES / "entities.json"))]
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        own_schema = folder / "mcp.cedarschema"
        entities = folder / "entities.json"
        sets.append((folder.name, AuthorizationConfig(
            policies=folder, schema=own_schema if own_schema.is_file() else POLICIES / "mcp.cedarschema",
            entities=entities if entities.is_file() else None)))
    return sets


SHIPPED_PRINCIPALS = {
    "nobody": principal_from_claims(claims("nobody"), token_type="jwt"),
    "admin": principal_from_claims(claims("admin", groups=["admins"], scope="mcp.admin mcp.write"), token_type="jwt"),
    "platform": principal_from_claims(claims("pt", groups=["platform-team"]), token_type="jwt"),
    "engineer": principal_from_claims(claims("eng", groups=["engineering", "dba"], scope="mcp.read"), token_type="jwt"),
    "support": principal_from_claims(claims("sup", roles=["support"], scope="mcp.read mcp.write", client_id="ops-console"),
                                     token_type="introspected"),
}
SHIPPED_NAMES = [
    "echo", "add", "get_time", "countdown", "delete_records", "search", "run_query", "create_ticket", "get_weather",
    "get_status", "deploy", "restart_service", "transfer_funds", "summarize_ticket", "draft_reply", "Search", "admins",
    "Demo MCP server", "mcp", *MANY[:200],
]


@pytest.mark.parametrize("name,config", shipped_sets(), ids=[name for name, _ in shipped_sets()])
def test_grouped_equals_per_item_on_the_shipped_policies(name, config):
    store = PolicyStore(config)
    assert listing_decisions.analyse(store.current) is not None
    assert_same(store, config, SHIPPED_PRINCIPALS, SHIPPED_NAMES)


def test_linked_templates(tmp_path):
    store, config = store_for(tmp_path, "templates", """
        @id("tool-template") permit (principal, action == Action::"tools/call", resource == ?resource);
        @id("user-template") permit (principal == ?principal, action == Action::"tools/call", resource in ?resource);
        permit (principal, action == Action::"tools/call", resource == Tool::"c");
    """, [{"uid": {"type": "Tool", "id": "kid"}, "attrs": {}, "parents": [{"type": "ToolSet", "id": "set"}]},
          {"uid": {"type": "ToolSet", "id": "set"}, "attrs": {}, "parents": []}])
    linked = store.current.policy_set.with_linked_batch([
        {"template_id": "tool-template", "new_id": "link-1", "values": {"?resource": 'Tool::"lnk"'}},
        {"template_id": "user-template", "new_id": "link-2", "values": {"?principal": 'User::"alice"', "?resource": 'ToolSet::"set"'}},
    ])
    store.current = dataclasses.replace(store.current, policy_set=linked, policy_count=len(linked))
    assert {"lnk"} <= listing_decisions.analyse(store.current).named["Tool"]
    names = ["lnk", "kid", "c", "set", "unnamed", *MANY[:50]]
    assert set(oracle(store, config, PRINCIPALS["alice"], "tools/list", items_of("tools/list", names))) == {"lnk", "kid", "c"}
    assert_same(store, config, PRINCIPALS, names, ("tools/list",))


class CedarCalls:
    """The Cedar calls made, by how many requests each evaluated (``cedarpy.is_authorized`` is a batch of one)."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        real_batch = cedarpy.is_authorized_batch

        def batch(requests, *args, **kwargs):
            self.sizes.append(len(requests))
            return real_batch(requests, *args, **kwargs)

        monkeypatch.setattr(cedarpy, "is_authorized_batch", batch)


def test_a_cold_list_is_one_cedar_call(tmp_path, monkeypatch):
    """The shipped policies and 5,000 unnamed tools plus the five entities.json tools: one batch of three.
    ``delete_records`` is named by a policy; the four read-only tools of entities.json are one group (alike
    attributes and parents, and nothing names them but their own entries); the unnamed tools another."""
    config = shipped_sets()[0][1]
    store = PolicyStore(config)
    calls = CedarCalls(monkeypatch)
    names = ["echo", "add", "get_time", "countdown", "delete_records"] + [f"tool_{i}" for i in range(5000)]
    kept = filtered(store, config, SHIPPED_PRINCIPALS["nobody"], "tools/list", items_of("tools/list", names))
    assert kept == ["echo", "add", "get_time", "countdown"]
    assert calls.sizes == [3]
    assert listing_decisions.analyse(store.current).named["Tool"] == {"delete_records"}
    # Another authorizer lists ten of them (one batch of three again), then tools it has never seen: the
    # unnamed group's decision is remembered for the principal, so no Cedar call at all.
    authorizer = Authorizer(store, config, server_name="mcp")
    filtered(store, config, SHIPPED_PRINCIPALS["nobody"], "tools/list", items_of("tools/list", names[:10]), authorizer)
    filtered(store, config, SHIPPED_PRINCIPALS["nobody"], "tools/list", items_of("tools/list", ["fresh", "names"]), authorizer)
    assert calls.sizes == [3, 3]


def test_an_entitys_own_uid_does_not_name_it_but_a_reference_to_itself_does():
    """P2: a static entity that is a listed item is grouped by its data (its own ``uid`` is no name);
    a reference to itself inside its data, or from any other entity, is one."""
    assert listing_decisions.entity_data_uids({"uid": {"type": "Tool", "id": "t"}, "attrs": {"x": 1}, "parents": []}) == set()
    assert listing_decisions.entity_data_uids(
        {"uid": {"type": "Tool", "id": "t"}, "attrs": {"me": ref("Tool", "t")}, "parents": []}) == {("Tool", "t")}
    assert listing_decisions.entity_data_uids(
        {"uid": {"type": "Tool", "id": "t"}, "attrs": {}, "parents": [{"type": "Tool", "id": "t"}]}) == {("Tool", "t")}
    assert listing_decisions.entity_data_uids(
        {"uid": {"type": "Tool", "id": "t"}, "attrs": {}, "tags": {"k": {"type": "Tool", "id": "u"}}}) == {("Tool", "u")}


def test_named_items_are_decided_alone_when_a_policy_reads_a_literals_data(tmp_path, monkeypatch):
    store, config = store_for(tmp_path, "literal-data", *CORPUS["literal-data"])
    assert "Tool" in listing_decisions.analyse(store.current).observed
    calls = CedarCalls(monkeypatch)
    filtered(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", ["lit", "other", "third", *MANY]))
    assert calls.sizes == [1, 1, 1, 1]  # lit, other, third alone; the unnamed group alone
    store, config = store_for(tmp_path, "plain-literals", *CORPUS["literals"])
    assert "Tool" not in listing_decisions.analyse(store.current).observed


@pytest.mark.parametrize("condition,observed", [
    ('resource in [Tool::"a"]', set()),
    ('[Tool::"a"].contains(resource) && resource == Tool::"b"', set()),
    ('{k: Tool::"a"}.k == resource', set()),
    ('principal in Group::"g" && resource is Tool', set()),
    ('Tool::"a" has x', {"Tool"}),
    ('Tool::"a".x == 1', {"Tool"}),
    ('{k: Tool::"a"}.k.x == 1', {"Tool"}),
    ('(if context.listing then Tool::"a" else resource).x == 1', {"Tool"}),
    ('Tool::"a" in Server::"mcp"', {"Tool"}),
    ('Prompt::"a" is Prompt in Server::"mcp"', {"Prompt"}),
    ('Tool::"a".hasTag("t")', {"Tool"}),
    ('Server::"mcp".featured == resource', {"Server"}),
])
def test_which_literals_have_their_data_read(condition, observed):
    named, read = listing_decisions.policy_uids(cedarpy.policies_to_pst(f"permit (principal, action, resource) when {{ {condition} }};"))
    assert read == observed and named


def test_unanalysable_policies_fall_back_to_per_item(tmp_path, monkeypatch, caplog):
    """A node or operator the analysis does not know (as a newer Cedar could add): per-item, still equal."""
    monkeypatch.setattr(listing_decisions, "_KNOWN_BINARY", listing_decisions._KNOWN_BINARY - {"contains"})
    store, config = store_for(tmp_path, "literals", *CORPUS["literals"])
    with pytest.raises(listing_decisions.Unanalysable):
        listing_decisions.analyse(store.current)
    caplog.set_level(logging.DEBUG, logger="gateway.authz.listing_decisions")
    assert_same(store, config, {"alice": PRINCIPALS["alice"]}, LITERAL_IDS + LOOKALIKES, ("tools/list",))
    assert any("decided one by one" in r.getMessage() for r in caplog.records)

    def no_pst(self):
        raise ValueError("unmodelled variant")

    store2, config2 = store_for(tmp_path, "static", *CORPUS["static"])
    monkeypatch.setattr(listing_decisions, "analyse", lambda policies: no_pst(None))
    assert listing_decisions.analysis_of(Authorizer(store2, config2, server_name="mcp"), store2.current) is None
    assert_same(store2, config2, {"alice": PRINCIPALS["alice"]}, LITERAL_IDS + MANY[:20], ("tools/list",))


def test_entity_data_it_cannot_read_falls_back():
    with pytest.raises(listing_decisions.Unanalysable):
        listing_decisions.data_uids([{"uid": {"type": "Group", "id": "g"}, "attrs": {"t": {"__expr": 'Tool::"x"'}}}])
    found = listing_decisions.data_uids([{"uid": {"type": "Group", "id": "g"}, "attrs": {
        "deep": {"list": [{"__entity": {"type": "Tool", "id": "in-attr"}}], "implicit": {"type": "Tool", "id": "implicit"}}},
        "parents": [{"type": "Tool", "id": "as-parent"}], "tags": {"t": ref("Tool", "in-tag")}}])
    assert {("Tool", "in-attr"), ("Tool", "implicit"), ("Tool", "as-parent"), ("Tool", "in-tag"), ("Group", "g")} <= found


def test_a_request_builder_that_leaks_the_name_is_caught(tmp_path, monkeypatch, caplog):
    """A tripwire against a future ``build``: if a listed item's name reached the context (or its entity got
    attributes ``listed_entity`` does not know), grouping would be wrong; the groups are then decided per item."""
    store, config = store_for(tmp_path, "leaky", """
        permit (principal, action == Action::"tools/call", resource) when { context has tool && context.tool like "a*" };
        permit (principal, action == Action::"tools/call", resource) when { resource has title && resource.title like "b*" };
    """, None)
    real_build = Authorizer.build

    def leaky_build(self, principal, message, **kwargs):
        request = real_build(self, principal, message, **kwargs)
        name = message.params.get("name")
        request.context["tool"] = name
        for entity in request.entities:
            if entity["uid"] == request.resource:
                entity["attrs"]["title"] = name
        return request

    monkeypatch.setattr(Authorizer, "build", leaky_build)
    names = ["a1", "b1", "c1", "a2", "b2", *MANY[:30]]
    kept = oracle(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names))
    assert kept == ["a1", "b1", "a2", "b2"]
    assert filtered(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names)) == kept
    assert any("decided one by one" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_listed_entity_is_what_build_builds(tmp_path, name):
    """Groups are keyed by ``Authorizer.listed_entity``: it must be the entity ``build`` makes, after the
    catalogue learned annotations and titles (a change that puts them on Tool entities must update both)."""
    store, config = store_for(tmp_path, name, *CORPUS[name])
    authorizer = Authorizer(store, config, server_name="mcp")
    for list_method in LISTS:
        items = items_of(list_method, LITERAL_IDS + LOOKALIKES[:10] + MANY[:30])
        if list_method == "tools/list":
            authorizer.catalogue.learn(items)
        call_method, param = LIST_CHECKS[list_method]
        for item in items:
            item_name = item[LISTS[list_method][1]]
            request = authorizer.build(PRINCIPALS["alice"], Message(kind="request", method=call_method, params={param: item_name}), listing=True)
            [entity] = [e for e in request.entities if e["uid"] == request.resource]
            assert authorizer.listed_entity(request.resource) == entity


def test_a_policy_reload_is_analysed_again(tmp_path):
    store, config = store_for(tmp_path, "reload", 'permit (principal, action == Action::"tools/call", resource == Tool::"a");', None)
    authorizer = Authorizer(store, config, server_name="mcp")
    names = ["a", "b", *MANY[:20]]
    assert filtered(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names), authorizer) == ["a"]
    (config.policies / "policies.cedar").write_text(
        'permit (principal, action == Action::"tools/call", resource) when { resource in [Tool::"b", Tool::"tool_3"] };\n',
        encoding="utf-8")
    assert store.reload_if_changed()
    assert filtered(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names), authorizer) == ["b", "tool_3"]
    assert filtered(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names)) == \
        oracle(store, config, PRINCIPALS["dave"], "tools/list", items_of("tools/list", names))


def test_check_many_and_the_per_item_seam_agree_in_any_order(tmp_path):
    store, config = store_for(tmp_path, "static", *CORPUS["static"])
    authorizer = Authorizer(store, config, server_name="mcp")
    check = authorizer.item_check(PRINCIPALS["alice"])
    names = LITERAL_IDS + MANY[:50]
    one = {name for name in reversed(names) if check("tools/list", name)}  # per item first, cache warm after
    assert check.check_many("tools/list", names) == one
    assert Authorizer(store, config, server_name="mcp").item_check(PRINCIPALS["alice"]).check_many("tools/list", names) == one
