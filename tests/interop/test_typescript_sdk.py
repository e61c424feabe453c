"""The MCP TypeScript SDK client, through the gateway, against oidc-provider and the Python SDK's server.

``typescript_client.mjs`` runs the SDK's ``Client`` over ``StreamableHTTPClientTransport`` with an
``OAuthClientProvider``: given only the gateway's URL it gets the 401, reads ``resource_metadata`` from the
challenge, fetches PRM and the authorization server's metadata, registers itself (RFC 7591), and builds the
authorization URL (PKCE S256, ``resource``, ``state``). The script plays the browser (headless login), then
calls ``transport.finishAuth(code)`` and reconnects; a second mode uses the SDK's own
``ClientCredentialsProvider``. The script prints what it saw, the access token included, so these tests can
prove the upstream never received it (U1).

This module runs its own gateway on its own port (test_python_sdk.py's gateway holds the session's), with the
same policies; the authorization server issues JWTs for whatever resource a client asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp import web

from tests.interop.chromium import chromium_binary
from tests.interop.conftest import HERE, free_port, interop_gateway_config, node_binary, stop
from tests.interop.conftest import assert_token_never_reached_upstream, decoded_claims
from tests.interop.test_python_sdk import POLICIES, client_credentials

SCRIPT = HERE / "typescript_client.mjs"
SDK = HERE / "node_modules" / "@modelcontextprotocol" / "sdk"


@pytest.fixture(scope="module")
def ts_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ts_public_url(ts_port: int) -> str:
    return f"http://127.0.0.1:{ts_port}/mcp"


@pytest.fixture(scope="module")
def ts_gateway(start_gateway_process, authorization_server, recording_upstream, ts_port, ts_public_url, tmp_path_factory):
    policies = tmp_path_factory.mktemp("ts-policies")
    (policies / "interop.cedar").write_text(POLICIES)
    gateway = start_gateway_process(interop_gateway_config(
        port=ts_port, public_url=ts_public_url, issuer=authorization_server.issuer,
        upstream_url=recording_upstream.url, policies=policies, name="Interop MCP server (TypeScript SDK)"), port=ts_port)
    yield gateway
    stop(gateway.process)


def run_typescript_client(gateway, *args: str) -> dict:
    node = shutil.which("node")
    if node is None or not SDK.is_dir():
        pytest.fail("the interop tests need node and `npm ci --prefix tests/interop` (make test does both)")
    try:
        done = subprocess.run([node, str(SCRIPT), *args], cwd=HERE, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"typescript_client.mjs timed out\nstderr: {exc.stderr}\ngateway log:\n{gateway.log_text()}") from None
    assert done.returncode == 0, f"typescript_client.mjs failed\nstderr: {done.stderr}\ngateway log:\n{gateway.log_text()}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output\nstderr: {done.stderr}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def authorization_code_run(ts_gateway, ts_public_url) -> dict:
    return run_typescript_client(ts_gateway, ts_public_url)


@pytest.fixture(scope="module")
def client_credentials_run(ts_gateway, ts_public_url, authorization_server) -> dict:
    return run_typescript_client(ts_gateway, ts_public_url, "--client-credentials", "gateway-test", "gateway-secret",
                                 authorization_server.issuer)


def test_d1_interop_typescript_sdk_completes_oauth_and_calls_tools(authorization_code_run, authorization_server, ts_public_url):
    run = authorization_code_run
    # The first connect met the 401 and went through discovery, registration and the authorization request.
    assert run["first_attempt_unauthorized"] is True
    assert run["client_id"]
    [authorization] = run["authorization_urls"]
    assert authorization.startswith(f"{authorization_server.issuer}/auth?")
    query = parse_qs(urlsplit(authorization).query)
    assert query["resource"] == [ts_public_url]
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["mcp"]  # from the 401 challenge (SEP-835 order: challenge, PRM, client metadata)
    assert query["client_id"] == [run["client_id"]]
    assert run["callback_iss"] == authorization_server.issuer  # RFC 9207, checked by the script

    claims = decoded_claims(run["access_token"])
    assert claims["aud"] == ts_public_url
    assert claims["iss"] == authorization_server.issuer
    assert claims["sub"] == "alice"
    assert claims["scope"] == "mcp"

    # Policies filtered the list (admin_reset needs mcp.admin) and allowed the calls.
    assert sorted(run["tools"]) == ["add", "countdown", "echo"]
    assert run["echo"] == "from typescript"
    assert run["echo_is_error"] is False
    assert run["session_terminated"] is True  # DELETE with Mcp-Session-Id went through the gateway


def test_u4_interop_typescript_sdk_progress_passes_through_sse(authorization_code_run):
    run = authorization_code_run
    assert run["countdown"] == "liftoff"
    assert run["progress"] >= 1, run
    assert run["progress_values"][-1] == [2, 2]


def test_u1_interop_typescript_sdk_token_never_reaches_upstream(authorization_code_run, client_credentials_run,
                                                                  recording_upstream, ts_gateway):
    for run in (authorization_code_run, client_credentials_run):
        assert_token_never_reached_upstream(recording_upstream, run["access_token"])
        assert run["access_token"] not in ts_gateway.log_text()


def test_t2_interop_typescript_sdk_client_credentials_provider(client_credentials_run, authorization_server, ts_public_url):
    run = client_credentials_run
    claims = decoded_claims(run["access_token"])
    assert claims["aud"] == ts_public_url
    assert claims["client_id"] == "gateway-test"
    assert "mcp" in claims["scope"].split()
    assert sorted(run["tools"]) == ["add", "countdown", "echo"]
    assert run["echo"] == "from typescript"
    assert run["progress"] >= 1


def test_d1_interop_typescript_sdk_negotiates_a_protocol_version_it_supports(authorization_code_run):
    run = authorization_code_run
    assert run["latest_protocol_version"] == "2025-11-25"
    assert run["negotiated_protocol_version"] in run["supported_protocol_versions"]
    assert run["negotiated_protocol_version"] == run["latest_protocol_version"]


def test_m5_interop_typescript_sdk_reads_a_policy_denial_as_an_http_403_error(authorization_code_run):
    """What the SDK (1.x) makes of the gateway's policy denial of ``prompts/get`` (no policy permits it here;
    Z3: 403, a JSON-RPC error body with the request id, no challenge):
    not an ``UnauthorizedError`` and no re-authorization (no ``insufficient_scope`` challenge), but a
    ``StreamableHTTPError`` with ``code`` 403 whose message carries the body's text; the JSON-RPC error
    itself is never delivered as the call's answer (only the Python SDK does that, test_fastmcp.py)."""
    denied = authorization_code_run["denied"]
    assert denied["name"] == "StreamableHTTPError" and denied["code"] == 403, denied
    assert '"code": -32003' in denied["message"] and "Error POSTing to endpoint" in denied["message"], denied
    assert len(authorization_code_run["authorization_urls"]) == 1  # the denial started no new authorization


