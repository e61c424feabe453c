"""The upstream hop's own HTTP/1.1 client (P1, U4, R2, R3), over real 127.0.0.1 sockets.

Against a real aiohttp upstream, the MCP Python SDK's server (uvicorn) and, where the framing or the timing
of a close has to be exact, a bare asyncio server (``RawUpstream``) that counts connections and requests.
Correctness only: speed is ``make bench``'s business.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from gateway.upstream.client import (
    READ_HIGH_WATER,
    WRITE_PIECE,
    BodyError,
    ConnectError,
    ConnectTimeout,
    InvalidRequest,
    RequestFailed,
    ResponseTimeout,
    UpstreamClient,
)
from tests.conftest import free_port
from tests.upstreams import Received, RecordingUpstream, gated_sse, sse_event, start_sse

MiB = 1024 * 1024
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}}).encode()
ROOT = Path(__file__).parent.parent


def request_headers(host: str, **extra: str) -> CIMultiDict[str]:
    headers = CIMultiDict(JSON)
    headers["Host"] = host
    headers.update(extra)
    return headers


@pytest.fixture
async def make_client():
    """``UpstreamClient``s for a URL, closed after the test."""
    made: list[UpstreamClient] = []

    def make(url: str, *, limit: int = 8, connect_timeout: float = 5.0) -> UpstreamClient:
        client = UpstreamClient(url, limit=limit, connect_timeout=connect_timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def post(client: UpstreamClient, body: bytes = CALL, *, timeout: float = 10.0, **headers: str):
    return await client.request("POST", request_headers(client.host_header, **headers), body, timeout=timeout)


# -- a bare server: exact framing, exact closes -------------------------------------------------------------------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


def ok(body: bytes = b'{"jsonrpc":"2.0","id":1,"result":{}}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class RawUpstream:
    """An HTTP/1.1 server on a bare asyncio socket. ``answer`` writes the response to one request and says
    whether the connection stays open for the next. Counts connections opened and closed, and requests."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/mcp"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.answer(reader, writer, head + body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.closed += 1
            writer.close()


# -- streaming, SSE, chunked ---------------------------------------------------------------------------------------


async def test_u4_sse_events_arrive_one_by_one_not_buffered(aiohttp_server, make_client):
    gate = asyncio.Event()
    upstream = RecordingUpstream(behaviour=gated_sse(gate))
    server = await aiohttp_server(upstream.app())
    client = make_client(str(server.make_url("/mcp")))
    response = await post(client)
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    assert response.content_length is None  # chunked
    first = await asyncio.wait_for(response.read_chunk(), 5)  # while the upstream waits for the gate
    assert b'"progress": 1' in first and b'"done"' not in first
    gate.set()
    rest = b"".join([chunk async for chunk in response])
    assert b'"done": true' in rest
    assert response.complete
    response.release()


async def test_chunked_body_is_reassembled_in_order_and_streamed(aiohttp_server, make_client):
    pieces = [bytes([65 + i]) * (1000 + i * 7919) for i in range(20)]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handler)
    server = await aiohttp_server(app)
    client = make_client(str(server.make_url("/mcp")))
    response = await post(client)
    assert response.headers["Transfer-Encoding"] == "chunked"
    chunks = [chunk async for chunk in response]
    assert b"".join(chunks) == b"".join(pieces)
    assert len(chunks) > 1  # relayed as it came, not read whole
    assert response.complete


async def test_repeated_headers_are_kept(make_client):
    async def two_types(reader, writer, request):
        writer.write(ok(extra=b"Content-Type: text/html\r\nX-Twice: a\r\nX-Twice: b\r\n"))
        return True

    async with RawUpstream(two_types) as raw:
        response = await post(make_client(raw.url))
        assert response.headers.getall("Content-Type") == ["application/json", "text/html"]
        assert response.headers.getall("x-twice") == ["a", "b"]


