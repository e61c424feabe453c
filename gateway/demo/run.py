"""``mcp-auth-gateway demo``: a demo MCP server, a development issuer and the gateway, in one process.

Everything listens on 127.0.0.1 and runs on one asyncio loop: the MCP server (the MCP Python SDK's app,
served by uvicorn), the issuer and the gateway (aiohttp). The gateway runs with the example policies of
the repository's ``policies/`` folder, so the walkthrough shows a 401 challenge, the metadata, tokens for
users in different groups, an allowed call, a denied call, a tool list that differs by user and a
progress stream. SIGINT or SIGTERM stops the gateway first, then the issuer, then the MCP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.demo.issuer import DemoIssuer
from gateway.observe.logs import configure_logging

try:
    from gateway.demo.mcp_server import DemoMcpServer
except ModuleNotFoundError as exc:  # the demo extra is not installed
    if exc.name not in {"mcp", "uvicorn"}:
        raise
    raise SystemExit(f"the demo needs the package {exc.name}: pip install -e '.[demo]' (make run installs it)") from exc

log = logging.getLogger(__name__)

SERVER_NAME = "Demo MCP server"
BANNER = "=" * 78


def _policies_folder() -> Path:
    folder = Path(__file__).resolve().parents[2] / "policies"
    if not (folder / "mcp.cedarschema").is_file():
        raise SystemExit(f"the demo needs the repository's policies/ folder next to gateway/ (looked in {folder})")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


# Prints one line per tool of a tools/list answer (an SSE event): its name, title and the hints that are true.
TOOL_LINES = (
    'import json,sys; '
    '[print(t["name"].ljust(15), t["title"].ljust(17), *[k for k, v in t["annotations"].items() if v is True]) '
    'for t in json.loads(sys.stdin.read().split("data: ", 1)[1])["result"]["tools"]]'
)


def walkthrough(gateway: str, issuer: str) -> str:
    """The printed walkthrough; tests/test_demo.py runs its commands and checks what each step says."""
    mcp = f"{gateway}/mcp"
    json_headers = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    token = (
        "curl -s -X POST {issuer}/token -d grant_type=password -d username={user} -d password={user} "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    )
    status = "-w '\\nHTTP %{http_code}\\n'"
    return f"""
{BANNER}
  mcp-auth-gateway demo
  DEMONSTRATION ONLY: the issuer at {issuer} hands a token to anyone who
  asks (the password is the user name). Never use it for anything real.
{BANNER}

  gateway (the MCP endpoint): {mcp}
  behind it: an MCP server built on the MCP Python SDK, stateless, so curl needs no initialize;
  its answers are Server-Sent Events (event: message, data: {{...}})
  users: alice (group admins), bob (group engineering), carol (no group)

  1. No token: 401 and a challenge that points at the metadata
     curl -s -i -X POST {mcp} {json_headers} \\
       -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}'

  2. The Protected Resource Metadata (RFC 9728) the challenge points to
     curl -s {gateway}/.well-known/oauth-protected-resource/mcp

  3. Tokens for bob and alice from the demo issuer
     BOB=$({token.format(issuer=issuer, user="bob")})
     ALICE=$({token.format(issuer=issuer, user="alice")})

  4. Allowed: bob calls the read-only echo tool
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}'

  5. Denied: bob calls delete_records, which only admins may use (HTTP 403)
     curl -s {status} -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"logs","confirm":true}}}}}}'

  6. The tool list differs by user: bob does not see delete_records, alice does
     # one line per tool: its name, its title and the annotations that are true
     TOOLS='{TOOL_LINES}'
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":4,"method":"tools/list"}}' | python3 -c "$TOOLS"
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $ALICE" \\
       -d '{{"jsonrpc":"2.0","id":5,"method":"tools/list"}}' | python3 -c "$TOOLS"

  7. A forbid policy on an argument: alice (an admin) may delete from logs, not from prod_* (HTTP 403)
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $ALICE" \\
       -d '{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"logs","confirm":true}}}}}}'
     curl -s {status} -X POST {mcp} {json_headers} -H "Authorization: Bearer $ALICE" \\
       -d '{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"prod_orders","confirm":true}}}}}}'

  8. Progress over SSE: bob's countdown streams one event every 0.2 s through the gateway, then the result
     curl -s -N -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"countdown","arguments":{{"n":5}},"_meta":{{"progressToken":"c1"}}}}}}'

  9. bob reads the server's resource demo://readme
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{{"uri":"demo://readme"}}}}'

  A real MCP client as bob: the MCP Inspector v2 CLI (Node 22.19 or newer; add --protocol-era modern
  for MCP 2026-07-28). bob's list has no delete_records; a denied call reads as auth_required in it.
    npx -y @modelcontextprotocol/inspector@2.12.0 --cli {mcp} --transport http \\
        --header "Authorization: Bearer $BOB" --method tools/list
    npx -y @modelcontextprotocol/inspector@2.12.0 --cli {mcp} --transport http \\
        --header "Authorization: Bearer $BOB" --method tools/call --tool-name echo --tool-arg text=hello

  The policies are in policies/*.cedar: edit one and the next call follows it, no restart.
  Audit events go to stdout, gateway logs to stderr. Ctrl-C stops everything.
{BANNER}
"""


def demo_config(*, gateway_port: int, upstream_port: int, issuer_url: str, audit_file: Path | None = None):
    policies = _policies_folder()
    public_url = f"http://127.0.0.1:{gateway_port}/mcp"
    data = {
        # admin_port 0: the demo is one process on one port, probes and metrics included (O1).
        "server": {"host": "127.0.0.1", "port": gateway_port, "public_url": public_url, "admin_port": 0},
        "upstream": {"url": f"http://127.0.0.1:{upstream_port}/mcp"},
        "resource": {"name": SERVER_NAME, "scopes_supported": ["mcp", "mcp.admin"]},
        "auth": {"issuers": [{"issuer": issuer_url}], "required_scopes": ["mcp"]},
        "authorization": {
            "policies": str(policies),
            "schema": str(policies / "mcp.cedarschema"),
            "entities": str(policies / "entities.json"),
        },
        "logging": {"level": "info", "format": "text"},
        "audit": {"file": str(audit_file)} if audit_file else {},
    }
    return parse_config(data, source="(demo)", base_dir=Path(tempfile.gettempdir()))


@dataclass(frozen=True, slots=True)
class DemoUrls:
    gateway: str  # http://127.0.0.1:<port>, without the /mcp path
    issuer: str
    upstream: str  # the MCP server behind the gateway (never to be called directly)


@contextlib.asynccontextmanager
async def running_demo(port: int, *, audit_file: Path | None = None) -> AsyncIterator[DemoUrls]:
    """The three parts, listening on 127.0.0.1 until the block ends (the gateway on ``port``)."""
    async with contextlib.AsyncExitStack() as parts:
        mcp_server = DemoMcpServer(path="/mcp")
        await mcp_server.start()
        parts.push_async_callback(mcp_server.stop)

        issuer_port = _free_port()
        issuer_url = f"http://127.0.0.1:{issuer_port}"
        issuer = DemoIssuer(resource=f"http://127.0.0.1:{port}/mcp")
        issuer_runner = await _start(issuer.create_app(issuer_url), issuer_port)
        parts.push_async_callback(issuer_runner.cleanup)

        config = demo_config(gateway_port=port, upstream_port=mcp_server.port, issuer_url=issuer_url,
                             audit_file=audit_file)
        gateway_runner = web.AppRunner(Gateway(config).create_app(), access_log=None, handler_cancellation=True)
        await gateway_runner.setup()
        parts.push_async_callback(gateway_runner.cleanup)
        try:
            await web.TCPSite(gateway_runner, "127.0.0.1", port).start()
        except OSError as exc:
            raise SystemExit(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); try: mcp-auth-gateway demo --port 8090") from exc
        yield DemoUrls(gateway=f"http://127.0.0.1:{port}", issuer=issuer_url, upstream=mcp_server.url)


async def run(port: int) -> None:
    async with running_demo(port) as urls:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(walkthrough(urls.gateway, urls.issuer), file=sys.stderr, flush=True)
        await stop.wait()


def run_demo(port: int = 8080) -> int:
    configure_logging("info", "text")
    # The SDK logs every stateless request at INFO ("Terminating session: None"); its warnings still show.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    asyncio.run(run(port))
    return 0
