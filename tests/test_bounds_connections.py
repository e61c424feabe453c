"""R1 against a real ``serve`` process: a slow or idle client cannot hold a connection for longer than the
limits say, and the listener keeps answering while somebody tries.

Timeouts are set to fractions of a second here so the suite stays fast; the defaults are in
docs/configuration.md.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web

from tests.factories import bearer
from tests.upstreams import Received, sse_event, start_sse

LIMITS = {"header_timeout": "500ms", "body_timeout": "500ms", "keepalive_timeout": "1s"}
# A request any client may make on the main port without a token (the probes are on the admin port, O1).
PUBLIC = b"/.well-known/oauth-protected-resource/mcp"


def port_of(gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (reads to EOF, discarding any answer)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except ConnectionResetError:
        pass  # closed with a reset (abort): closed all the same
    return time.monotonic() - started


async def test_r1_request_headers_that_do_not_arrive_in_time_close_the_connection(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url, server=LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")  # and then nothing
    await writer.drain()
    assert 0.3 < await closed_within(reader, 3) < 2
    writer.close()
    # Nothing but silence: the same.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    assert await closed_within(reader, 3) < 2
    writer.close()
    assert upstream.received == []


async def test_r1_a_slow_second_request_on_a_kept_alive_connection_is_timed_too(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url, server={**LIMITS, "keepalive_timeout": "30s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(b"GET " + PUBLIC + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET " + PUBLIC + b" HTTP/1.1\r\nHost: x\r\n")  # a second request that never completes
    await writer.drain()
    assert await closed_within(reader, 5) < 2  # header_timeout, not the 30 s keep-alive
    writer.close()


async def test_r1_an_idle_kept_alive_connection_closes_after_keepalive_timeout(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url, server=LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(b"GET " + PUBLIC + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    assert 0.5 < await closed_within(reader, 5) < 3
    writer.close()


async def test_r1_a_body_that_does_not_arrive_in_time_is_408_and_never_forwarded(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, server=LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    head = (f"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {issuer.mint()}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    writer.write(head.encode() + b'{"jsonrpc":')
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 3)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    assert upstream.received == []
    assert gateway.audit()[-1]["reason"] == "body_timeout"


async def test_r1_the_connection_cap_holds_and_the_listener_recovers(serve_gateway, upstream):
    gateway = await serve_gateway(upstream.url, server={**LIMITS, "max_connections": 20})
    held = [await asyncio.open_connection("127.0.0.1", port_of(gateway)) for _ in range(20)]
    for _, writer in held:
        writer.write(b"GET " + PUBLIC + b" HTTP/1.1\r\n")  # partial, without a token: the slowloris shape
        await writer.drain()
    await asyncio.sleep(0.1)
    # One more is closed at once (and counted), instead of exhausting descriptors.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gateway))
    writer.write(b"GET " + PUBLIC + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await closed_within(reader, 2) < 0.5
    writer.close()
    # The held connections are closed by header_timeout, and probes are answered again.
    await asyncio.sleep(0.8)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}{PUBLIC.decode()}", timeout=aiohttp.ClientTimeout(total=2)) as response:
            assert response.status == 200
    for held_reader, held_writer in held:
        assert await closed_within(held_reader, 1) < 1
        held_writer.close()
    assert "server.max_connections" in gateway.log_text()


async def test_r1_a_long_stream_is_not_cut_by_the_header_timer(serve_gateway, upstream, issuer):
    async def slow_stream(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        for i in range(4):  # 1.2 s in all: longer than header_timeout and body_timeout
            await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": i}}))
            await asyncio.sleep(0.3)
        await response.write(sse_event({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
        await response.write_eof()
        return response

    upstream.behaviour = slow_stream
    gateway = await serve_gateway(upstream.url, server=LIMITS)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}}
    async with aiohttp.ClientSession(headers=bearer(issuer.mint())) as http:
        async with http.post(f"{gateway.url}/mcp", data=json.dumps(call),
                             headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}) as response:
            text = await response.text()
    assert response.status == 200 and text.count("data: ") == 5


def test_r1_header_clock_stops_when_the_headers_are_parsed_not_when_the_handler_runs():
    """Under CPU starvation a request can be parsed, whole and in time, and reach the application several loop
    turns later. The header timer must not close it meanwhile (the soak saw complete requests cut). The
    starvation is real: right after aiohttp's parser has read the headers, a callback holds the event loop for
    longer than ``header_timeout``, as a burst of other requests' work would. On the loop ``serve`` runs on
    (uvloop, gateway.app.run), due timers run before the callbacks queued meanwhile, so a clock stopped only
    when the request reached the middleware fired first and closed the connection."""
    from gateway.app import run

    run(_header_clock_under_starvation())


async def _header_clock_under_starvation() -> None:
    from aiohttp.web_protocol import RequestHandler

    from gateway.edge.connections import ConnectionGuard

    header_timeout = 0.3
    guard = ConnectionGuard(header_timeout=header_timeout, max_connections=16)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    starved: list[float] = []

    class StarvedAfterParsing(RequestHandler):  # aiohttp's own protocol, then a busy loop
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if b"\r\n\r\n" in data and not starved:
                starved.append(header_timeout * 2)
                loop.call_soon(time.sleep, header_timeout * 2)  # the loop is busy elsewhere before the handler runs

    def protocol():
        return guard.protocol(StarvedAfterParsing(runner.server, loop=loop))

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(header_timeout / 3)  # accepted: the connection's header clock runs
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the whole request, well within the timeout
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 5)
        assert starved, "the starvation was not injected"
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert guard.header_timeouts == 0
        # The clock still runs for a request that never completes on the same connection.
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await closed_within(reader, 5) < header_timeout + 1
        assert guard.header_timeouts == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()
