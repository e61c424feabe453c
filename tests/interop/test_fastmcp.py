"""FastMCP (PyPI ``fastmcp``) as the upstream, the MCP Python SDK client through the gateway, on 2026-07-28.

``fastmcp_server.py`` is the demo's catalogue on FastMCP, with tool annotations, a tool whose ``region``
parameter is annotated ``x-mcp-header: Region``, and lists hinted ``cacheScope: "public"``. The client is
the SDK's ``Client`` in ``2026-07-28`` mode over its streamable HTTP transport, with the SDK's
client-credentials provider (a token whose subject, the client ``gateway-test``, is in no group).

This module runs its own gateway on its own port, with policies of its own: everyone may list, read and
call tools, but a forbid names the destructive ``delete_records`` for everyone outside ``admins``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.interop.conftest import HERE, RecordingUpstream, assert_token_never_reached_upstream, free_port
from tests.interop.conftest import interop_gateway_config, stop, wait_for_port
from tests.interop.test_python_sdk import client_credentials, client_credentials_provider

POLICIES = """\
@id("everyone-may-list-read-and-connect")
permit (
  principal,
  action in [Action::"tools/list", Action::"prompts/list", Action::"resources/list", Action::"resources/templates/list",
             Action::"prompts/get", Action::"resources/read", Action::"logging/setLevel", Action::"server/discover",
             Action::"subscriptions/listen"],
  resource
);

@id("everyone-may-call-tools")
permit (principal, action == Action::"tools/call", resource);

@id("only-admins-may-delete-records")
forbid (principal, action == Action::"tools/call", resource == Tool::"delete_records")
unless { principal in Group::"admins" };
"""

MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "raw interop", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}
FASTMCP_TOOLS = ["add", "countdown", "delete_records", "echo", "get_time", "weather"]


@pytest.fixture(scope="module")
def fastmcp_upstream(tmp_path_factory) -> Iterator[RecordingUpstream]:
    """``fastmcp_server.py`` in its own process, recording every request's headers."""
    folder = tmp_path_factory.mktemp("fastmcp")
    port, log = free_port(), folder / "headers.jsonl"
    process = subprocess.Popen([sys.executable, str(HERE / "fastmcp_server.py"), "--port", str(port), "--log", str(log)],
                               stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("w"))
    try:
        wait_for_port(port, process, seconds=30)
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{exc}\n{(folder / 'server.log').read_text()}") from None
    yield RecordingUpstream(url=f"http://127.0.0.1:{port}/mcp", log=log, process=process)
    stop(process)


@pytest.fixture(scope="module")
def fastmcp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def fastmcp_public_url(fastmcp_port: int) -> str:
    return f"http://127.0.0.1:{fastmcp_port}/mcp"


@pytest.fixture(scope="module")
def fastmcp_gateway(start_gateway_process, authorization_server, fastmcp_upstream, fastmcp_port, fastmcp_public_url,
                    tmp_path_factory):
    policies = tmp_path_factory.mktemp("fastmcp-policies")
    (policies / "interop.cedar").write_text(POLICIES)
    gateway = start_gateway_process(interop_gateway_config(
        port=fastmcp_port, public_url=fastmcp_public_url, issuer=authorization_server.issuer,
        upstream_url=fastmcp_upstream.url, policies=policies, name="FastMCP interop server"), port=fastmcp_port)
    yield gateway
    stop(gateway.process)


async def modern_client_run(url: str, calls, *, provider=None):
    """``calls(client)`` in an SDK ``Client`` on 2026-07-28 (stateless: no initialize, no session)."""
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=MODERN) as client:
            return await calls(client)


def tool_calls(upstream: RecordingUpstream, name: str, since: int = 0) -> list[dict]:
    """The 2026-07-28 ``tools/call`` requests for ``name`` that reached the upstream (from their headers)."""
    return [r["headers"] for r in upstream.requests()[since:]
            if r["headers"].get("mcp-method") == ["tools/call"] and r["headers"].get("mcp-name") == [name]]


async def raw_post(url: str, token: str, method: str, params: dict, headers: dict | None = None) -> tuple[int, dict]:
    """One 2026-07-28 request as a plain HTTP client sends it: routing headers, ``_meta``, no session."""
    sent = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if "name" in params:
        sent["Mcp-Name"] = params["name"]
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": META}},
                             headers={**sent, **(headers or {})}) as response:
            text = await response.text()
            if response.content_type == "text/event-stream":
                text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip())
            return response.status, json.loads(text)


async def test_z1_interop_fastmcp_lists_filtered_calls_decided_on_2026_07_28(
        fastmcp_gateway, fastmcp_upstream, authorization_server, fastmcp_public_url):
    """The SDK client on 2026-07-28 through the gateway to FastMCP: the forbid hides ``delete_records`` from
    the non-admin's list, FastMCP's annotations reach the client unchanged, an allowed call answers, and the
    denied one reaches the client as the JSON-RPC error the gateway sent (-32003), never the upstream."""
    direct = await modern_client_run(fastmcp_upstream.url, lambda client: client.list_tools())
    assert sorted(t.name for t in direct.tools) == FASTMCP_TOOLS

    provider = client_credentials_provider(fastmcp_public_url, authorization_server)
    already = len(fastmcp_upstream.requests())

    async def calls(client):
        tools = await client.list_tools()
        echoed = await client.call_tool("echo", {"text": "through the gateway to FastMCP"})
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_records", {"table": "staging_users", "confirm": True})
        return tools, echoed, denied.value

    tools, echoed, denied = await modern_client_run(fastmcp_public_url, calls, provider=provider)
    listed = {t.name: t for t in tools.tools}
    assert sorted(listed) == [name for name in FASTMCP_TOOLS if name != "delete_records"]
    upstream_annotations = {t.name: t.annotations for t in direct.tools}
    for name, tool in listed.items():
        assert tool.annotations == upstream_annotations[name] and tool.annotations.read_only_hint is True, name
    assert echoed.content[0].text == "through the gateway to FastMCP" and not echoed.is_error
    assert denied.error.code == -32003, denied.error
    seen = fastmcp_upstream.requests()[already:]
    assert seen and all(r["headers"]["mcp-protocol-version"] == [MODERN] for r in seen if r["method"] == "POST")
    assert not any("mcp-session-id" in r["headers"] for r in seen)  # stateless, end to end
    assert tool_calls(fastmcp_upstream, "echo", already) and not tool_calls(fastmcp_upstream, "delete_records", already)
    assert_token_never_reached_upstream(fastmcp_upstream, provider.context.current_tokens.access_token)


