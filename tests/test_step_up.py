"""A6 (RFC 9470): step-up authentication rules, against a real ``mcp-auth-gateway serve`` process.

A rule names tools (by name or glob) or methods and what they need of the user's authentication: the
token's ``acr`` in ``acr_values``, its ``auth_time`` no older than ``max_age``. A token that falls short
gets ``401`` with ``error="insufficient_user_authentication"``, ``acr_values``, ``max_age`` and
``resource_metadata``; nothing reaches the upstream; the audit event names the precise reason. The check
follows the policy: a call the policy denies is a ``403`` whatever the token's ``acr``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import aiohttp
import pytest

from gateway.auth.principal import principal_from_claims
from gateway.auth.step_up import StepUpRules
from gateway.config import ConfigError, StepUpRule, parse_config
from gateway.edge.challenge import prm_url
from gateway.errors import Forbidden, InsufficientUserAuthentication
from gateway.mcp.jsonrpc import parse_body
from tests.factories import RESOURCE, bearer
from tests.upstreams import Received, RecordingUpstream

STEP_UP = {"step_up": [
    {"tools": ["delete_*"], "acr_values": ["mfa", "hwk"], "max_age": "5m"},
    {"methods": ["resources/read"], "max_age": "1m"},
]}
POLICIES = """\
permit (principal, action, resource);
@id("nobody-may-drop")
forbid (principal, action == Action::"tools/call", resource == Tool::"delete_everything");
"""


def call(name: str, rpc_id: int = 1, **arguments) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def post(gateway, token: str, body) -> tuple[int, dict, str]:
    headers = {**bearer(token), "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", data=json.dumps(body), headers=headers) as response:
            return response.status, dict(response.headers), await response.text()


def challenge_params(header: str) -> dict[str, str]:
    """The auth-params of one Bearer challenge, read the way simple clients read them (D4)."""
    assert header.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


@pytest.fixture
async def gateway(serve_gateway, upstream, policies_dir):
    (policies_dir / "allow-all.cedar").write_text(POLICIES)
    return await serve_gateway(upstream.url, auth=STEP_UP)


async def test_a6_wrong_acr_gets_the_rfc9470_challenge_and_nothing_is_forwarded(gateway, upstream, issuer):
    now = int(time.time())
    status, headers, body = await post(gateway, issuer.mint(acr="pwd", auth_time=now), call("delete_records", table="t"))
    assert status == 401
    params = challenge_params(headers["WWW-Authenticate"])
    assert params == {  # no scopes are configured here, so there is no scope parameter
        "resource_metadata": prm_url(RESOURCE),
        "error": "insufficient_user_authentication",
        "error_description": "A different authentication level is required",
        "acr_values": "mfa hwk",
        "max_age": "300",
    }
    assert json.loads(body)["id"] == 1 and json.loads(body)["error"]["code"] == -32001
    assert upstream.received == []
    # The policy's decision (allow), then the step-up refusal, each its own event, as with any later stage.
    decided, event = [e for e in gateway.audit() if e.get("target") == "delete_records"]
    assert decided["outcome"] == "allow" and decided["reason"] == "allowed"
    assert event["outcome"] == "deny" and event["reason"] == "step_up_acr_not_accepted"
    assert event["step_up"] == {"rules": [0], "acr_values": ["mfa", "hwk"], "max_age": 300}
    assert "acr 'pwd' is not one of mfa hwk (auth.step_up[0])" in gateway.log_text()


async def test_a6_a_token_that_satisfies_the_rule_is_forwarded(gateway, upstream, issuer):
    token = issuer.mint(acr="hwk", auth_time=int(time.time()) - 10)
    status, _, _ = await post(gateway, token, call("delete_records", table="t"))
    assert status == 200
    assert len(upstream.received) == 1
    # Calls no rule names need nothing of acr or auth_time.
    status, _, _ = await post(gateway, issuer.mint(), call("echo", text="hi"))
    assert status == 200


async def test_a6_missing_or_old_auth_time_gets_the_max_age_challenge(gateway, upstream, issuer):
    for claims, reason in (({"acr": "mfa"}, "step_up_auth_time_missing"),
                           ({"acr": "mfa", "auth_time": int(time.time()) - 301}, "step_up_auth_too_old"),
                           ({"acr": "mfa", "auth_time": "yesterday"}, "step_up_auth_time_invalid"),
                           ({"acr": "mfa", "auth_time": 10**30}, "step_up_auth_time_invalid"),
                           ({"acr": "mfa", "auth_time": int(time.time()) + 3600}, "step_up_auth_time_in_future"),
                           ({"acr": ["mfa"], "auth_time": int(time.time())}, "step_up_acr_invalid")):
        status, headers, _ = await post(gateway, issuer.mint(**claims), call("delete_records"))
        assert status == 401, claims
        params = challenge_params(headers["WWW-Authenticate"])
        assert params["error"] == "insufficient_user_authentication"
        assert params["max_age"] == "300" and params["acr_values"] == "mfa hwk"
        if reason.startswith("step_up_auth"):
            assert params["error_description"] == "More recent authentication is required"
        assert gateway.audit()[-1]["reason"] == reason, claims
    assert upstream.received == []


async def test_a6_a_call_the_policy_denies_is_403_not_a_step_up(gateway, upstream, issuer):
    status, headers, _ = await post(gateway, issuer.mint(acr="pwd"), call("delete_everything"))
    assert status == 403
    assert "insufficient_user_authentication" not in headers.get("WWW-Authenticate", "")
    assert gateway.audit()[-1]["policies"] == ["nobody-may-drop"]
    assert upstream.received == []


async def test_a6_method_rules_and_batches(gateway, upstream, issuer):
    read = {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "file:///a"}}
    status, headers, _ = await post(gateway, issuer.mint(auth_time=int(time.time()) - 120), read)
    assert status == 401
    params = challenge_params(headers["WWW-Authenticate"])
    assert params["max_age"] == "60" and "acr_values" not in params
    # One message of a batch that needs step-up refuses the batch; the audit names that message.
    batch = [call("echo", 1), call("delete_records", 2)]
    status, headers, body = await post(gateway, issuer.mint(), batch)
    assert status == 401 and json.loads(body)["id"] == 2
    assert gateway.audit()[-1]["target"] == "delete_records"
    assert upstream.received == []
    status, _, _ = await post(gateway, issuer.mint(auth_time=int(time.time())), read)
    assert status == 200


async def test_a6_tools_that_need_step_up_still_list(serve_gateway, policies_dir, issuer):
    async def tools(request, received: Received):
        from aiohttp import web

        listing = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}},
                             {"name": "delete_records", "inputSchema": {"type": "object"}}]}
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": listing})

    from aiohttp.test_utils import TestServer

    recorder = RecordingUpstream(behaviour=tools)
    async with TestServer(recorder.app(), host="127.0.0.1") as server:
        gateway = await serve_gateway(str(server.make_url("/mcp")), auth=STEP_UP)
        status, _, body = await post(gateway, issuer.mint(), {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 200
    assert [t["name"] for t in json.loads(body)["result"]["tools"]] == ["echo", "delete_records"]


async def test_a6_introspected_tokens_step_up_from_the_introspection_answer(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, auth={**STEP_UP, "introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}})
    weak = issuer.opaque(acr="pwd", auth_time=int(time.time()))
    status, headers, _ = await post(gateway, weak, call("delete_records"))
    assert status == 401 and challenge_params(headers["WWW-Authenticate"])["acr_values"] == "mfa hwk"
    strong = issuer.opaque(acr="mfa", auth_time=int(time.time()))
    status, _, _ = await post(gateway, strong, call("delete_records"))
    assert status == 200


async def test_a6_the_challenge_carries_the_scopes_the_request_needs(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, auth={**STEP_UP, "required_scopes": ["mcp"], "tool_scopes": {"delete_*": ["mcp.write"]}})
    status, headers, _ = await post(gateway, issuer.mint(scope="mcp mcp.write", acr="pwd"), call("delete_records"))
    assert status == 401
    assert challenge_params(headers["WWW-Authenticate"])["scope"] == "mcp mcp.write"
    # Scopes come first (T10): a token without them gets 403 insufficient_scope, not a step-up.
    status, headers, _ = await post(gateway, issuer.mint(scope="mcp", acr="pwd"), call("delete_records"))
    assert status == 403 and 'error="insufficient_scope"' in headers["WWW-Authenticate"]


# -- the rules, without a server ---------------------------------------------------------------------------------


def messages(*bodies):
    return parse_body(json.dumps(list(bodies) if len(bodies) > 1 else bodies[0]).encode(), "application/json").messages


def principal(**claims):
    return principal_from_claims({"iss": "https://idp.example.com", "sub": "alice", **claims}, token_type="jwt")


def test_a6_every_matching_rule_applies_acr_values_intersect_and_the_shortest_max_age_wins():
    rules = StepUpRules([StepUpRule(tools=("*",), acr_values=("mfa", "hwk"), max_age=600),
                         StepUpRule(tools=("delete_*",), acr_values=("hwk", "mfa"), max_age=60),
                         StepUpRule(methods=("tools/*",), acr_values=("hwk",))])
    needed = rules.requirement(messages(call("delete_records")))
    assert needed.acr_values == ("hwk",) and needed.max_age == 60 and needed.rules == (0, 1, 2)
    with pytest.raises(InsufficientUserAuthentication) as caught:
        rules.check(principal(acr="mfa", auth_time=time.time()), messages(call("delete_records")))
    assert caught.value.acr_values == ("hwk",) and caught.value.max_age == 60
    rules.check(principal(acr="hwk", auth_time=time.time()), messages(call("delete_records")))


def test_a6_rules_that_share_no_acr_value_refuse_with_403_not_an_endless_step_up():
    rules = StepUpRules([StepUpRule(tools=("*",), acr_values=("mfa",)), StepUpRule(tools=("drop",), acr_values=("hwk",))])
    with pytest.raises(Forbidden) as caught:
        rules.check(principal(acr="mfa"), messages(call("drop")))
    assert caught.value.reason == "step_up_unsatisfiable"
    rules.check(principal(acr="mfa"), messages(call("other")))


def test_a6_tool_rules_match_tool_names_exactly_or_by_glob_not_other_methods():
    rules = StepUpRules([StepUpRule(tools=("delete_records",), acr_values=("mfa",))])
    assert rules.requirement(messages(call("Delete_records"))) is None  # names are case-sensitive, as in MCP
    assert rules.requirement(messages(call("delete_records_x"))) is None
    prompt = {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "delete_records"}}
    assert rules.requirement(messages(prompt)) is None
    assert not StepUpRules([])


# -- configuration ---------------------------------------------------------------------------------------------------


def config_with(step_up) -> dict:
    return {"server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}], "step_up": step_up},
            "authorization": {"policies": "policies"}}


def test_a6_config_errors_name_the_file_and_the_key():
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with([
            {"tools": ["delete_*"], "methods": ["tools/call"], "acr_values": ["mfa"]},
            {"tools": ["x"]},
            {"tools": ["x"], "acr_values": ["two words", 'quo"te']},
            {"methods": ["tools/list"], "max_age": "1.5s"},
            {"tools": ["x"], "acr_value": ["mfa"]},
        ]), source="gateway.yaml")
    problems = "\n".join(caught.value.problems)
    assert "gateway.yaml: auth.step_up[0]: give tools or methods (one of the two)" in problems
    assert "gateway.yaml: auth.step_up[1]: needs acr_values, max_age or both" in problems
    assert "gateway.yaml: auth.step_up[2].acr_values[0]: 'two words'" in problems
    assert "gateway.yaml: auth.step_up[2].acr_values[1]:" in problems
    assert "gateway.yaml: auth.step_up[3].max_age: must be a whole number of seconds" in problems
    assert "gateway.yaml: auth.step_up[4].acr_value: unknown key (did you mean 'acr_values'?)" in problems


def test_a6_validate_command_reports_step_up_problems(tmp_path):
    (tmp_path / "p.cedar").write_text("permit (principal, action, resource);\n")
    data = config_with([{"methods": ["tools/call"], "max_age": "soon"}])
    data["authorization"]["policies"] = str(tmp_path / "p.cedar")
    (tmp_path / "gateway.yaml").write_text(json.dumps(data))
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(tmp_path / "gateway.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{tmp_path / 'gateway.yaml'}: auth.step_up[0].max_age:" in result.stderr
    data["auth"]["step_up"] = [{"methods": ["tools/call"], "max_age": "5m", "acr_values": "mfa hwk"}]
    (tmp_path / "gateway.yaml").write_text(json.dumps(data))
    config = parse_config(data, source="gateway.yaml")
    assert config.auth.step_up == (StepUpRule(methods=("tools/call",), acr_values=("mfa", "hwk"), max_age=300),)


def test_a6_s1_step_up_error_is_on_the_scheme_the_client_used():
    """A DPoP client must find insufficient_user_authentication on the DPoP challenge, not a bare Bearer one."""
    from gateway.edge.challenge import Challenges
    from gateway.errors import InsufficientUserAuthentication

    error = InsufficientUserAuthentication("step_up_acr_not_accepted", acr_values=("mfa",), max_age=300)
    challenges = Challenges("https://gw.example/mcp", (), dpop_algorithms=("ES256",))
    bearer, dpop = challenges.all_for_error(error, scheme="dpop")
    assert "error=" not in bearer and bearer.startswith("Bearer ")
    assert dpop.startswith('DPoP algs="ES256", ') and 'error="insufficient_user_authentication"' in dpop
    assert 'acr_values="mfa"' in dpop and 'max_age="300"' in dpop
    bearer, dpop = challenges.all_for_error(error, scheme="bearer")
    assert 'error="insufficient_user_authentication"' in bearer and dpop == 'DPoP algs="ES256"'
    required = Challenges("https://gw.example/mcp", (), dpop_algorithms=("ES256",), dpop_required=True)
    (only,) = required.all_for_error(error, scheme="dpop")
    assert only.startswith("DPoP ") and "insufficient_user_authentication" in only and "resource_metadata=" in only
