"""The demo MCP server and the demo issuer, over real 127.0.0.1 sockets."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.demo.issuer import DemoIssuer, DemoUser, jwk_thumbprint
from gateway.demo.mcp_server import DEMO_MCP_SERVER, create_demo_mcp_app
from tests.conftest import free_port

RESOURCE = "https://mcp.example.com/mcp"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT_PARAMS = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}


def parse_sse(text: str) -> list[dict[str, str]]:
    """Each event's fields (id, event, data) from a whole text/event-stream body."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            events.append(dict(line.split(": ", 1) for line in block.splitlines()))
    return events


# --- the demo MCP server ---------------------------------------------------------------------------------

@pytest.fixture
async def mcp(aiohttp_client):
    return await aiohttp_client(create_demo_mcp_app(path="/mcp"))


async def rpc(client, method: str, params: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None, rpc_id: int = 1):
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return await client.post("/mcp", data=json.dumps(message), headers={**JSON_HEADERS, **(headers or {})})


async def open_session(client) -> str:
    response = await rpc(client, "initialize", INIT_PARAMS)
    assert response.status == 200
    return response.headers["Mcp-Session-Id"]


async def test_initialize_opens_a_session_and_echoes_the_protocol_version(mcp):
    response = await rpc(mcp, "initialize", INIT_PARAMS)
    assert response.status == 200
    assert response.content_type == "application/json"
    session_id = response.headers["Mcp-Session-Id"]
    assert len(session_id) >= 32 and session_id.replace("-", "").replace("_", "").isalnum()
    result = (await response.json())["result"]
    assert result["protocolVersion"] == "2025-11-25"
    assert result["serverInfo"]["name"] == "demo-mcp-server"
    assert result["capabilities"]["tools"] == {"listChanged": False}
    assert {"prompts", "resources"} <= result["capabilities"].keys()
    assert session_id in mcp.app[DEMO_MCP_SERVER].sessions


@pytest.mark.parametrize(("requested", "answered"), [
    ("2025-03-26", "2025-03-26"),
    ("2025-06-18", "2025-06-18"),
    ("2026-07-28", "2026-07-28"),
    ("2024-01-01", "2025-11-25"),
])
async def test_initialize_answers_a_supported_version_else_the_latest(mcp, requested, answered):
    response = await rpc(mcp, "initialize", {**INIT_PARAMS, "protocolVersion": requested})
    assert (await response.json())["result"]["protocolVersion"] == answered


async def test_every_initialize_opens_a_new_session(mcp):
    assert await open_session(mcp) != await open_session(mcp)
    assert len(mcp.app[DEMO_MCP_SERVER].sessions) == 2


async def test_tools_list_has_the_five_tools_with_schemas_and_annotations(mcp):
    session = await open_session(mcp)
    response = await rpc(mcp, "tools/list", headers={"Mcp-Session-Id": session})
    tools = {tool["name"]: tool for tool in (await response.json())["result"]["tools"]}
    assert set(tools) == {"echo", "add", "get_time", "delete_records", "countdown"}
    for tool in tools.values():
        assert tool["inputSchema"]["type"] == "object" and tool["description"]
    assert tools["echo"]["inputSchema"]["required"] == ["text"]
    assert all(tools[name]["annotations"]["readOnlyHint"] for name in ("echo", "add", "get_time", "countdown"))
    assert tools["delete_records"]["annotations"]["destructiveHint"] is True
    assert tools["delete_records"]["annotations"]["readOnlyHint"] is False


async def test_tools_call_echo_returns_the_text(mcp):
    session = await open_session(mcp)
    response = await rpc(mcp, "tools/call", {"name": "echo", "arguments": {"text": "hello"}}, headers={"Mcp-Session-Id": session}, rpc_id=7)
    body = await response.json()
    assert body == {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "hello"}], "isError": False}}


