"""O1: the admin listener (``server.admin_port``) serves /healthz, /readyz and /metrics, against real
``serve`` processes: off the main port, answering while the main listener is saturated, owned by worker 0
when there are several workers, and still answering (503 / 200) while the gateway drains (E3)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.app import ADMIN_MAX_CONNECTIONS
from gateway.config import ConfigError, parse_config
from tests.factories import RESOURCE, bearer
from tests.upstreams import Received, sse_event, start_sse

ADMIN_PATHS = ("/healthz", "/readyz", "/metrics")
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
        await response.read()
        return response.status


async def closed_at_once(port: int) -> bool:
    """Whether a new connection to ``port`` is closed without an answer within half a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 0.5) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


def held_until(gate: asyncio.Event):
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}))
        await asyncio.wait_for(gate.wait(), 30)
        await response.write(sse_event({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
        await response.write_eof()
        return response

    return behaviour


async def test_O1_probes_and_metrics_answer_on_the_admin_port_and_not_on_the_main_port(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url)
    assert gateway.admin_url != gateway.url
    async with aiohttp.ClientSession() as http:
        for path in ADMIN_PATHS:
            assert await status_of(http, f"{gateway.admin_url}{path}") == 200, path
            # Not through the main port, so an ingress in front of it never exposes them.
            assert await status_of(http, f"{gateway.url}{path}") == 404, path
        async with http.get(f"{gateway.admin_url}/metrics") as response:
            assert "mcp_gateway_requests_total" in await response.text()
            assert response.headers["Server"] == "mcp-auth-gateway"
        async with http.get(f"{gateway.admin_url}/readyz") as response:
            assert (await response.json())["status"] == "ready"
        # The admin port serves nothing else: no MCP endpoint, no metadata.
        assert await status_of(http, f"{gateway.admin_url}/mcp") == 404
        assert await status_of(http, f"{gateway.admin_url}/.well-known/oauth-protected-resource/mcp") == 404
    assert "admin listener" in gateway.log_text()


async def test_O1_admin_port_0_keeps_the_probes_on_the_main_port(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url, server={"admin_port": 0})
    assert gateway.admin_url == gateway.url
    async with aiohttp.ClientSession() as http:
        for path in ADMIN_PATHS:
            assert await status_of(http, f"{gateway.url}{path}") == 200, path
    assert "admin listener" not in gateway.log_text()


async def test_O1_probes_answer_while_the_main_listener_is_saturated(serve_gateway, upstream, issuer):
    """max_connections held by slow clients: half send half a request (slowloris), half have tool calls in
    flight on a slow upstream. The main port refuses one more at once; the admin port answers every probe."""
    gate = asyncio.Event()
    upstream.behaviour = held_until(gate)
    gateway = await serve_gateway(upstream.url, server={"max_connections": 6, "header_timeout": "20s"})
    slowloris = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.url))
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        slowloris.append((reader, writer))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as calls, aiohttp.ClientSession() as probes:
        streams = [await calls.post(f"{gateway.url}/mcp", json=CALL, headers=bearer(issuer.mint())) for _ in range(3)]
        assert [s.status for s in streams] == [200] * 3
        await asyncio.sleep(0.2)
        assert await closed_at_once(port_of(gateway.url)), "the main listener should be at max_connections"
        started = time.monotonic()
        for _ in range(5):
            for path in ADMIN_PATHS:
                assert await status_of(probes, f"{gateway.admin_url}{path}") == 200, path
        assert time.monotonic() - started < 5
        async with probes.get(f"{gateway.admin_url}/metrics") as response:
            assert "mcp_gateway_open_streams 3.0" in await response.text()
        gate.set()
        for stream in streams:
            await stream.read()
            stream.release()
    for _, writer in slowloris:
        writer.close()
    assert "server.max_connections" in gateway.log_text()


async def test_O1_the_admin_listener_has_its_own_connection_cap(serve_gateway, upstream):
    """R1 on the admin port too: past ADMIN_MAX_CONNECTIONS open connections one more is closed at once,
    and the main port does not notice."""
    gateway = await serve_gateway(upstream.url, server={"header_timeout": "20s"})
    held = []
    for _ in range(ADMIN_MAX_CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway.admin_url))
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        held.append(writer)
    await asyncio.sleep(0.2)
    assert await closed_at_once(port_of(gateway.admin_url))
    async with aiohttp.ClientSession() as http:
        assert await status_of(http, f"{gateway.url}/.well-known/oauth-protected-resource/mcp") == 200
    for writer in held:
        writer.close()


async def test_O1_while_draining_readyz_says_503_and_healthz_200_on_the_admin_port(serve_gateway, upstream, issuer):
    gate = asyncio.Event()
    upstream.behaviour = held_until(gate)
    gateway = await serve_gateway(upstream.url, server={"shutdown_grace": "10s"})
    async with aiohttp.ClientSession() as http:
        call = await http.post(f"{gateway.url}/mcp", json=CALL, headers=bearer(issuer.mint()))
        await call.content.readuntil(b"\n\n")
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert await status_of(http, f"{gateway.admin_url}/readyz") == 503  # Kubernetes stops routing here
        assert await status_of(http, f"{gateway.admin_url}/healthz") == 200  # ...and does not kill the drain
        gate.set()
        assert b'"result"' in await asyncio.wait_for(call.content.read(), 5)
    assert await asyncio.wait_for(gateway.process.wait(), 10) == 0


async def test_O1_with_workers_worker_0_owns_the_admin_port(serve_gateway, upstream, issuer, tmp_path):
    key = tmp_path / "session.key"
    key.write_text("k" * 64)
    gateway = await serve_gateway(upstream.url, server={"workers": 2, "session_key_file": str(key)})
    async with aiohttp.ClientSession() as http:
        for _ in range(10):
            async with http.post(f"{gateway.url}/mcp", json=CALL, headers=bearer(issuer.mint())) as response:
                assert response.status == 200
        for path in ADMIN_PATHS:
            assert await status_of(http, f"{gateway.admin_url}{path}") == 200, path
            assert await status_of(http, f"{gateway.url}{path}") == 404, path
    # One owner: a second bind of the admin port (without SO_REUSEPORT) would have failed a worker, and the
    # parent stops every worker when one fails.
    await asyncio.sleep(0.3)
    assert gateway.process.returncode is None, gateway.log_text()
    assert gateway.log_text().count("admin listener") == 1


@pytest.mark.parametrize("server, problem", [
    ({"port": 8080, "admin_port": 8080}, "server.admin_port: 8080 is server.port"),
    ({"admin_port": 70000}, "server.admin_port: must be at least 0 and at most 65535"),
    ({"admin_port": "nine"}, "server.admin_port: must be a whole number"),
])
def test_O1_a_bad_admin_port_is_refused_naming_the_key(server, problem, policies_dir):
    data = {"server": {"public_url": RESOURCE, **server}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": str(policies_dir)}}
    with pytest.raises(ConfigError) as error:
        parse_config(data, source="gateway.yaml")
    assert any(p.startswith(f"gateway.yaml: {problem}") for p in error.value.problems), error.value.problems


def test_O1_admin_port_defaults_to_9090(policies_dir):
    data = {"server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": str(policies_dir)}}
    assert parse_config(data).server.admin_port == 9090


async def test_O1_an_admin_port_in_use_stops_the_start_naming_the_key(serve_gateway, upstream):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound, not listening: the gateway cannot bind it, probes are refused
        with pytest.raises(AssertionError, match="did not become ready") as failure:
            await serve_gateway(upstream.url, server={"admin_port": busy.getsockname()[1]})
    assert "admin listener (server.admin_port)" in str(failure.value)
