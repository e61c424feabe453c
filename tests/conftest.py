"""Shared fixtures: a recording upstream and a gateway in front of it, both on real 127.0.0.1 sockets."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import Config, parse_config
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


@pytest.fixture
def policies_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "allow-all.cedar").write_text("permit (principal, action, resource);\n")
    return folder


@pytest.fixture
def make_config(policies_dir: Path) -> Callable[..., Config]:
    def make(upstream_url: str, **overrides: Any) -> Config:
        data = {
            "server": {"public_url": "https://mcp.example.com/mcp", "host": "127.0.0.1", "port": 0},
            "upstream": {"url": upstream_url},
            "auth": {"issuers": [{"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/jwks"}]},
            "authorization": {"policies": str(policies_dir)},
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
def start_gateway(aiohttp_client, make_config):
    """Starts a gateway in front of ``upstream_url``; returns an aiohttp test client bound to it."""

    async def start(upstream_url: str, **overrides: Any):
        gateway = Gateway(make_config(upstream_url, **overrides))
        return await aiohttp_client(gateway.create_app())

    return start