async def test_tools_call_add_returns_the_sum(mcp):
    response = await rpc(mcp, "tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}})
    assert (await response.json())["result"]["content"][0]["text"] == "42"


async def test_tools_call_get_time_returns_utc_iso_time(mcp):
    from datetime import datetime

    response = await rpc(mcp, "tools/call", {"name": "get_time"})
    text = (await response.json())["result"]["content"][0]["text"]
    assert datetime.fromisoformat(text).utcoffset().total_seconds() == 0


async def test_tools_call_delete_records_pretends_to_delete(mcp):
    response = await rpc(mcp, "tools/call", {"name": "delete_records", "arguments": {"table": "logs", "confirm": True}})
    result = (await response.json())["result"]
    assert result["isError"] is False
    assert result["content"][0]["text"].startswith("deleted ") and result["content"][0]["text"].endswith(" records from logs")


@pytest.mark.parametrize(("name", "arguments"), [
    ("add", {"a": 1}),
    ("add", {"a": 1, "b": "2"}),
    ("add", {"a": True, "b": 2}),
    ("echo", {"text": "x", "extra": 1}),
    ("countdown", {"n": 11}),
    ("delete_records", {"table": "logs", "confirm": False}),
])
async def test_invalid_arguments_are_a_tool_error_not_a_protocol_error(mcp, name, arguments):
    response = await rpc(mcp, "tools/call", {"name": name, "arguments": arguments}, headers={"Accept": "application/json"})
    body = await response.json()
    assert response.status == 200 and body["result"]["isError"] is True


async def test_unknown_tool_is_invalid_params(mcp):
    response = await rpc(mcp, "tools/call", {"name": "drop_table", "arguments": {}})
    assert (await response.json())["error"]["code"] == -32602


async def test_unknown_method_is_method_not_found(mcp):
    response = await rpc(mcp, "completion/complete", {}, rpc_id="abc")
    assert await response.json() == {"jsonrpc": "2.0", "id": "abc", "error": {"code": -32601, "message": "Method not found: completion/complete"}}


async def test_prompt_and_resource(mcp):
    prompts = (await (await rpc(mcp, "prompts/list")).json())["result"]["prompts"]
    assert [p["name"] for p in prompts] == ["summarize"] and prompts[0]["arguments"][0]["required"] is True
    prompt = (await (await rpc(mcp, "prompts/get", {"name": "summarize", "arguments": {"text": "MCP is a protocol."}})).json())["result"]
    assert "MCP is a protocol." in prompt["messages"][0]["content"]["text"]
    missing = await (await rpc(mcp, "prompts/get", {"name": "summarize", "arguments": {}})).json()
    assert missing["error"]["code"] == -32602

    resources = (await (await rpc(mcp, "resources/list")).json())["result"]["resources"]
    assert [(r["uri"], r["mimeType"]) for r in resources] == [("demo://readme", "text/plain")]
    contents = (await (await rpc(mcp, "resources/read", {"uri": "demo://readme"})).json())["result"]["contents"]
    assert contents[0]["uri"] == "demo://readme" and "demo" in contents[0]["text"]
    templates = (await (await rpc(mcp, "resources/templates/list")).json())["result"]
    assert templates == {"resourceTemplates": []}


async def test_ping_answers_an_empty_result(mcp):
    assert (await (await rpc(mcp, "ping")).json())["result"] == {}


async def test_unknown_session_is_404(mcp):
    response = await rpc(mcp, "tools/list", headers={"Mcp-Session-Id": "no-such-session"})
    assert response.status == 404


async def test_request_without_session_is_served(mcp):
    await open_session(mcp)
    response = await rpc(mcp, "tools/list")
    assert response.status == 200 and "tools" in (await response.json())["result"]


async def test_notifications_and_responses_get_202_and_no_body(mcp):
    session = await open_session(mcp)
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 9, "result": {}},
    ):
        response = await mcp.post("/mcp", data=json.dumps(message), headers={**JSON_HEADERS, "Mcp-Session-Id": session})
        assert response.status == 202 and await response.read() == b""


async def test_batch_gets_one_response_per_request(mcp):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 1}}},
    ]
    response = await mcp.post("/mcp", data=json.dumps(batch), headers=JSON_HEADERS)
    body = await response.json()
    assert [item["id"] for item in body] == [1, 2]
    assert body[1]["result"]["content"][0]["text"] == "2"


async def test_invalid_json_is_400_parse_error(mcp):
    response = await mcp.post("/mcp", data=b"{not json", headers=JSON_HEADERS)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == -32700


async def test_invalid_jsonrpc_is_400_invalid_request(mcp):
    response = await mcp.post("/mcp", data=json.dumps({"jsonrpc": "1.0", "id": 1, "method": "ping"}), headers=JSON_HEADERS)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == -32600


async def test_wrong_content_type_is_415(mcp):
    response = await mcp.post("/mcp", data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers={"Content-Type": "text/plain"})
    assert response.status == 415


async def test_unsupported_protocol_version_header_is_400(mcp):
    response = await rpc(mcp, "ping", headers={"MCP-Protocol-Version": "1999-01-01"})
    assert response.status == 400


async def test_get_is_405_no_standalone_stream(mcp):
    response = await mcp.get("/mcp", headers={"Accept": "text/event-stream"})
    assert response.status == 405
    assert "POST" in response.headers["Allow"]


async def test_delete_ends_the_session(mcp):
    session = await open_session(mcp)
    response = await mcp.delete("/mcp", headers={"Mcp-Session-Id": session})
    assert response.status == 204
    assert session not in mcp.app[DEMO_MCP_SERVER].sessions
    assert (await rpc(mcp, "ping", headers={"Mcp-Session-Id": session})).status == 404
    assert (await mcp.delete("/mcp", headers={"Mcp-Session-Id": session})).status == 404


