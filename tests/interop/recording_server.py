"""A real MCP server (the MCP Python SDK's MCPServer, Streamable HTTP) that records every request's headers.

    python tests/interop/recording_server.py --port 3000 --log headers.jsonl [--stateless] [--json]

Each HTTP request appends one JSON line {"method", "path", "headers"} to the log, so tests can prove what
reached the upstream (U1: never the client's token). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import Context, MCPServer


class HeaderRecorder:
    """ASGI middleware: one line per request, written before the request is handled."""

    def __init__(self, app, log: Path):
        self.app = app
        self.log = log

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {}
            for name, value in scope["headers"]:
                headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            with self.log.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers}) + "\n")
        await self.app(scope, receive, send)


def build_server() -> MCPServer:
    server = MCPServer("recording-server")

    @server.tool()
    def echo(text: str) -> str:
        """Returns the text it was given."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    def admin_reset() -> str:
        """An administrative tool the example policies keep for admins."""
        return "reset done"

    @server.tool()
    async def countdown(n: int, ctx: Context) -> str:
        """Reports progress n times, then answers."""
        for i in range(n):
            await ctx.report_progress(i + 1, n)
            await asyncio.sleep(0.05)
        return "liftoff"

    @server.prompt()
    def summarize(text: str) -> str:
        """Asks for a summary of the text."""
        return f"Summarize: {text}"

    @server.resource("demo://readme")
    def readme() -> str:
        """A short text."""
        return "This server records the headers it receives."

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--json", action="store_true", help="answer with JSON instead of SSE")
    args = parser.parse_args()
    app = build_server().streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.json,
        # The SDK's default for a loopback bind: DNS-rebinding protection on (Host and Origin checked), as a
        # user's sidecar MCP server runs it. The gateway sends the upstream's Host and no Origin (I5).
    )
    uvicorn.run(HeaderRecorder(app, args.log), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