async def test_100_continue_is_skipped(make_client):
    async def continues(reader, writer, request):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"{}"))
        return True

    async with RawUpstream(continues) as raw:
        client = make_client(raw.url)
        response = await post(client)
        assert response.status == 200 and "Link" not in response.headers
        assert await response.read() == b"{}"
        assert (await (await post(client)).read()) == b"{}"  # and the connection is still in step
        assert raw.connections == 1


async def test_a_close_delimited_body_ends_with_the_connection(make_client):
    async def until_close(reader, writer, request):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"a\":")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"1}")
        return False  # then the server closes

    async with RawUpstream(until_close) as raw:
        client = make_client(raw.url)
        response = await post(client)
        assert response.content_length is None
        assert await response.read() == b'{"a":1}'
        assert response.complete
        await asyncio.sleep(0.05)
        assert client.pool.size == 0  # not kept: the connection is gone


async def test_a_content_length_body_cut_short_is_a_body_error(make_client):
    async def truncated(reader, writer, request):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
        return False

    async with RawUpstream(truncated) as raw:
        response = await post(make_client(raw.url))
        with pytest.raises(BodyError):
            await response.read()
        assert not response.complete


async def test_a_malformed_answer_fails_before_headers(make_client):
    async def garbage(reader, writer, request):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        return True

    async with RawUpstream(garbage) as raw:
        client = make_client(raw.url)
        with pytest.raises(RequestFailed):
            await post(client)
        await asyncio.sleep(0.05)
        assert client.pool.size == 0 and raw.closed == 1


async def test_a_gzip_answer_is_decoded(make_client):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"text": "z" * 100_000}}).encode()

    async def gzipped(reader, writer, request):
        writer.write(ok(gzip.compress(body), extra=b"Content-Encoding: gzip\r\n"))
        return True

    async with RawUpstream(gzipped) as raw:
        response = await post(make_client(raw.url))
        assert response.content_length is None  # the decoded length is unknown
        assert await response.read() == body


async def test_an_unknown_content_encoding_is_refused(make_client):
    async def brotli(reader, writer, request):
        writer.write(ok(b"\x00\x01", extra=b"Content-Encoding: br\r\n"))
        return True

    async with RawUpstream(brotli) as raw:
        with pytest.raises(RequestFailed, match="Content-Encoding"):
            await post(make_client(raw.url))


# -- keep-alive, and never twice ----------------------------------------------------------------------------------


async def test_p1_two_sequential_requests_use_one_connection(aiohttp_server, make_client):
    peers: list[tuple] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    app = web.Application()
    app.router.add_route("*", "/mcp", handler)
    server = await aiohttp_server(app)
    client = make_client(str(server.make_url("/mcp")))
    for _ in range(3):
        response = await post(client)
        await response.read()
        response.release()
    assert len(peers) == 3 and len(set(peers)) == 1
    assert client.pool.size == 1 and client.pool.idle == 1


async def test_concurrent_requests_over_a_small_pool_each_get_their_own_answer(make_client):
    """Whole answers arrive in one read, so a connection is back in the pool before the exchange that
    used it resumes; the next exchange on it must not be confused with the last."""
    async def echo_id(reader, writer, request):
        rpc_id = json.loads(request.split(b"\r\n\r\n", 1)[1])["id"]
        writer.write(ok(json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {}}).encode()))
        return True

    async with RawUpstream(echo_id) as raw:
        client = make_client(raw.url, limit=16)  # no waiting: the newest idle connection is taken at once

        async def worker(w: int) -> None:
            for n in range(40):
                rpc_id = w * 1000 + n
                response = await post(client, rpc("tools/call", rpc_id, name="search"), timeout=5)
                assert json.loads(await response.read())["id"] == rpc_id
                response.release()

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(8))), 20)
        assert len(raw.requests) == 320 and raw.connections <= 8


