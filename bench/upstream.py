"""The benchmark's upstream: the smallest MCP-shaped JSON-RPC server, so the gateway's cost is what shows.

    python bench/upstream.py --port 3000 [--tools 500] [--sse-interval 1.0]

``POST``: ``tools/call`` echoes its arguments; ``tools/list`` lists ``--tools`` tools named tool_0...;
anything else gets an empty result. No sessions: the same bytes for every run.

``GET`` (``Accept: text/event-stream``): a standalone SSE stream that stays open (at most
``--sse-max`` seconds) and sends a ``notifications/message`` every ``--sse-interval`` seconds whose
``params.data.t`` is ``time.monotonic_ns()`` just before the write (CLOCK_MONOTONIC is one clock for every
process on the machine, so a client on the same machine can tell how long the event took to reach it).
Streams are spread over the interval (stream k starts at phase k × 0.618… of it), so 1,000 streams make
1,000 events a second evenly, not a burst of 1,000 once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

from aiohttp import web

GOLDEN = 0.6180339887498949


def build_app(tool_count: int, sse_interval: float = 1.0, sse_max: float = 600.0) -> web.Application:
    tools = [{"name": f"tool_{i}", "description": "A benchmark tool.", "inputSchema": {"type": "object"}} for i in range(tool_count)]
    tools_list = {"tools": tools}
    streams = itertools.count()

    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        method = message.get("method")
        if method == "tools/call":
            result = {"content": [{"type": "text", "text": json.dumps(message["params"].get("arguments", {}))}], "isError": False}
        elif method == "tools/list":
            result = tools_list
        else:
            result = {}
        return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": result})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b": open\n\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = started + (next(streams) * GOLDEN % 1.0) * sse_interval
        try:
            for n in itertools.count():
                due = first + n * sse_interval
                if due - started > sse_max:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                event = {"jsonrpc": "2.0", "method": "notifications/message",
                         "params": {"level": "info", "data": {"t": time.monotonic_ns(), "n": n}}}
                await response.write(b"event: message\ndata: " + json.dumps(event).encode() + b"\n\n")
        except ConnectionError:
            pass  # the client (or the proxy in front) went away
        return response

    app = web.Application()
    app.router.add_post("/mcp", handle)
    app.router.add_get("/mcp", stream)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tools", type=int, default=500)
    parser.add_argument("--sse-interval", type=float, default=1.0)
    parser.add_argument("--sse-max", type=float, default=600.0, help="no stream stays open longer than this")
    args = parser.parse_args()
    web.run_app(build_app(args.tools, args.sse_interval, args.sse_max), host="127.0.0.1", port=args.port,
                access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
