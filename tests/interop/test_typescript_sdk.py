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

import json
import shutil
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.interop.conftest import HERE, free_port, interop_gateway_config, stop
from tests.interop.conftest import assert_token_never_reached_upstream, decoded_claims
from tests.interop.test_python_sdk import POLICIES

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
