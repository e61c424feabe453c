"""The benchmark's upstream: the smallest MCP-shaped JSON-RPC server, so the gateway's cost is what shows.

    python bench/upstream.py --port 3000 [--tools 500]

``tools/call`` echoes its arguments; ``tools/list`` lists ``--tools`` tools named tool_0...; anything else
gets an empty result. No sessions, no SSE: the same bytes for every run.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web


def build_app(tool_count: int) -> web.Application:
    tools = [{"name": f"tool_{i}", "description": "A benchmark tool.", "inputSchema": {"type": "object"}} for i in range(tool_count)]
    tools_list = {"tools": tools}

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

    app = web.Application()
    app.router.add_post("/mcp", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tools", type=int, default=500)
    args = parser.parse_args()
    web.run_app(build_app(args.tools), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
