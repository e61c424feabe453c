"""Upstream servers for tests: real aiohttp servers on 127.0.0.1 that record what reached them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


Behaviour = Callable[[web.Request, Received], Awaitable[web.StreamResponse]]


async def answer_json(request: web.Request, received: Received) -> web.StreamResponse:
    """A JSON-RPC result echoing the method, with the session and protocol headers MCP servers send."""
    try:
        message = json.loads(received.body or b"{}")
    except ValueError:
        message = {}
    rpc_id = message.get("id") if isinstance(message, dict) else None
    result = {"jsonrpc": "2.0", "id": rpc_id, "result": {"method": message.get("method") if isinstance(message, dict) else None}}
    return web.json_response(result, headers={"Mcp-Session-Id": "session-1", "MCP-Protocol-Version": "2025-11-25"})


@dataclass
class RecordingUpstream:
    """Records every request; answers with ``behaviour`` (default: a JSON-RPC result)."""

    behaviour: Behaviour = answer_json
    received: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path, CIMultiDict(request.headers), await request.read())
        self.received.append(received)
        return await self.behaviour(request, received)


def sse_event(data: dict, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: message\ndata: {json.dumps(data)}\n\n".encode()


async def start_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Mcp-Session-Id": "session-1"})
    await response.prepare(request)
    return response


def gated_sse(gate: asyncio.Event) -> Behaviour:
    """Sends one event, waits until ``gate`` is set, then sends the second: proves nothing is buffered."""

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}, "1"))
        await asyncio.wait_for(gate.wait(), 10)
        await response.write(sse_event({"jsonrpc": "2.0", "id": 1, "result": {"done": True}}, "2"))
        await response.write_eof()
        return response

    return behaviour


async def dies_mid_stream(request: web.Request, received: Received) -> web.StreamResponse:
    response = await start_sse(request)
    await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}, "1"))
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()  # the upstream process dies: no terminating chunk
    return response


def slow_headers(delay: float) -> Behaviour:
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return await answer_json(request, received)

    return behaviour


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(status=code, headers=headers)

    return behaviour
