"""Shared fixtures: a recording upstream and a gateway in front of it, both on real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.observe.audit import AUDIT_FLUSH_S
from tests.factories import RESOURCE, TestIssuer, bearer
from tests.upstreams import RecordingUpstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


@pytest.fixture(autouse=True)
def gateway_logs(caplog):
    """Refusals are logged at INFO; capture them so tests can check reasons (and the absence of tokens)."""
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "allow-all.cedar").write_text("permit (principal, action, resource);\n")
    return folder


@pytest.fixture
async def issuer(aiohttp_server) -> TestIssuer:
    """A real identity provider on loopback: metadata, JWKS, introspection."""
    test_issuer = TestIssuer()
    server = await aiohttp_server(test_issuer.app())
    test_issuer.url = str(server.make_url("")).rstrip("/")
    return test_issuer


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def in_process_gateways() -> list[Gateway]:
    """The gateways ``start_gateway`` started in this test (in this process, on this test's loop)."""
    return []


@pytest.fixture
def audit_lines(audit_file: Path, in_process_gateways: list[Gateway]) -> Callable[[], list[dict]]:
    """The audit events the gateway has recorded so far (audit.file), parsed.

    The gateway writes its audit events in batches (P1: flushed AUDIT_FLUSH_S after the first); on this
    test's own loop the timer cannot run while a test reads, so the reader flushes them first."""

    def read() -> list[dict]:
        for gateway in in_process_gateways:
            gateway.audit.flush()
        return [json.loads(line) for line in audit_file.read_text().splitlines()] if audit_file.exists() else []

    return read


def config_data(upstream_url: str, *, issuer: TestIssuer, policies: Path, audit: Path, **overrides: Any) -> dict:
    """The configuration tests start from: the test issuer (keys found by discovery), ``overrides`` merged in."""
    data = {
        # admin_port 0: in-process gateways (create_app alone) keep /healthz, /readyz, /metrics on their one
        # app; serve_gateway gives its process an admin listener of its own (O1).
        "server": {"public_url": RESOURCE, "host": "127.0.0.1", "port": 0, "admin_port": 0},
        "upstream": {"url": upstream_url},
        "auth": {"issuers": [{"issuer": issuer.url}]},
        "authorization": {"policies": str(policies)},
        "audit": {"file": str(audit)},
    }
    return deep_merge(data, overrides)


@pytest.fixture
def make_config(policies_dir: Path, issuer: TestIssuer, audit_file: Path) -> Callable[..., Config]:
    """A configuration for the test issuer (keys found by discovery) with ``overrides`` merged in."""

    def make(upstream_url: str, **overrides: Any) -> Config:
        data = config_data(upstream_url, issuer=issuer, policies=policies_dir, audit=audit_file, **overrides)
        return parse_config(data, source="test.yaml")

    return make


@pytest.fixture
async def upstream(aiohttp_server):
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app())
    recorder.url = str(server.make_url("/mcp"))
    return recorder


@pytest.fixture
def start_gateway(aiohttp_client, make_config, issuer, in_process_gateways):
    """Starts a gateway in front of ``upstream_url``; returns an aiohttp test client bound to it.

    The client sends a valid token for the test issuer by default; ``authenticated=False`` sends none.
    The started ``Gateway`` is at ``client.gateway``.
    """

    async def start(upstream_url: str, *, authenticated: bool = True, **overrides: Any):
        gateway = Gateway(make_config(upstream_url, **overrides))
        in_process_gateways.append(gateway)
        client = await aiohttp_client(gateway.create_app(), headers=bearer(issuer.mint()) if authenticated else None)
        client.gateway = gateway
        return client

    return start


@dataclass
class ServedGateway:
    """``mcp-auth-gateway serve`` as a real process, exactly as a user runs it, with its log and audit files."""

    url: str
    process: asyncio.subprocess.Process
    folder: Path
    admin_url: str = ""  # O1: /healthz, /readyz, /metrics (the main url when server.admin_port is 0)

    @property
    def log_path(self) -> Path:
        return self.folder / "gateway.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The JSON log lines (logging.format json, the default)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def audit(self) -> list[dict]:
        """The audit events written so far. The process writes them in batches, AUDIT_FLUSH_S after the first
        of a batch (P1), so this reads until the file has stayed the same for longer than that (≤ 2 s)."""
        path = self.folder / "audit.jsonl"
        text, quiet_since, deadline = None, time.monotonic(), time.monotonic() + 2.0
        while True:
            now_text = path.read_text() if path.exists() else ""
            now = time.monotonic()
            if now_text != text:
                text, quiet_since = now_text, now
            elif now - quiet_since > AUDIT_FLUSH_S + 0.3 or now > deadline:
                return [json.loads(line) for line in text.splitlines()]
            time.sleep(0.05)


@pytest.fixture
async def serve_gateway(tmp_path: Path, issuer: TestIssuer, policies_dir: Path):
    """Starts ``python -m gateway serve --config FILE`` in front of ``upstream_url``; stops it afterwards.

    ``overrides`` are merged into the configuration as for ``make_config``; server.admin_port is a free
    port of its own unless the overrides set it (O1: ``admin_url``). Waits for ``/readyz`` while letting
    this test's event loop serve the issuer (its JWKS is fetched during start-up)."""
    started: list[ServedGateway] = []

    async def start(upstream_url: str, **overrides: Any) -> ServedGateway:
        folder = tmp_path / f"gateway-{len(started)}"
        folder.mkdir()
        port = free_port()
        data = config_data(upstream_url, issuer=issuer, policies=policies_dir, audit=folder / "audit.jsonl", **overrides)
        data["server"]["port"] = port
        if "admin_port" not in overrides.get("server", {}):
            data["server"]["admin_port"] = free_port()
        admin_port = data["server"]["admin_port"] or port
        (folder / "gateway.yaml").write_text(json.dumps(data))  # JSON is YAML
        with (folder / "gateway.log").open("w") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(folder / "gateway.yaml"),
                stdout=log, stderr=log, cwd=Path(__file__).parent.parent)
        served = ServedGateway(url=f"http://127.0.0.1:{port}", process=process, folder=folder,
                               admin_url=f"http://127.0.0.1:{admin_port}")
        started.append(served)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if process.returncode is not None:
                    break
                try:
                    async with http.get(f"{served.admin_url}/readyz") as response:
                        if response.status == 200:
                            return served
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the gateway did not become ready:\n{served.log_text()}")

    yield start
    for served in started:
        if served.process.returncode is None:
            served.process.terminate()
            try:
                await asyncio.wait_for(served.process.wait(), 10)
            except TimeoutError:
                served.process.kill()
                await served.process.wait()