async def test_countdown_streams_progress_events_then_the_result(mcp):
    session = await open_session(mcp)
    params = {"name": "countdown", "arguments": {"n": 3}, "_meta": {"progressToken": "tok-1"}}
    started = time.monotonic()
    response = await rpc(mcp, "tools/call", params, headers={"Mcp-Session-Id": session}, rpc_id=5)
    assert response.content_type == "text/event-stream"
    first = await response.content.readuntil(b"\n\n")
    first_at = time.monotonic() - started
    events = parse_sse(first.decode() + (await response.read()).decode())
    elapsed = time.monotonic() - started

    assert len(events) == 4  # 3 progress notifications, 1 result
    assert all(event["event"] == "message" for event in events)
    assert len({event["id"] for event in events}) == 4
    messages = [json.loads(event["data"]) for event in events]
    assert [m["method"] for m in messages[:3]] == ["notifications/progress"] * 3
    assert [m["params"]["progress"] for m in messages[:3]] == [1, 2, 3]
    assert {m["params"]["progressToken"] for m in messages[:3]} == {"tok-1"}
    assert messages[3]["id"] == 5 and messages[3]["result"]["isError"] is False
    # The first event is sent before the countdown is over: the stream is not buffered.
    assert first_at < 0.3 and elapsed >= 0.55


async def test_countdown_without_progress_token_sends_log_messages(mcp):
    response = await rpc(mcp, "tools/call", {"name": "countdown", "arguments": {"n": 2}})
    messages = [json.loads(event["data"]) for event in parse_sse(await response.text())]
    assert [m.get("method") for m in messages] == ["notifications/message", "notifications/message", None]
    assert messages[0]["params"]["level"] == "info"


async def test_countdown_answers_json_to_a_client_that_accepts_no_event_stream(mcp):
    response = await rpc(mcp, "tools/call", {"name": "countdown", "arguments": {"n": 1}}, headers={"Accept": "application/json"})
    assert response.content_type == "application/json"
    assert "Liftoff" in (await response.json())["result"]["content"][0]["text"]


async def test_a_client_accepting_only_event_streams_gets_one(mcp):
    response = await rpc(mcp, "ping", headers={"Accept": "text/event-stream"})
    assert response.content_type == "text/event-stream"
    [event] = parse_sse(await response.text())
    assert json.loads(event["data"]) == {"jsonrpc": "2.0", "id": 1, "result": {}}


async def test_apps_do_not_share_sessions(aiohttp_client):
    first = await aiohttp_client(create_demo_mcp_app())
    second = await aiohttp_client(create_demo_mcp_app(path="/other"))
    session = await open_session(first)
    response = await second.post("/other", data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
                                 headers={**JSON_HEADERS, "Mcp-Session-Id": session})
    assert response.status == 404


async def test_the_mcp_python_sdk_client_uses_the_demo_server(aiohttp_server):
    """Interop: the reference client initializes, calls tools, follows SSE progress, and ends the session."""
    pytest.importorskip("mcp")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    app = create_demo_mcp_app()
    server = await aiohttp_server(app)
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with streamable_http_client(str(server.make_url("/mcp"))) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            assert len(app[DEMO_MCP_SERVER].sessions) == 1
            assert len((await session.list_tools()).tools) == 5
            assert (await session.call_tool("add", {"a": 1, "b": 2})).content[0].text == "3"
            result = await session.call_tool("countdown", {"n": 3}, progress_callback=on_progress)
            assert result.content[0].text.startswith("Liftoff")
    assert progress == [1, 2, 3]
    assert len(app[DEMO_MCP_SERVER].sessions) == 0  # the client's DELETE ended it


# --- the demo issuer -------------------------------------------------------------------------------------

@dataclass
class ServedIssuer:
    issuer: DemoIssuer
    http: TestClient  # bound to the issuer's port


@pytest.fixture
async def served(aiohttp_client) -> ServedIssuer:
    """The issuer on a real port, chosen before the app is made: the issuer URL is part of the app."""
    issuer = DemoIssuer(resource=RESOURCE)
    port = free_port()
    http = await aiohttp_client(issuer.create_app(f"http://127.0.0.1:{port}"), server_kwargs={"port": port})
    return ServedIssuer(issuer, http)


async def verify(served: ServedIssuer, token: str, *, audience: str = RESOURCE) -> dict[str, Any]:
    """Checks ``token`` as a resource server would: keys from the served JWKS, RFC 9068 typ."""
    keys = jwt.PyJWKSet.from_dict(await (await served.http.get("/jwks")).json())
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = keys[header["kid"]]
    return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=served.issuer.issuer_url,
                      options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})


