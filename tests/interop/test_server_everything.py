"""U4 against the MCP reference server "everything" (npm @modelcontextprotocol/server-everything), through the gateway.

server-everything runs with its ``streamableHttp`` transport (Express, ``/mcp``, port from ``PORT``). It has
no option for the listen address (``app.listen(PORT)`` binds every interface), so it is started with a
preload (``node --import data:…``) that adds ``127.0.0.1`` to any ``listen(port)`` call that names no host.

The gateway in front of it has a permissive Cedar policy and requires the ``mcp`` scope; the client is the
MCP Python SDK with a client-credentials JWT from oidc-provider. Through the gateway it must get: the tool,
resource and prompt lists, a tool call, progress notifications streamed over SSE as they happen (not held
back until the result), and the two server-to-client round trips, sampling and elicitation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession
from mcp import types
from mcp.client.streamable_http import streamable_http_client

from tests.interop.conftest import HERE, free_port, stop, wait_for_port

SERVER_EVERYTHING = HERE / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"

# Tool names as server-everything 2026.8.31 registers them (dist/tools/*.js).
ECHO = "echo"
SUM = "get-sum"
LONG_RUNNING = "trigger-long-running-operation"
SAMPLING = "trigger-sampling-request"  # registered only when the client declares sampling
ELICITATION = "trigger-elicitation-request"  # registered only when the client declares elicitation

PERMIT_ALL = '@id("permit-all")\npermit (principal, action, resource);\n'

# server-everything calls `app.listen(PORT, callback)`: no host, so Node would bind every interface.
# This preload makes a listen() with a port and no host bind 127.0.0.1 instead.
LOOPBACK_ONLY = (
    "data:text/javascript,"
    + urllib.parse.quote(
        'import net from "node:net";'
        "const listen = net.Server.prototype.listen;"
        "net.Server.prototype.listen = function (...args) {"
        '  const port = args[0];'
        '  if ((typeof port === "number" || (typeof port === "string" && /^\\d+$/.test(port))) && typeof args[1] !== "string") {'
        '    args.splice(1, 0, "127.0.0.1");'
        "  }"
        "  return listen.apply(this, args);"
        "};"
    )
)


def node_for_servers() -> str:
    node = shutil.which("node")
    if node is None or not SERVER_EVERYTHING.is_file():
        pytest.fail("these tests need node and `npm ci --prefix tests/interop` (make test does both)")
    return node


def start_server_everything(port: int, log: Path) -> subprocess.Popen:
    """server-everything's Streamable HTTP transport on 127.0.0.1:<port>/mcp (its logs go to ``log``)."""
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen([node_for_servers(), "--import", LOOPBACK_ONLY, str(SERVER_EVERYTHING), "streamableHttp"],
                               cwd=HERE, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{exc}\n{log.read_text()}") from None
    return process


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def permissive_gateway_config(port: int, upstream_url: str, issuer: str, folder: Path) -> dict:
    (folder / "permit-all.cedar").write_text(PERMIT_ALL)
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}/mcp", "admin_port": 0},
        "upstream": {"url": upstream_url},
        "resource": {"name": "server-everything behind the gateway", "scopes_supported": ["mcp"]},
        "auth": {"issuers": [{"issuer": issuer}], "required_scopes": ["mcp"]},
        "authorization": {"policies": str(folder / "permit-all.cedar")},
        "logging": {"level": "info", "format": "json"},
        "audit": {"file": str(folder / "audit.jsonl")},
    }


