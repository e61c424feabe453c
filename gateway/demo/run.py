"""``mcp-auth-gateway demo``: a demo MCP server, a development issuer and the gateway, in one process.

Everything listens on 127.0.0.1. The gateway runs with the example policies of the repository's
``policies/`` folder, so the walkthrough shows a 401 challenge, the metadata, tokens for users in
different groups, an allowed call, a denied call and a tool list that differs by user.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.demo.issuer import DemoIssuer
from gateway.demo.mcp_server import create_demo_mcp_app
from gateway.observe.logs import configure_logging

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


def walkthrough(gateway: str, issuer: str) -> str:
    mcp = f"{gateway}/mcp"
    json_headers = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'"
    token = (
        "curl -s -X POST {issuer}/token -d grant_type=password -d username={user} -d password={user} "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    )
    return f"""
{BANNER}
  mcp-auth-gateway demo
  DEMONSTRATION ONLY: the issuer at {issuer} hands a token to anyone who
  asks (the password is the user name). Never use it for anything real.
{BANNER}

  gateway (the MCP endpoint): {mcp}
  users: alice (group admins), bob (group engineering), carol (no group)

  1. No token: 401 and a challenge that points at the metadata
     curl -i -X POST {mcp} {json_headers} \\
       -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}'

  2. The Protected Resource Metadata (RFC 9728) the challenge points to
     curl -s {gateway}/.well-known/oauth-protected-resource/mcp

  3. Tokens for bob and alice from the demo issuer
     BOB=$({token.format(issuer=issuer, user="bob")})
     ALICE=$({token.format(issuer=issuer, user="alice")})

  4. Allowed: bob calls the read-only echo tool
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}'

  5. Denied: bob calls delete_records, which only admins may use (403)
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"logs","confirm":true}}}}}}'

  6. The tool list differs by user: bob does not see delete_records, alice does
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $BOB" \\
       -d '{{"jsonrpc":"2.0","id":4,"method":"tools/list"}}'
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $ALICE" \\
       -d '{{"jsonrpc":"2.0","id":5,"method":"tools/list"}}'

  7. Even alice may not delete from a production table (a forbid policy on an argument)
     curl -s -X POST {mcp} {json_headers} -H "Authorization: Bearer $ALICE" \\
       -d '{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"delete_records","arguments":{{"table":"prod_orders","confirm":true}}}}}}'

  The policies are in policies/*.cedar: edit one and the next call follows it, no restart.
  Audit events go to stdout, gateway logs to stderr. Ctrl-C stops everything.
{BANNER}
"""


def demo_config(*, gateway_port: int, upstream_port: int, issuer_url: str, audit_file: Path | None = None):
    policies = _policies_folder()
    public_url = f"http://127.0.0.1:{gateway_port}/mcp"
    data = {
        "server": {"host": "127.0.0.1", "port": gateway_port, "public_url": public_url},
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


async def run(port: int) -> None:
    upstream_port, issuer_port = _free_port(), _free_port()
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    public_url = f"http://127.0.0.1:{port}/mcp"
    issuer = DemoIssuer(resource=public_url)
    runners = [
        await _start(create_demo_mcp_app(path="/mcp"), upstream_port),
        await _start(issuer.create_app(issuer_url), issuer_port),
    ]
    config = demo_config(gateway_port=port, upstream_port=upstream_port, issuer_url=issuer_url)
    gateway_runner = web.AppRunner(Gateway(config).create_app(), access_log=None, handler_cancellation=True)
    await gateway_runner.setup()
    try:
        await web.TCPSite(gateway_runner, "127.0.0.1", port).start()
    except OSError as exc:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); try: mcp-auth-gateway demo --port 8090") from exc
    runners.append(gateway_runner)
    print(walkthrough(f"http://127.0.0.1:{port}", issuer_url), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def run_demo(port: int = 8080) -> int:
    configure_logging("info", "text")
    asyncio.run(run(port))
    return 0