async def test_a_call_cancelled_after_its_whole_answer_arrived_leaves_the_pooled_connection_alone(make_client):
    async def answer(reader, writer, request):
        writer.write(ok())
        return True

    async with RawUpstream(answer) as raw:
        client = make_client(raw.url)
        pool = client.pool
        release = pool.release
        call: asyncio.Task | None = None

        def cancel_then_release(connection) -> None:  # the answer is whole; its caller has not resumed yet
            assert call is not None
            call.cancel()
            release(connection)

        pool.release = cancel_then_release
        call = asyncio.create_task(post(client))
        with pytest.raises(asyncio.CancelledError):
            await call
        pool.release = release
        assert pool.idle == 1
        assert await (await post(client)).read()
        assert raw.connections == 1 and len(raw.requests) == 2


async def test_an_upstream_closing_an_idle_connection_costs_no_request(make_client):
    async def answer_then_close_when_idle(reader, writer, request):
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.05)
        return False  # an idle timeout: the server closes without Connection: close

    async with RawUpstream(answer_then_close_when_idle) as raw:
        client = make_client(raw.url)
        assert (await (await post(client)).read()).startswith(b'{"jsonrpc"')
        await asyncio.sleep(0.2)  # the close arrives while the connection is idle in the pool
        response = await post(client)
        assert response.status == 200 and await response.read()
        assert len(raw.requests) == 2 and raw.connections == 2


async def test_a_close_not_yet_read_by_the_loop_is_found_by_the_peek_at_checkout(make_client):
    """The EOF arrived but the event loop has not read it (reading paused stands in for "not yet"): the
    connection has been idle over a second, so checkout peeks at the socket, sets it aside, and the
    request goes out once, on a new connection."""
    async def answer_then_close(reader, writer, request):
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.05)
        return False

    async with RawUpstream(answer_then_close) as raw:
        client = make_client(raw.url)
        await (await post(client)).read()
        [pooled] = list(client.pool._idle)
        pooled.transport.pause_reading()  # the loop will not see the EOF by itself
        await asyncio.sleep(0.2)
        assert not pooled.closed
        pooled.idle_since -= 2  # idle for over PEEK_AFTER
        response = await post(client)
        assert response.status == 200 and await response.read()
        assert pooled.closed
        assert len(raw.requests) == 2 and raw.connections == 2


async def test_u4_a_request_received_then_the_connection_dies_is_never_resent(make_client):
    async def dies(reader, writer, request):
        writer.transport.abort()  # the upstream got the call, then its connection died unanswered
        return False

    async with RawUpstream(dies) as raw:
        client = make_client(raw.url)
        with pytest.raises(RequestFailed):
            await post(client)
        await asyncio.sleep(0.1)
        assert len(raw.requests) == 1 and raw.connections == 1  # exactly once: no retry
        assert client.pool.size == 0


async def test_u4_through_the_gateway_a_dead_upstream_connection_is_502_and_seen_once(start_gateway):
    async def dies(reader, writer, request):
        writer.transport.abort()
        return False

    async with RawUpstream(dies) as raw:
        client = await start_gateway(raw.url)
        response = await client.post("/mcp", data=CALL, headers=JSON)
        assert response.status == 502
        assert (await response.json())["error"]["code"] == -32000
        await asyncio.sleep(0.1)
        assert len(raw.requests) == 1


