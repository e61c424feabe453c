"""Shared fixtures: a recording upstream and a gateway in front of it, both on real 127.0.0.1 sockets."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import Config, parse_config
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
def audit_lines(audit_file: Path) -> Callable[[], list[dict]]:
    """The audit events the gateway has written so far (audit.file), parsed."""
    import json

    return lambda: [json.loads(line) for line in audit_file.read_text().splitlines()] if audit_file.exists() else []


@pytest.fixture
def make_config(policies_dir: Path, issuer: TestIssuer, audit_file: Path) -> Callable[..., Config]:
    """A configuration for the test issuer (keys found by discovery) with ``overrides`` merged in."""

    def make(upstream_url: str, **overrides: Any) -> Config:
        data = {
            "server": {"public_url": RESOURCE, "host": "127.0.0.1", "port": 0},
            "upstream": {"url": upstream_url},
            "auth": {"issuers": [{"issuer": issuer.url}]},
            "authorization": {"policies": str(policies_dir)},
            "audit": {"file": str(audit_file)},
        }
        return parse_config(deep_merge(data, overrides), source="test.yaml")

    return make


@pytest.fixture
async def upstream(aiohttp_server):
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app())
    recorder.url = str(server.make_url("/mcp"))
    return recorder


@pytest.fixture
def start_gateway(aiohttp_client, make_config, issuer):
    """Starts a gateway in front of ``upstream_url``; returns an aiohttp test client bound to it.

    The client sends a valid token for the test issuer by default; ``authenticated=False`` sends none.
    The started ``Gateway`` is at ``client.gateway``.
    """

    async def start(upstream_url: str, *, authenticated: bool = True, **overrides: Any):
        gateway = Gateway(make_config(upstream_url, **overrides))
        client = await aiohttp_client(gateway.create_app(), headers=bearer(issuer.mint()) if authenticated else None)
        client.gateway = gateway
        return client

    return start