# -- the browser-origin path: the TypeScript SDK client in headless Chromium -------------------------------

BROWSER_DIR = HERE / "browser"
ROLLDOWN = HERE / "node_modules" / ".bin" / "rolldown"
CLIENT_PACKAGE = HERE / "node_modules" / "@modelcontextprotocol" / "client" / "package.json"


@pytest.fixture(scope="module")
def browser_bundle(tmp_path_factory) -> Path:
    """``browser/entry.mjs`` bundled for the browser with rolldown (installed with the Inspector's vite)."""
    out = tmp_path_factory.mktemp("browser") / "bundle.js"
    node_dir = str(Path(node_binary()).parent)
    done = subprocess.run([str(ROLLDOWN), str(BROWSER_DIR / "entry.mjs"), "--platform", "browser", "--format", "iife",
                           "-o", str(out)], cwd=HERE, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{node_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    return out


async def open_in_chromium(url: str, results: asyncio.Queue, profile: Path, seconds: float = 60) -> dict:
    """Loads ``url`` in headless Chromium and waits for the page to post its report."""
    browser = await asyncio.create_subprocess_exec(
        chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-sync", "--disable-component-update", f"--user-data-dir={profile}",
        url, stdout=asyncio.subprocess.DEVNULL, stderr=(profile.parent / "chromium.log").open("w"),
        start_new_session=True)  # its own process group: the helper processes are stopped with it
    try:
        return await asyncio.wait_for(results.get(), seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        await browser.wait()


async def test_e1_interop_typescript_sdk_in_chromium_calls_a_tool_from_an_allowed_origin(
        start_gateway_process, authorization_server, recording_upstream, browser_bundle, tmp_path):
    """A page on its own origin (``http://127.0.0.1:P``) in headless Chromium runs the SDK's client package
    (the one the Inspector ships, 2026-07-28 pinned) against the gateway: the browser sends ``Origin`` and
    preflights every request, the gateway (``allowed_origins`` naming that origin) answers CORS, and the
    page lists the filtered tools, calls ``echo`` and meets a policy denial (403, read by the SDK as an
    HTTP error with status 403)."""
    results: asyncio.Queue = asyncio.Queue()

    async def report(request: web.Request) -> web.Response:
        await results.put(json.loads(await request.text()))
        return web.Response(text="ok")

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(BROWSER_DIR / "page.html")

    async def bundle(_: web.Request) -> web.FileResponse:
        return web.FileResponse(browser_bundle)

    app = web.Application()
    app.router.add_get("/page.html", page)
    app.router.add_get("/bundle.js", bundle)
    app.router.add_post("/result", report)
    runner = web.AppRunner(app)
    await runner.setup()
    page_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    origin = f"http://127.0.0.1:{page_port}"
    try:
        port = free_port()
        public_url = f"http://127.0.0.1:{port}/mcp"
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "interop.cedar").write_text(POLICIES)
        config = interop_gateway_config(port=port, public_url=public_url, issuer=authorization_server.issuer,
                                        upstream_url=recording_upstream.url, policies=policies)
        config["server"]["allowed_origins"] = [origin]
        gateway = start_gateway_process(config, port=port)
        token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", public_url)
        seen = len(recording_upstream.requests())
        run = await open_in_chromium(f"{origin}/page.html#" + urlencode({"url": public_url, "token": token}),
                                     results, tmp_path / "profile")
    finally:
        await runner.cleanup()
    assert "error" not in run, f"{run['error']}\ngateway log:\n{gateway.log_text()}"
    assert run["origin"] == origin
    assert run["protocol_version"] == "2026-07-28"
    assert run["tools"] == ["add", "countdown", "echo"]  # admin_reset needs mcp.admin
    assert run["echo"] == "from a browser"
    assert run["denied"]["status"] == 403 and "-32003" in run["denied"]["message"], run["denied"]
    access = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    methods = {line.get("method") for line in access if line.get("logger") == "gateway.access"}
    assert {"OPTIONS", "POST"} <= methods, methods  # a real browser preflighted the cross-origin requests
    upstream = recording_upstream.requests()[seen:]
    assert upstream and all(r["headers"].get("mcp-protocol-version") == ["2026-07-28"] for r in upstream if r["method"] == "POST")
    assert_token_never_reached_upstream(recording_upstream, token)