async def test_m2_interop_sdk_client_mirrors_x_mcp_header_and_the_gateway_checks_it(
        fastmcp_gateway, fastmcp_upstream, authorization_server, fastmcp_public_url):
    """SEP-2243 end to end: the SDK client reads ``x-mcp-header: Region`` from FastMCP's ``tools/list`` and
    sends ``Mcp-Param-Region`` (base64-wrapped for a non-ASCII value); the gateway checks it against the body
    and lets it through. A raw request whose header was removed or altered gets 400 / -32020 from the
    gateway and never reaches FastMCP."""
    provider = client_credentials_provider(fastmcp_public_url, authorization_server)
    already = len(fastmcp_upstream.requests())

    async def calls(client):
        tools = await client.list_tools()
        plain = await client.call_tool("weather", {"region": "eu-west", "days": 2})
        encoded = await client.call_tool("weather", {"region": "Zürich"})
        return tools, plain, encoded

    tools, plain, encoded = await modern_client_run(fastmcp_public_url, calls, provider=provider)
    [weather] = [t for t in tools.tools if t.name == "weather"]
    assert weather.input_schema["properties"]["region"]["x-mcp-header"] == "Region"  # kept by the gateway
    assert plain.content[0].text == "sunny in eu-west for 2 day(s)"
    assert encoded.content[0].text == "sunny in Zürich for 1 day(s)"
    mirrored = [h["mcp-param-region"] for h in tool_calls(fastmcp_upstream, "weather", already)]
    assert mirrored == [["eu-west"], [f"=?base64?{base64.b64encode('Zürich'.encode()).decode()}?="]]

    token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", fastmcp_public_url)
    call = {"name": "weather", "arguments": {"region": "eu-west"}}
    status, body = await raw_post(fastmcp_public_url, token, "tools/call", call, {"Mcp-Param-Region": "eu-west"})
    assert status == 200 and body["result"]["content"][0]["text"] == "sunny in eu-west for 1 day(s)", body
    before = len(tool_calls(fastmcp_upstream, "weather"))
    for headers in ({}, {"Mcp-Param-Region": "us-east"}, {"Mcp-Param-Region": "=?base64?dXMtZWFzdA==?="}):
        status, body = await raw_post(fastmcp_public_url, token, "tools/call", call, headers)
        assert status == 400 and body["error"]["code"] == -32020, (headers, status, body)
    assert len(tool_calls(fastmcp_upstream, "weather")) == before  # refused at the gateway
    assert_token_never_reached_upstream(fastmcp_upstream, token)


async def test_m1_interop_a_filtered_fastmcp_list_leaves_private_with_its_ttl(
        fastmcp_gateway, fastmcp_upstream, authorization_server, fastmcp_public_url):
    """FastMCP hints its lists ``cacheScope: "public"``, ``ttlMs: 60000``. The list the gateway filtered for
    this caller must leave ``private`` (another caller sees another list), with the TTL kept."""
    token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", fastmcp_public_url)
    async with aiohttp.ClientSession() as http:
        async with http.post(fastmcp_upstream.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}},
                             headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
                                      "Mcp-Method": "tools/list"}) as response:
            direct = (await response.json())["result"]
    assert (direct["cacheScope"], direct["ttlMs"]) == ("public", 60000)
    status, body = await raw_post(fastmcp_public_url, token, "tools/list", {})
    assert status == 200, body
    result = body["result"]
    assert "delete_records" not in [t["name"] for t in result["tools"]]  # filtered for this caller
    assert (result.get("cacheScope"), result.get("ttlMs")) == ("private", 60000)
    assert_token_never_reached_upstream(fastmcp_upstream, token)


async def test_m5_interop_python_sdk_reads_a_policy_denial_as_the_gateways_json_rpc_error(
        fastmcp_gateway, fastmcp_upstream, authorization_server, fastmcp_public_url):
    """The Python SDK client (2.3.0) reads the gateway's 403 body (Z3: a JSON-RPC error with the request id)
    as the call's error: ``-32003`` "Forbidden", not an authentication failure; it keeps its token (no
    re-authorization) and the session goes on. (The TypeScript SDK reads the same answer as an HTTP 403
    error: test_typescript_sdk.py.)"""
    provider = client_credentials_provider(fastmcp_public_url, authorization_server)

    async def calls(client):
        await client.list_tools()
        token = provider.context.current_tokens.access_token
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_records", {"table": "staging_users", "confirm": True})
        after = await client.call_tool("echo", {"text": "still connected"})
        return denied.value, token, provider.context.current_tokens.access_token, after

    denied, before, after_token, after = await modern_client_run(fastmcp_public_url, calls, provider=provider)
    assert (denied.error.code, denied.error.message) == (-32003, "Forbidden"), denied.error
    assert before == after_token  # no new token was fetched for a denial
    assert after.content[0].text == "still connected"
