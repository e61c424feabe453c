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