async def test_u4_through_the_gateway_an_idle_close_by_the_upstream_is_invisible(start_gateway):
    async def answer_then_close_when_idle(reader, writer, request):
        writer.write(ok(extra=b"Mcp-Session-Id: s-1\r\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        return False

    async with RawUpstream(answer_then_close_when_idle) as raw:
        client = await start_gateway(raw.url)
        statuses = []
        for _ in range(3):
            response = await client.post("/mcp", data=CALL, headers=JSON)
            statuses.append(response.status)
            await response.read()
            await asyncio.sleep(0.15)
        assert statuses == [200, 200, 200]
        assert len(raw.requests) == 3


# -- large bodies and back-pressure (R2) ----------------------------------------------------------------------------


async def test_a_large_body_each_way(aiohttp_server, make_client):
    sent = bytes(range(256)) * (24 * MiB // 256)  # 24 MiB up
    answer = b"0123456789abcdef" * (40 * MiB // 16)  # 40 MiB down, by Content-Length

    async def handler(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(body=answer, headers={"X-Got": hashlib.sha256(data).hexdigest(), "X-Length": str(len(data))})

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_post("/mcp", handler)
    server = await aiohttp_server(app)
    client = make_client(str(server.make_url("/mcp")))
    response = await post(client, sent, timeout=60)
    assert response.headers["X-Length"] == str(len(sent))
    assert response.headers["X-Got"] == hashlib.sha256(sent).hexdigest()
    assert response.content_length == len(answer)
    digest, size = hashlib.sha256(), 0
    async for chunk in response:
        digest.update(chunk)
        size += len(chunk)
    assert size == len(answer) and digest.digest() == hashlib.sha256(answer).digest()
    assert response.complete and client.pool.idle == 1  # read to the end: kept for the next request


async def test_r2_a_slow_reader_makes_the_client_hold_a_bounded_number_of_bytes(aiohttp_server, make_client):
    total = 24 * MiB

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        piece = b"x" * (256 * 1024)
        for _ in range(total // len(piece)):
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handler)
    server = await aiohttp_server(app)
    client = make_client(str(server.make_url("/mcp")))
    response = await post(client)
    held, size, reads = 0, 0, 0
    while True:
        await asyncio.sleep(0.002 if reads % 8 else 0.05)  # a consumer that falls behind
        held = max(held, response.buffered)
        chunk = await response.read_chunk()
        if not chunk:
            break
        size += len(chunk)
        reads += 1
    assert size == total
    # Paused above READ_HIGH_WATER; one more transport read (256 KiB at most) may land on top.
    assert held <= READ_HIGH_WATER + 256 * 1024, held
    assert held > 0


async def test_a_large_request_body_is_written_with_back_pressure(make_client):
    """The upstream reads slowly: the transport's own buffer never holds much more than one piece."""
    body = b"y" * (32 * MiB)
    release = asyncio.Event()

    async def slow_reader(reader, writer, request):
        writer.write(ok(b"{}"))
        return True

    async def serve_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        got = 0
        while got < length:
            await release.wait()
            chunk = await reader.read(256 * 1024)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(0.001)
        writer.write(ok(b'{"got":%d}' % got))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_slowly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/mcp")
    try:
        call = asyncio.create_task(post(client, body, timeout=60))
        await asyncio.sleep(0.3)  # the kernel's buffers fill; the client must stop handing over bytes
        [connection] = list(client.pool._connections)
        waiting = connection.transport.get_write_buffer_size()
        release.set()
        peak = waiting
        while not call.done():
            peak = max(peak, connection.transport.get_write_buffer_size())
            await asyncio.sleep(0.001)
        response = await call
        assert await response.read() == b'{"got":%d}' % len(body)
        assert peak <= 2 * WRITE_PIECE, peak  # not the 32 MiB the body is
    finally:
        server.close()


# -- the pool's bound and timeouts (R3, U4) -------------------------------------------------------------------------


async def test_r3_a_full_pool_waits_at_most_connect_timeout_then_hands_over_in_order(make_client):
    release = asyncio.Event()

    async def held(reader, writer, request):
        await release.wait()
        writer.write(ok())
        return True

    async with RawUpstream(held) as raw:
        client = make_client(raw.url, limit=1, connect_timeout=0.3)
        holder = asyncio.create_task(post(client))
        while not raw.requests:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(ConnectTimeout):
            await post(client)
        assert 0.25 < time.monotonic() - started < 2
        waiter = asyncio.create_task(post(client, timeout=5))
        await asyncio.sleep(0.05)
        release.set()
        await (await holder).read()
        assert (await (await waiter).read()).startswith(b'{"jsonrpc"')
        assert raw.connections == 1 and len(raw.requests) == 2  # the waiter got the freed connection


async def test_u4_no_response_headers_in_time_is_a_response_timeout_and_closes_the_connection(make_client):
    async def never(reader, writer, request):
        await asyncio.wait_for(reader.read(), 10)  # no answer; returns when the client closes
        return False

    async with RawUpstream(never) as raw:
        client = make_client(raw.url)
        started = time.monotonic()
        with pytest.raises(ResponseTimeout):
            await post(client, timeout=0.2)
        assert time.monotonic() - started < 2
        await asyncio.sleep(0.05)
        assert client.pool.size == 0 and raw.closed == 1


async def test_u4_connection_refused_is_a_connect_error(make_client):
    client = make_client(f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(ConnectError) as caught:
        await post(client)
    assert isinstance(caught.value.os_error, ConnectionRefusedError)
    assert client.pool.size == 0


# -- cancellation -----------------------------------------------------------------------------------------------------


async def test_cancelled_while_waiting_for_headers_closes_the_connection(make_client):
    async def slow(reader, writer, request):
        await asyncio.wait_for(reader.read(), 10)  # no answer; returns when the client closes
        return False

    async with RawUpstream(slow) as raw:
        client = make_client(raw.url)
        call = asyncio.create_task(post(client))
        while not raw.requests:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.1)
        assert raw.closed == 1 and client.pool.size == 0 and client.pool.idle == 0


async def test_cancelled_mid_body_closes_the_connection_never_pools_it(aiohttp_server, make_client):
    ended = asyncio.Event()

    async def endless(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        try:
            for i in range(1000):
                await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": i}}))
                await asyncio.sleep(0.01)
        finally:
            ended.set()  # the server saw the connection go (its handler is cancelled)
        return response

    server = await aiohttp_server(RecordingUpstream(behaviour=endless).app())
    client = make_client(str(server.make_url("/mcp")))
    response = await post(client)

    async def relay() -> None:  # what the proxy does: read, and close when cut short
        try:
            async for _ in response:
                pass
        except asyncio.CancelledError:
            response.close()
            raise

    task = asyncio.create_task(relay())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(ended.wait(), 5)
    await asyncio.sleep(0.05)
    assert client.pool.size == 0 and client.pool.idle == 0
    with pytest.raises(BodyError):
        await response.read_chunk()


# -- the request head: one request, never two -----------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("X-Test", "a\r\nX-Admin: true"),
    ("X-Test", "a\nb"),
    ("X-Test", "a\rb"),
    ("X-Test", "a\0b"),
    ("X-Test: y\r\nX-Admin", "true"),
    ("X Test", "a"),
    ("X-Test", "lone \udcff surrogate"),
    ("Content-Length", "5"),
    ("Transfer-Encoding", "chunked"),
])
async def test_a_header_that_could_split_the_request_is_refused_and_nothing_is_sent(make_client, name, value):
    async with RawUpstream(lambda reader, writer, request: asyncio.sleep(0, True)) as raw:
        client = make_client(raw.url)
        headers = request_headers(client.host_header)
        headers.add(name, value)
        with pytest.raises(InvalidRequest):
            await client.request("POST", headers, CALL, timeout=5)
        await asyncio.sleep(0.05)
        assert raw.connections == 0 and raw.requests == []


async def test_u3_a_non_ascii_identity_value_is_sent_as_utf8_as_before(make_client):
    async def answer(reader, writer, request):
        writer.write(ok())
        return True

    async with RawUpstream(answer) as raw:
        client = make_client(raw.url)
        await (await post(client, **{"X-MCP-Name": "Jos\u00e9 M\u00fcller"})).read()
        assert "\r\nX-MCP-Name: Jos\u00e9 M\u00fcller\r\n".encode() in raw.requests[0]


async def test_the_request_is_framed_with_content_length_and_host(make_client):
    async def answer(reader, writer, request):
        writer.write(ok())
        return True

    async with RawUpstream(answer) as raw:
        client = make_client(raw.url)
        await (await post(client, b"{}")).read()
        await (await client.request("GET", CIMultiDict({"Accept": "text/event-stream"}), None, timeout=5)).read()
        first, second = raw.requests
        assert first.startswith(b"POST /mcp HTTP/1.1\r\n") and b"\r\nContent-Length: 2\r\n" in first
        assert first.endswith(b"\r\n\r\n{}")
        assert second.startswith(b"GET /mcp HTTP/1.1\r\n") and b"content-length" not in second.lower()
        assert f"\r\nHost: {client.host_header}\r\n".encode() in second


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself (so it is its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_an_https_upstream_is_verified_streamed_and_kept_alive(tmp_path, make_client):
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    peers = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername"))
        response = await start_sse(request)
        for i in range(3):
            await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": i}}))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = make_client(f"https://127.0.0.1:{port}/mcp")
        client_tls = UpstreamClient(f"https://127.0.0.1:{port}/mcp", limit=2, connect_timeout=5, tls=trusting)
        try:
            for _ in range(2):
                response = await post(client_tls)
                assert (await response.read()).count(b"notifications/progress") == 3
            assert len(set(peers)) == 1  # one TLS connection for both
        finally:
            await client_tls.close()
        with pytest.raises(ConnectError):  # the default context does not trust a self-signed certificate
            await post(client)
    finally:
        await runner.cleanup()


# -- the MCP Python SDK's server (uvicorn) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("sdk") / "headers.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "interop" / "recording_server.py"), "--port", str(port), "--log", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the MCP SDK server did not start")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def rpc(method: str, rpc_id: int | None = None, **params) -> bytes:
    message: dict = {"jsonrpc": "2.0", "method": method, "params": params}
    if rpc_id is not None:
        message["id"] = rpc_id
    return json.dumps(message).encode()


async def test_u4_the_sdk_server_session_sse_progress_and_keep_alive(sdk_server, make_client):
    client = make_client(sdk_server)
    init = await post(client, rpc("initialize", 1, protocolVersion="2025-06-18", capabilities={},
                                  clientInfo={"name": "upstream-client-test", "version": "0"}))
    assert init.status == 200
    session = init.headers["Mcp-Session-Id"]
    assert b'"serverInfo"' in await init.read()
    done = await post(client, rpc("notifications/initialized"), **{"Mcp-Session-Id": session})
    assert done.status == 202
    await done.read()
    call = await post(client, rpc("tools/call", 2, name="countdown", arguments={"n": 4}, _meta={"progressToken": "p"}),
                      **{"Mcp-Session-Id": session})
    assert call.headers["Content-Type"].startswith("text/event-stream")
    arrivals: list[tuple[float, bytes]] = []
    async for chunk in call:
        arrivals.append((time.monotonic(), chunk))
    stream = b"".join(chunk for _, chunk in arrivals)
    assert stream.count(b"notifications/progress") == 4 and b"liftoff" in stream
    # Progress is reported every 50 ms: the events came as they were produced, not all at the end.
    first_progress = next(t for t, chunk in arrivals if b"notifications/progress" in chunk)
    assert arrivals[-1][0] - first_progress > 0.1
    assert call.complete
    call.release()
    assert client.pool.size == 1  # the whole conversation on one kept-alive connection
    listed = await post(client, rpc("tools/list", 3), **{"Mcp-Session-Id": session})
    assert b'"countdown"' in await listed.read()
    assert client.pool.size == 1
    ended = await client.request("DELETE", request_headers(client.host_header, **{"Mcp-Session-Id": session}), None, timeout=5)
    assert ended.status == 200
    await ended.read()
