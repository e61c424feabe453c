"""M3: on a ``subscriptions/listen`` stream, ``notifications/resources/updated`` reaches the caller only
for a resource it may read (its ``resources/read`` decision on ``Resource::"<uri>"``).

End to end: the MCP Python SDK's own server (``MCPServer``, which serves ``subscriptions/listen`` and
publishes resource updates; FastMCP does not serve ``subscriptions/listen``), a real
``python -m gateway serve`` in front of it, and the SDK ``Client`` on 2026-07-28 listening through the
gateway. Malformed frames are checked with a scripted upstream that sends what no SDK would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator

import aiohttp
import httpx2
import pytest
import uvicorn
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.subscriptions import ResourceUpdated

from tests.factories import bearer
from tests.upstreams import Received, RecordingUpstream

MODERN = "2026-07-28"
OPEN, SECRET = "demo://open", "demo://secret"
POLICIES = """\
permit (principal, action, resource);
@id("nobody-reads-the-secret")
forbid (principal, action == Action::"resources/read", resource == Resource::"demo://secret");
"""


def build_server() -> MCPServer:
    server = MCPServer("listen-upstream", log_level="WARNING")

    @server.resource(OPEN)
    def open_resource() -> str:
        return "anyone may read this"

    @server.resource(SECRET)
    def secret_resource() -> str:
        return "nobody may read this"

    @server.tool()
    async def touch(ctx: Context) -> str:
        """Publishes an update of the secret resource, then of the open one."""
        await ctx.notify_resource_updated(SECRET)
        await ctx.notify_resource_updated(OPEN)
        return "touched"

    return server


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def sdk_upstream():
    sock = socket.create_server(("127.0.0.1", 0))
    app = build_server().streamable_http_app(streamable_http_path="/mcp", stateless_http=True, host="127.0.0.1")
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the SDK server did not start"
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
def listen_policies(policies_dir):
    (policies_dir / "allow-all.cedar").write_text(POLICIES)
    return policies_dir


async def listen_and_touch(url: str, token: str | None) -> list[str]:
    """Open a listen stream for both resources, call ``touch``, collect updates until the open one."""
    headers = bearer(token) if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=20) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=MODERN) as client:
            async with client.listen(resource_subscriptions=[OPEN, SECRET]) as subscription:
                assert (await client.call_tool("touch", {})).content[0].text == "touched"
                seen: list[str] = []
                async with asyncio.timeout(10):
                    async for event in subscription:
                        assert isinstance(event, ResourceUpdated)
                        seen.append(event.uri)
                        if event.uri == OPEN:
                            return seen
    raise AssertionError("the stream ended")


async def test_M3_listen_stream_drops_updates_for_resources_the_caller_may_not_read(
        serve_gateway, sdk_upstream, issuer, listen_policies):
    direct = await listen_and_touch(sdk_upstream, None)
    assert direct == [SECRET, OPEN]  # the upstream sends both, secret first
    gateway = await serve_gateway(sdk_upstream)
    through = await listen_and_touch(f"{gateway.url}/mcp", issuer.mint(sub="bob"))
    assert through == [OPEN]
    records = [r for r in gateway.log_records() if r.get("reason") == "subscription_update_denied"]
    assert records and records[0]["policies"], records  # the denial names the deciding policy


LISTEN = {"jsonrpc": "2.0", "id": 4, "method": "subscriptions/listen",
          "params": {"notifications": {"resourceSubscriptions": [OPEN, SECRET]},
                     "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}}


def update(uri, **envelope) -> dict:
    return {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}, **envelope}


FRAMES = [
    (b'data: {"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{}}\n\n', True),
    (f"data: {json.dumps(update(OPEN))}\n\n".encode(), True),
    (f"data: {json.dumps(update(SECRET))}\n\n".encode(), False),
    (b"data: {not json\n\n", False),  # unreadable: fail closed
    (f"data: {json.dumps([update(OPEN), update(SECRET)])}\n\n".encode(), True),  # a batch: only the secret goes
    (b'data: {"jsonrpc":"2.0","method":"notifications\\/resources\\/upd\\u0061ted","params":{"uri":"demo://secret"}}\n\n', False),
    (b'data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://open","URI":"demo://secret"}}\n\n', False),
    (b'data: {"jsonrpc":"2.0","Method":"notifications/resources/updated","params":{"uri":"demo://secret"}}\n\n', False),
    (b'data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":7}}\n\n', False),
    (b'data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://open"},"Params":{"uri":"demo://secret"}}\n\n', False),
    (b": keep-alive\n\n", True),
    (f"data: {json.dumps(update(OPEN, id=None) | {'id': 4, 'result': {}})}\n\n".encode(), True),
]


async def scripted_listen(request: web.Request, received: Received) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for frame, _ in FRAMES:
        await response.write(frame)
    await response.write_eof()
    return response


async def test_M3_malformed_or_disguised_update_frames_fail_closed(serve_gateway, aiohttp_server, issuer, listen_policies):
    recorder = RecordingUpstream(behaviour=scripted_listen)
    server = await aiohttp_server(recorder.app())
    gateway = await serve_gateway(str(server.make_url("/mcp")))
    headers = {**bearer(issuer.mint(sub="bob")), "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", data=json.dumps(LISTEN), headers=headers) as response:
            assert response.status == 200
            text = (await response.read()).decode()
    frames = [frame + "\n\n" for frame in text.split("\n\n") if frame]
    expected = [frame.decode() for frame, passes in FRAMES if passes]
    assert len(frames) == len(expected), text
    assert frames[0] == expected[0] and frames[1] == expected[1]  # passed byte for byte
    assert json.loads(frames[2][len("data: "):]) == [update(OPEN)]  # the batch without the secret
    assert "demo://secret" not in text


def scripted_frames(*frames: bytes):
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    return behaviour


async def listen_through(gateway, issuer, *, body=LISTEN) -> tuple[int, str]:
    headers = {**bearer(issuer.mint(sub="bob")), "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", data=json.dumps(body), headers=headers) as response:
            return response.status, (await response.read()).decode(errors="replace")


async def test_M3_an_update_with_a_duplicate_uri_key_is_sent_as_the_gateway_read_it(
        serve_gateway, aiohttp_server, issuer, listen_policies):
    """Attack: ``{"uri": "demo://secret", "uri": "demo://open"}``: the filter read the last (open, allowed)
    and passed the upstream's bytes, so a first-wins reader got the secret URI. An update that passes is
    sent as the gateway's own serialization of what it decided on."""
    duplicate = b'data: {"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://secret","uri":"demo://open"}}\n\n'
    recorder = RecordingUpstream(behaviour=scripted_frames(duplicate))
    server = await aiohttp_server(recorder.app())
    gateway = await serve_gateway(str(server.make_url("/mcp")))
    status, text = await listen_through(gateway, issuer)
    assert status == 200 and "demo://secret" not in text
    assert [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")] == [update(OPEN)]
