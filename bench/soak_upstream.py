"""The soak's MCP upstream, run as its own process so the soak can kill it mid-stream and start it again.

    python bench/soak_upstream.py --port 3000 [--tools 500] [--stream-events 12] [--stream-interval 0.5]

- ``initialize`` answers with a new ``Mcp-Session-Id`` each time (the soak binds one session per run);
- ``tools/list`` lists ``--tools`` tools: ``long_task``, ``slow_task`` and ``tool_0``, ``tool_1``, ...;
- ``tools/call`` of ``long_task`` answers ``text/event-stream``: one progress notification every
  ``--stream-interval`` seconds, ``--stream-events`` of them, then the result event; any other tool gets a
  JSON result echoing its name and arguments (``slow_task`` after ``arguments.ms`` milliseconds);
- a batch gets a batch of answers; notifications and client responses get ``202``;
- ``GET`` opens a standalone event stream (a notification every interval, ``--stream-events`` of them).

Answers are built from precomputed bytes where possible, so the upstream costs little of the machine the
gateway shares with the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiohttp import web

LONG_TASK = "long_task"
SLOW_TASK = "slow_task"


def build_app(tool_count: int, stream_events: int, stream_interval: float) -> web.Application:
    tools = [{"name": LONG_TASK, "description": "Reports progress as a stream, then answers.", "inputSchema": {"type": "object"}}]
    tools.append({"name": SLOW_TASK, "description": "Answers after arguments.ms milliseconds.", "inputSchema": {"type": "object"}})
    tools += [{"name": f"tool_{i}", "description": "A soak tool.", "inputSchema": {"type": "object"}} for i in range(tool_count - 2)]
    tools_list = {"tools": tools}

    def answer(message: dict) -> dict | None:
        method = message.get("method")
        if method is None or "id" not in message:
            return None  # a notification or a client response: nothing to answer
        if method == "tools/list":
            result = tools_list
        elif method == "tools/call":
            params = message.get("params") or {}
            text = json.dumps({"tool": params.get("name"), "arguments": params.get("arguments", {})}, separators=(",", ":"))
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        elif method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "soak-upstream", "version": "1"}}
        else:
            result = {}
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": result}

    async def stream(request: web.Request, final: dict | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        token = final["id"] if final else "standalone"
        for n in range(1, stream_events + 1):
            await asyncio.sleep(stream_interval)
            # sentAt lets the client measure how long the gateway took to relay each event.
            event = {"jsonrpc": "2.0", "method": "notifications/progress",
                     "params": {"progressToken": token, "progress": n, "total": stream_events, "sentAt": time.time()}}
            await response.write(f"event: message\ndata: {json.dumps(event)}\n\n".encode())
        if final is not None:
            await response.write(f"event: message\ndata: {json.dumps(final)}\n\n".encode())
        await response.write_eof()
        return response

    async def post(request: web.Request) -> web.StreamResponse:
        document = json.loads(await request.read())
        if isinstance(document, list):
            answers = [a for a in (answer(m) for m in document) if a is not None]
            return web.json_response(answers) if answers else web.Response(status=202)
        reply = answer(document)
        if reply is None:
            return web.Response(status=202)
        if document.get("method") == "tools/call":
            params = document.get("params") or {}
            if params.get("name") == LONG_TASK:
                return await stream(request, reply)
            if params.get("name") == SLOW_TASK:
                await asyncio.sleep(float((params.get("arguments") or {}).get("ms", 1000)) / 1000)
        headers = {"Mcp-Session-Id": uuid.uuid4().hex} if document.get("method") == "initialize" else None
        return web.json_response(reply, headers=headers)

    async def get(request: web.Request) -> web.StreamResponse:
        return await stream(request, None)

    async def delete(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", get)
    app.router.add_delete("/mcp", delete)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tools", type=int, default=500)
    parser.add_argument("--stream-events", type=int, default=12)
    parser.add_argument("--stream-interval", type=float, default=0.5)
    args = parser.parse_args()
    web.run_app(build_app(args.tools, args.stream_events, args.stream_interval),
                host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