async def test_issuer_metadata_advertises_only_what_is_implemented(served):
    url = served.issuer.issuer_url
    oauth = await (await served.http.get("/.well-known/oauth-authorization-server")).json()
    oidc = await (await served.http.get("/.well-known/openid-configuration")).json()
    assert oauth == oidc
    assert oauth["issuer"] == url and oauth["jwks_uri"] == f"{url}/jwks" and oauth["token_endpoint"] == f"{url}/token"
    assert oauth["grant_types_supported"] == ["password"]
    assert oauth["response_types_supported"] == []
    assert "authorization_endpoint" not in oauth
    assert oauth["scopes_supported"] == ["mcp", "mcp.admin"]
    assert oauth["token_endpoint_auth_methods_supported"] == ["none"]


async def test_jwks_has_rsa_and_ec_keys_named_by_thumbprint_and_is_cacheable(served):
    response = await served.http.get("/jwks")
    assert response.headers["Cache-Control"] == "max-age=300"
    keys = (await response.json())["keys"]
    assert sorted((k["kty"], k["alg"], k["use"]) for k in keys) == [("EC", "ES256", "sig"), ("RSA", "RS256", "sig")]
    for key in keys:
        assert key["kid"] == jwk_thumbprint(key)
        assert "d" not in key  # public parts only


def test_jwk_thumbprint_matches_rfc_7638_example():
    # RFC 7638 §3.1's example key and its thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
             "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
             "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_token_endpoint_issues_an_rfc_9068_token_that_verifies_against_the_jwks(served):
    response = await served.http.post("/token", data={"grant_type": "password", "username": "alice", "password": "alice"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "mcp mcp.admin" and body["expires_in"] > 0
    claims = await verify(served, body["access_token"])
    assert claims["sub"] == "alice" and claims["aud"] == RESOURCE and claims["client_id"] == "demo-cli"
    assert claims["scope"] == "mcp mcp.admin" and claims["groups"] == ["admins"] and claims["email"] == "alice@example.com"
    assert claims["nbf"] == claims["iat"] and claims["exp"] == claims["iat"] + body["expires_in"]
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "RS256"


async def test_token_endpoint_narrows_scope_and_honours_resource(served):
    other = "https://other.example.com/mcp"
    response = await served.http.post("/token", data={
        "grant_type": "password", "username": "alice", "password": "alice", "scope": "mcp", "resource": other,
    })
    body = await response.json()
    assert body["scope"] == "mcp"
    claims = await verify(served, body["access_token"], audience=other)
    assert claims["aud"] == other and claims["scope"] == "mcp"


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "password", "username": "bob", "password": "alice"}, 400, "invalid_grant"),
    ({"grant_type": "password", "username": "mallory", "password": "mallory"}, 400, "invalid_grant"),
    ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
    ({"grant_type": "password", "username": "bob", "password": "bob", "scope": "mcp mcp.admin"}, 400, "invalid_scope"),
    ({"grant_type": "password", "username": "bob", "password": "bob", "resource": "mcp#frag"}, 400, "invalid_target"),
    ({"username": "bob", "password": "bob"}, 400, "invalid_request"),
])
async def test_token_endpoint_errors_follow_rfc_6749(served, form, status, error):
    response = await served.http.post("/token", data=form)
    assert response.status == status
    assert (await response.json())["error"] == error


async def test_mint_defaults_to_the_users_scopes_and_the_resource(served):
    claims = await verify(served, served.issuer.mint("carol"))
    assert claims["scope"] == "mcp" and claims["groups"] == [] and claims["exp"] - claims["iat"] == 300


async def test_mint_with_es256_verifies_with_the_ec_key(served):
    token = served.issuer.mint("bob", algorithm="ES256", scopes="mcp extra", audience=["a://x", RESOURCE])
    claims = await verify(served, token)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims["scope"] == "mcp extra" and claims["aud"] == ["a://x", RESOURCE]


def test_mint_overrides_replace_and_remove_claims():
    issuer = DemoIssuer(resource=RESOURCE, users={"dave": DemoUser(groups=("ops",), scopes=("mcp",), email="d@example.com")}, clock=lambda: 1_000)
    issuer.create_app("http://127.0.0.1:9")
    token = issuer.mint("dave", lifetime=60, jti=None, email="x@example.com")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "jti" not in claims and claims["email"] == "x@example.com"
    assert (claims["iat"], claims["exp"], claims["groups"]) == (1_000, 1_060, ["ops"])
    with pytest.raises(KeyError):
        issuer.mint("alice")


def test_mint_needs_the_issuer_url_and_the_url_is_fixed_once():
    issuer = DemoIssuer(resource=RESOURCE)
    with pytest.raises(RuntimeError):
        issuer.mint("alice")
    issuer.create_app("http://127.0.0.1:9/")
    assert issuer.issuer_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError):
        issuer.create_app("http://127.0.0.1:10")
    with pytest.raises(ValueError):
        DemoIssuer(resource=RESOURCE).create_app("http://example.com")
