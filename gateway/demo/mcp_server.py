"""The demo's MCP server: a real one, built on the MCP Python SDK (``MCPServer``, Streamable HTTP).

Owns the demo's catalogue (five annotated tools, one prompt, one resource) and running it with uvicorn
inside the caller's asyncio loop. The demo policies in ``policies/`` are written for this catalogue:
``echo``, ``add``, ``get_time`` and ``countdown`` are read-only, ``delete_records`` is destructive.

The server is stateless (``stateless_http=True``): every POST stands alone, so the walkthrough's plain
curl calls need no ``initialize`` and no ``Mcp-Session-Id``, and SDK clients that do initialize work too.
Answers come as Server-Sent Events, so ``countdown``'s progress streams through the gateway. The SDK
speaks MCP 2025-11-25 (and earlier) and, when a request says ``MCP-Protocol-Version: 2026-07-28``,
2026-07-28.

The SDK's transport security stays at its default for a loopback bind: DNS-rebinding protection on
(``Host`` must be a loopback name, a browser ``Origin`` a loopback origin). The gateway in front sends
the upstream's own ``Host`` and no ``Origin``. Credentials are not checked here: the server must only
ever listen on loopback behind the gateway.

    python -m gateway.demo.mcp_server        # HOST (default 127.0.0.1) and PORT (default 3000)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Final

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.applications import Starlette

SERVER_NAME: Final = "demo-mcp-server"
SERVER_VERSION: Final = "0.2.0"
COUNTDOWN_INTERVAL: Final = 0.2
README_URI: Final = "demo://readme"
README_TEXT: Final = """\
This is the demo MCP server of mcp-auth-gateway, built on the MCP Python SDK.

It sits behind the gateway, which checks every request's OAuth access token and asks the Cedar
policies in policies/ whether the caller may do what the request asks. Try the tools as different
users: under the example policies everyone may call echo, add, get_time and countdown, only admins
may call delete_records, and nobody may delete from a prod_* table. The tool list differs by user.

Nothing here is real: delete_records deletes nothing and the demo issuer hands out tokens to anyone.
"""


def _read_only(title: str) -> ToolAnnotations:
    # idempotentHint is about effects on the environment: a read-only tool has none to repeat.
    return ToolAnnotations(title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                           open_world_hint=False)


def build_demo_server() -> MCPServer:
    """The demo's catalogue on a fresh ``MCPServer`` (nothing is shared between servers)."""
    # log_level: MCPServer() calls logging.basicConfig, a no-op once the demo has configured logging.
    server = MCPServer(SERVER_NAME, title="Demo MCP server", version=SERVER_VERSION, log_level="WARNING",
                       instructions=f"A demonstration server. Read {README_URI} for what it shows.")

    @server.tool(title="Echo", annotations=_read_only("Echo"))
    def echo(text: Annotated[str, Field(description="The text to send back.")]) -> str:
        """Returns the text it is given."""
        return text

    @server.tool(title="Add two integers", annotations=_read_only("Add two integers"))
    def add(a: Annotated[int, Field(description="The first addend.")],
            b: Annotated[int, Field(description="The second addend.")]) -> int:
        """Adds two integers and returns the sum."""
        return a + b

    @server.tool(title="Current time", annotations=_read_only("Current time"))
    def get_time() -> str:
        """Returns the current UTC time in ISO 8601 format."""
        return datetime.now(UTC).isoformat(timespec="seconds")

    @server.tool(title="Delete records", annotations=ToolAnnotations(
        title="Delete records", read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False),
        description="Deletes all records from a table (a demonstration: nothing is deleted). "
                    "Only admins may call it under the demo policies, and nobody on prod_* tables.")
    def delete_records(table: Annotated[str, Field(min_length=1, description="The table to empty.")],
                       confirm: Annotated[bool, Field(description="Must be true: deleting cannot be undone.")]) -> str:
        if not confirm:
            raise ToolError("Nothing deleted: pass confirm: true to delete.")
        # The count is made up, but stable per table so a demo can be replayed.
        return f"deleted {zlib.crc32(table.encode()) % 1000 + 1} records from {table}"

    @server.tool(title="Countdown", annotations=_read_only("Countdown"),
                 description="Counts down from n, one step every 0.2 s. With a progressToken in params._meta, "
                             "each step arrives as a progress notification over Server-Sent Events.")
    async def countdown(ctx: Context,
                        n: Annotated[int, Field(ge=1, le=10, description="Where to start.")] = 3) -> str:
        for step in range(1, n + 1):
            await ctx.report_progress(step, n, f"{n - step + 1}...")
            await asyncio.sleep(COUNTDOWN_INTERVAL)
        return f"Liftoff! Counted down from {n}."

    @server.prompt(title="Summarize")
    def summarize(text: Annotated[str, Field(description="The text to summarize.")]) -> str:
        """Asks the model for a short summary of a text."""
        return f"Please summarize the following text in two sentences:\n\n{text}"

    @server.resource(README_URI, name="readme", title="About this demo", mime_type="text/plain")
    def readme() -> str:
        """What the demo shows and how to try it."""
        return README_TEXT

    return server


def create_demo_mcp_app(*, path: str = "/mcp", host: str = "127.0.0.1") -> Starlette:
    """The demo server's ASGI app at ``path``: stateless, SSE answers, SDK transport security for ``host``."""
    return build_demo_server().streamable_http_app(streamable_http_path=path, stateless_http=True, host=host)


class _EmbeddedUvicorn(uvicorn.Server):
    # uvicorn.Server.serve() takes SIGINT/SIGTERM for itself and raises them again when it stops; inside
    # the demo the process's owner (gateway/demo/run.py) handles the signals and stops every part.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DemoMcpServer:
    """The demo server served by uvicorn on a loopback socket, as a task of the running loop.

    ``await start()`` returns once it accepts requests (port 0: a free port, bound before the start, so
    nothing else can take it); ``await stop()`` lets in-flight streams finish for up to ``grace`` seconds.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, path: str = "/mcp", grace: float = 5.0):
        self._socket = socket.create_server((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}{path}"
        config = uvicorn.Config(create_demo_mcp_app(path=path, host=host), log_level="warning",
                                timeout_graceful_shutdown=grace, lifespan="on")
        self._server = _EmbeddedUvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="demo-mcp-server")
        while not self._server.started:
            if self._task.done():
                self._socket.close()
                await self._task  # raises what stopped it
                raise RuntimeError("the demo MCP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()


def main() -> None:
    """Serve the demo server alone on ``HOST``:``PORT`` (a sidecar's environment) until SIGINT/SIGTERM."""
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "3000"))
    uvicorn.run(create_demo_mcp_app(host=host), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