def client_credentials_token(authorization_server, resource: str) -> str:
    """A JWT access token for ``resource`` with scope ``mcp`` (client gateway-test, valid 1 h)."""
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource, "scope": "mcp"}).encode()
    basic = base64.b64encode(b"gateway-test:gateway-secret").decode()
    request = urllib.request.Request(authorization_server.token_endpoint, data=body,
                                     headers={"Authorization": f"Basic {basic}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.load(response)["access_token"]
    assert token.count(".") == 2, "expected a JWT access token"
    return token


@pytest.fixture(scope="module")
def everything_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("server-everything") / "server.log"
    process = start_server_everything(port, log)
    yield f"http://127.0.0.1:{port}/mcp"
    stop(process)


@pytest.fixture(scope="module")
def everything_gateway(start_gateway_process, authorization_server, everything_server, tmp_path_factory):
    port = free_port()
    config = permissive_gateway_config(port, everything_server, authorization_server.issuer,
                                       tmp_path_factory.mktemp("everything-gateway"))
    gateway = start_gateway_process(config, port=port)
    gateway.public_url = config["server"]["public_url"]
    gateway.audit = Path(config["audit"]["file"])
    return gateway


@pytest.fixture(scope="module")
def token(authorization_server, everything_gateway) -> str:
    return client_credentials_token(authorization_server, everything_gateway.public_url)


class Recorder:
    """Answers the server's sampling and elicitation requests, and remembers what was asked."""

    def __init__(self) -> None:
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.elicitation: list[types.ElicitRequestParams] = []

    async def sample(self, context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling.append(params)
        return types.CreateMessageResult(role="assistant", model="interop-test-model", stop_reason="endTurn",
                                         content=types.TextContent(type="text", text="sampled by the interop test"))

    async def elicit(self, context, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation.append(params)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True, "integer": 7})


async def run_session(gateway, token: str, calls, recorder: Recorder | None = None):
    recorder = recorder or Recorder()
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with streamable_http_client(gateway.public_url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1], read_timeout_seconds=30,
                                     sampling_callback=recorder.sample, elicitation_callback=recorder.elicit) as session:
                await session.initialize()
                return await calls(session)


def texts(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def test_u4_interop_everything_listens_on_loopback_only(everything_server):
    port = urllib.parse.urlsplit(everything_server).port
    # 0100007F is 127.0.0.1 in /proc/net/tcp; a wildcard bind would show 00000000 or ::.
    addresses = listening_addresses(port)
    if not addresses:
        pytest.skip("/proc/net/tcp is not readable here")
    assert addresses == {"0100007F"}, addresses


async def test_u4_interop_everything_lists_tools_resources_and_prompts(everything_gateway, token):
    async def calls(session: ClientSession):
        return await session.list_tools(), await session.list_resources(), await session.list_prompts()

    tools, resources, prompts = await run_session(everything_gateway, token, calls)
    names = {tool.name for tool in tools.tools}
    # The conditional tools appear because the client declared sampling and elicitation, through the gateway.
    assert {ECHO, SUM, LONG_RUNNING, SAMPLING, ELICITATION} <= names, sorted(names)
    assert resources.resources, "no resources listed"
    assert {"simple-prompt", "args-prompt"} <= {prompt.name for prompt in prompts.prompts}


async def test_u4_interop_everything_reads_a_resource_and_gets_a_prompt(everything_gateway, token):
    async def calls(session: ClientSession):
        resources = await session.list_resources()
        first = resources.resources[0]
        read = await session.read_resource(first.uri)
        prompt = await session.get_prompt("args-prompt", {"city": "Lisbon", "state": "Lisboa"})
        return first, read, prompt

    first, read, prompt = await run_session(everything_gateway, token, calls)
    assert read.contents and str(read.contents[0].uri) == str(first.uri)
    assert any("Lisbon" in message.content.text for message in prompt.messages if message.content.type == "text")


async def test_u4_interop_everything_tool_calls_pass_through(everything_gateway, token):
    async def calls(session: ClientSession):
        return await session.call_tool(ECHO, {"message": "through the gateway"}), await session.call_tool(SUM, {"a": 2, "b": 40})

    echoed, summed = await run_session(everything_gateway, token, calls)
    assert not echoed.is_error and texts(echoed) == "Echo: through the gateway"
    assert not summed.is_error and "42" in texts(summed)


async def test_u4_interop_everything_progress_passes_through_sse(everything_gateway, token):
    seen: list[tuple[float, float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), progress, total))

    async def calls(session: ClientSession):
        started = time.monotonic()
        result = await session.call_tool(LONG_RUNNING, {"duration": 2, "steps": 4}, progress_callback=on_progress)
        return started, time.monotonic(), result

    started, finished, result = await run_session(everything_gateway, token, calls)
    assert not result.is_error and "Steps: 4" in texts(result)
    assert [(progress, total) for _, progress, total in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # Streamed as they happen (one every 0.5 s), not buffered until the response ends.
    assert seen[0][0] - started < 1.5, seen
    assert finished - seen[0][0] > 1.0, (started, seen, finished)


async def test_u4_interop_everything_sampling_round_trip(everything_gateway, token):
    recorder = Recorder()

    async def calls(session: ClientSession):
        return await session.call_tool(SAMPLING, {"prompt": "what is behind the gateway?", "maxTokens": 50})

    result = await run_session(everything_gateway, token, calls, recorder)
    [asked] = recorder.sampling
    assert asked.max_tokens == 50
    assert "what is behind the gateway?" in asked.messages[0].content.text
    assert not result.is_error
    assert "sampled by the interop test" in texts(result) and "interop-test-model" in texts(result)


async def test_u4_interop_everything_elicitation_round_trip(everything_gateway, token):
    recorder = Recorder()

    async def calls(session: ClientSession):
        return await session.call_tool(ELICITATION, {})

    result = await run_session(everything_gateway, token, calls, recorder)
    [asked] = recorder.elicitation
    assert "name" in asked.requested_schema["properties"]
    assert not result.is_error
    assert "- Name: Ada Lovelace" in texts(result) and "- Favorite Integer: 7" in texts(result)


async def test_u4_interop_everything_audit_records_the_calls(everything_gateway, token):
    async def calls(session: ClientSession):
        return await session.call_tool(ECHO, {"message": "audited"})

    await run_session(everything_gateway, token, calls)
    deadline = time.monotonic() + 2.0  # the gateway writes its audit events in batches, 0.2 s after the first
    while True:
        records = [json.loads(line) for line in everything_gateway.audit.read_text().splitlines()]
        echo_calls = [r for r in records if r.get("method") == "tools/call" and r.get("target") == ECHO]
        if echo_calls or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert echo_calls and all(r["outcome"] == "allow" and r["policies"] == ["permit-all"] for r in echo_calls), records
    assert token not in everything_gateway.audit.read_text()
    assert token not in everything_gateway.log_text()
