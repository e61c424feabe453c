"""E3: SIGTERM drains. The gateway runs as a real process (``mcp-auth-gateway serve``), as in a pod."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import aiohttp
from aiohttp import web

from tests.conftest import free_port
from tests.factories import RESOURCE, bearer
from tests.upstreams import Received, sse_event, start_sse


async def start_process(tmp_path, issuer, upstream_url: str, grace: str = "10s"):
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": RESOURCE, "shutdown_grace": grace, "admin_port": 0},
        "upstream": {"url": upstream_url},
        "auth": {"issuers": [{"issuer": issuer.url}]},
        "authorization": {"policies": str(tmp_path / "policies")},
        "audit": {"enabled": False},
    }
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "all.cedar").write_text("permit (principal, action, resource);\n")
    path = tmp_path / "gateway.json.yaml"
    path.write_text(json.dumps(config))
    log = (tmp_path / "gateway.log").open("w")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", "--config", str(path), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return process, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError((tmp_path / "gateway.log").read_text())


async def test_e3_sigterm_lets_a_long_tool_call_finish_and_exits_0(tmp_path, issuer, upstream, aiohttp_client):
    released = asyncio.Event()

    async def long_call(request: web.Request, received: Received) -> web.StreamResponse:
        if request.method == "GET":  # the standalone stream: open until closed
            response = await start_sse(request)
            await response.write(b": open\n\n")
            await asyncio.sleep(30)
            return response
        response = await start_sse(request)
        await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}))
        await released.wait()
        await response.write(sse_event({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "done"}]}}))
        await response.write_eof()
        return response

    upstream.behaviour = long_call
    process, url = await start_process(tmp_path, issuer, upstream.url)
    token = issuer.mint()
    async with aiohttp.ClientSession(headers=bearer(token)) as http:
        call = await http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}})
        assert (await call.content.readuntil(b"\n\n")).startswith(b"event: message")
        stream = await http.get(f"{url}/mcp", headers={"Accept": "text/event-stream"})
        assert await stream.content.readuntil(b"\n\n") == b": open\n\n"

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # The standalone stream ends cleanly (no error for the client), at once.
        assert await asyncio.wait_for(stream.content.read(), 5) == b""
        # The call in flight still completes.
        await asyncio.sleep(0.5)
        released.set()
        rest = await asyncio.wait_for(call.content.read(), 5)
        assert b'"done"' in rest
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert time.monotonic() - started < 8
    # New connections are refused once draining began.
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=1)):
                raise AssertionError("still accepting after exit")
        except aiohttp.ClientConnectionError:
            pass


async def test_e3_calls_still_running_at_the_end_of_the_grace_are_cut_and_exit_is_0(tmp_path, issuer, upstream):
    async def never_ends(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}))
        await asyncio.sleep(60)
        return response

    upstream.behaviour = never_ends
    process, url = await start_process(tmp_path, issuer, upstream.url, grace="1s")
    async with aiohttp.ClientSession(headers=bearer(issuer.mint())) as http:
        call = await http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}})
        await call.content.readuntil(b"\n\n")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert time.monotonic() - started < 5


async def test_u4_a_client_leaving_an_idle_stream_ends_the_relay(tmp_path, issuer, upstream):
    """Without handler cancellation an abandoned idle stream would hold its upstream connection until the
    upstream next wrote something; now the relay ends (and closes the upstream response) at once."""

    async def idle_stream(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(b": open\n\n")
        await asyncio.sleep(30)
        return response

    async def open_streams(http: aiohttp.ClientSession, url: str) -> float:
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("mcp_gateway_open_streams ")))

    upstream.behaviour = idle_stream
    process, url = await start_process(tmp_path, issuer, upstream.url)
    try:
        async with aiohttp.ClientSession() as plain:
            async with aiohttp.ClientSession(headers=bearer(issuer.mint())) as http:
                stream = await http.get(f"{url}/mcp", headers={"Accept": "text/event-stream"})
                await stream.content.readuntil(b"\n\n")
                assert await open_streams(plain, url) == 1
                stream.close()  # the client goes away without a word
            for _ in range(50):
                if await open_streams(plain, url) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await open_streams(plain, url) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert '"status": 499' in (tmp_path / "gateway.log").read_text()
