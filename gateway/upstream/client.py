"""The HTTP/1.1 client for the upstream hop: one origin, a bounded keep-alive pool, streamed bodies (P1).

aiohttp's ``ClientSession`` cost about 69 CPU-µs per proxied call (issue 12); this client does only what
the hop needs, on ``asyncio.Protocol`` with llhttp (``httptools``, the parser uvicorn uses) reading the
answers. It owns the connections to ``upstream.url`` and nothing about MCP; ``gateway.upstream.proxy``
decides what to do with what arrives.

- Requests are ``POST``, ``GET`` or ``DELETE`` with a body that is in memory already, written with the
  transport's back-pressure (``pause_writing``/``resume_writing``), so a large body is never copied whole
  into the transport's buffer. The headers come sanitized from ``gateway.upstream.headers``; the head is
  still refused (``InvalidRequest``) if a name is not a token or anything holds CR, LF or NUL: a request
  split here would be a second request the policy never saw.
- Answers: 1xx answers are skipped; bodies by ``Content-Length``, chunked, or delimited by the close of the
  connection; ``gzip``/``deflate`` decoded as they are read (aiohttp did that too), in bounded pieces. Headers
  arrive as a ``CIMultiDictProxy`` with every repeated header kept. A body is an async iterator of chunks
  as they arrive (SSE unbuffered). Reading pauses while the consumer holds more than ``READ_HIGH_WATER``
  bytes unread and resumes when it has caught up, so the bytes held per answer stay bounded (R2).
- The pool holds at most ``limit`` connections (``gateway.config.UPSTREAM_POOL_SIZE``), busy, idle and
  opening together. Waiting for one and opening one share ``connect_timeout`` (R3). Idle connections are
  reused newest first and closed after ``IDLE_TIMEOUT``.
- Never twice: a request is written at most once. A pooled connection that the upstream closed is noticed
  before any byte is written (its EOF was seen, its transport is closing, or, after a second of idleness, a
  peek at the socket finds the end) and set aside for another; once a byte was written, whatever happens
  is the caller's error, never a resend (a ``tools/call`` is not idempotent).
- A connection returns to the pool only when its request was written whole and the whole answer arrived,
  with keep-alive (what the consumer has not read yet stays with the ``UpstreamResponse``, not the
  connection). Anything else (a timeout, a cancellation, ``close()`` on a half-arrived answer, a
  malformed answer) closes it. An exchange clears only its own state on the connection: an answer that
  arrives in one read puts the connection back before its caller resumes, and the next exchange may
  already have begun on it.

Errors, one small tree (translated to ``UpstreamError`` by the proxy)::

    HttpClientError
     ├── InvalidRequest     the request head would not be one request (never sent)
     ├── ConnectError       no TCP/TLS connection (refused, unresolvable, reset) - ``.os_error``
     ├── ConnectTimeout     no connection within connect_timeout (a pooled one or a new one)
     ├── ResponseTimeout    no response headers within the caller's timeout
     ├── RequestFailed      the connection ended or the answer was malformed before its headers were complete
     └── BodyError          the body broke off or was malformed after the headers (``close()`` too)
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import zlib
from collections.abc import Iterable
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# R2: reading from the upstream pauses while a consumer leaves more than this unread (one more read of the
# transport, up to 256 KiB in asyncio, may land on top), and resumes once it has caught up.
READ_HIGH_WATER = 128 * 1024
# A request body is handed to the transport in pieces of this size, each after the previous drained.
WRITE_PIECE = 256 * 1024
# Decoded (gzip/deflate) bodies come out in pieces of at most this size: a small compressed chunk can
# expand a thousandfold.
DECODED_PIECE = 256 * 1024
# An idle connection is closed after this long. Common MCP server stacks (uvicorn, Node, hypercorn) close
# idle connections after 5 s; closing first keeps us from writing into a connection they are closing.
IDLE_TIMEOUT = 4.0
# A connection idle this long gets its socket peeked at checkout: an EOF that arrived but was not read yet.
PEEK_AFTER = 1.0

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_CHECKED_NAMES: set[str] = set()  # header names already proved tokens (they repeat on every request)
_CHECKED_NAMES_MAX = 4096
# RFC 9112 §6: framing is this client's own; a caller that supplies it would make two lengths.
_FRAMING = ("Content-Length", "Transfer-Encoding")
_SLOT = object()  # handed to a pool waiter: a connection may be opened in the slot freed for it


class HttpClientError(Exception):
    """The root of this client's errors."""


class InvalidRequest(HttpClientError):
    pass


class ConnectError(HttpClientError):
    def __init__(self, message: str, os_error: OSError):
        super().__init__(message)
        self.os_error = os_error


class ConnectTimeout(HttpClientError):
    pass


class ResponseTimeout(HttpClientError):
    pass


class RequestFailed(HttpClientError):
    pass


class BodyError(HttpClientError):
    pass


def serialize_head(method: str, target: str, headers: Iterable[tuple[str, str]], body_length: int | None) -> bytes:
    """The request line and header block, refusing anything that could make it two requests.

    Header values are not rewritten: a value with CR, LF or NUL is refused, not cleaned, so the bytes sent
    are the bytes the gateway decided on. Names must be RFC 9110 tokens."""
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    lines = 2  # the request line and the blank line
    for name, value in headers:
        if name not in _CHECKED_NAMES:
            if not _TOKEN.fullmatch(name):
                raise InvalidRequest(f"header name {name[:40]!r} is not a token")
            if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
                _CHECKED_NAMES.add(name)
        parts += (name, ": ", value, "\r\n")
        lines += 1
    if body_length is not None:
        parts += ("Content-Length: ", str(body_length), "\r\n")
        lines += 1
    parts.append("\r\n")
    head = "".join(parts)
    # One scan each instead of three tests per header: exactly one CR and one LF per line, no NUL.
    if head.count("\n") != lines or head.count("\r") != lines or "\0" in head:
        raise InvalidRequest("a CR, LF or NUL in the method, target or a header")
    try:
        # UTF-8 as aiohttp's client sent it: an identity header may carry a name like "José" (U3). No UTF-8
        # sequence holds a CR, LF or NUL byte, so the count above holds for the bytes too.
        return head.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (a JSON claim may hold one)
        raise InvalidRequest("a header value that is not text") from exc


class UpstreamResponse:
    """One answer: ``status``, ``headers`` and the body, read with ``read_chunk()``, ``async for`` or ``read()``.

    Call ``release()`` (or ``close()``) when done. ``close()`` before the end of the body closes the
    connection: a half-read connection is never reused, and a reader waiting for more gets ``BodyError``."""

    __slots__ = ("status", "headers", "content_length", "_connection", "_chunks", "_buffered", "_done",
                 "_error", "_waiter", "_decoder", "_tail")

    def __init__(self, connection: _Connection):
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _EMPTY_HEADERS
        self.content_length: int | None = None  # of the body as read (None when it is decoded)
        self._connection: _Connection | None = connection  # until the body's end has arrived
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False  # the body's end arrived (the chunks may still be unread)
        self._error: HttpClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._tail = b""  # compressed input the decoder has not consumed yet

    @property
    def buffered(self) -> int:
        """Body bytes that arrived and were not read yet."""
        return self._buffered + len(self._tail)

    @property
    def arrived_whole(self) -> bool:
        """The whole body is here and none of it was read yet (``read()`` then takes it in one piece)."""
        return self._done and self._decoder is None and self._error is None and not self._tail

    @property
    def complete(self) -> bool:
        """The whole body arrived and was read."""
        return self._done and not self._chunks and not self._tail and self._decoder is None and self._error is None

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self) -> bytes:
        """The rest of the body. Only for bodies known to be small: nothing bounds this but the caller."""
        if self._done and self._decoder is None:
            return await self._read_raw()  # all of it is here: one join
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def read_chunk(self) -> bytes:
        """Whatever of the body has arrived (waiting for some if none has), ``b""`` at its end."""
        decoder = self._decoder
        if decoder is None:
            return await self._read_raw()
        while True:
            if self._tail:
                data, self._tail = self._tail, b""
            else:
                data = await self._read_raw()
                if not data:
                    self._decoder = None
                    ended = decoder.eof
                    rest = decoder.flush()
                    if not ended:
                        self._error = BodyError("the compressed body was cut short")
                        raise self._error
                    return rest
            try:
                out = decoder.decompress(data, DECODED_PIECE)
            except zlib.error as exc:
                self._error = BodyError(f"the body does not decode: {exc}")
                raise self._error from exc
            self._tail = decoder.unconsumed_tail
            if out:
                return out

    async def _read_raw(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                connection = self._connection
                if connection is not None and connection.reading_paused:
                    connection.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Done with this answer: a fully read one leaves its connection in the pool, any other closes it."""
        if not self.complete:
            self.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        self._chunks.clear()
        self._buffered = 0
        self._tail = b""
        if not self._done and self._error is None:
            self._fail(BodyError("the answer was closed before its end"))

    # -- fed by the connection ----------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._connection = None
        self._wake()

    def _fail(self, error: HttpClientError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        self._connection = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Connection(asyncio.Protocol):
    """One kept-alive connection and the exchange on it (at most one at a time, no pipelining)."""

    def __init__(self, pool: ConnectionPool):
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False  # EOF or loss seen, or closed by us: never handed out again
        self.counted = True  # holds one of the pool's slots until it is discarded
        self.idle_since = 0.0
        self.reading_paused = False
        self._response: UpstreamResponse | None = None  # the exchange in progress
        self._headers_waiter: asyncio.Future[UpstreamResponse] | None = None
        self._header_list: list[tuple[str, str]] = []
        self._informational = False  # the message being parsed is a 1xx answer
        self._needs_eof = False  # the body ends when the connection does
        self._writing = False  # request bytes not all written yet
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- the exchange --------------------------------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes | None, deadline: float) -> UpstreamResponse:
        """Write the request once and wait for the answer's headers until ``deadline`` (loop time).

        On any exception (timed out, cancelled, failed) the connection is aborted, unless the whole answer
        had already arrived and put it back in the pool: then it may serve another exchange already."""
        transport = self.transport
        if transport is None:
            raise RequestFailed("the connection is not open")
        response = self._response = UpstreamResponse(self)
        waiter = self._headers_waiter = self._loop.create_future()
        self._header_list = []
        self._needs_eof = False
        timer = self._loop.call_at(deadline, self._time_out, waiter)
        try:
            self._writing = True
            if body is None or len(body) <= WRITE_PIECE:
                transport.write(head + body if body else head)
                self._writing = False
            elif await self._write_large(transport, head, body, waiter):
                self._writing = False
            # else: answered (a 413, say) before the body was all out. The answer is relayed; the
            # connection closes after it (on_message_complete sees _writing).
            return await waiter
        except BaseException:
            if not response._done:
                self.abort()  # whatever was written is never written again
            raise
        finally:
            timer.cancel()
            # Only if it is still this exchange's: by the time this runs, a whole answer may have come in
            # (headers, body, end: one read), put the connection back, and another exchange begun on it.
            if self._headers_waiter is waiter:
                self._headers_waiter = None

    async def _write_large(self, transport: asyncio.Transport, head: bytes, body: bytes, waiter: asyncio.Future) -> bool:
        """The body in pieces, each once the transport's buffer has drained (back-pressure). False when
        writing stopped early because the exchange ended (answered, timed out, failed)."""
        transport.write(head)
        view = memoryview(body)
        for start in range(0, len(body), WRITE_PIECE):
            if self._write_paused:
                await self._drain()
            if waiter.done():
                return False
            transport.write(view[start:start + WRITE_PIECE])
        return True

    async def _drain(self) -> None:
        self._drain_waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            if self._drain_waiter is waiter:
                self._drain_waiter = None

    def _wake_writer(self, error: HttpClientError | None = None) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _time_out(self, waiter: asyncio.Future[UpstreamResponse]) -> None:
        if waiter is not self._headers_waiter or waiter.done():
            return  # the headers are in: the timer was about to be cancelled (the connection may serve another)
        self._fail_exchange(ResponseTimeout("no response headers in time"))
        self.abort()

    def _fail_exchange(self, error: HttpClientError) -> None:
        """Hand ``error`` to whoever waits on this exchange: for the headers, or for more of the body."""
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif self._response is not None:
            self._response._fail(error if isinstance(error, BodyError) else BodyError(str(error)))
        self._response = None
        self._wake_writer(error)

    # -- state seen by the pool ----------------------------------------------------------------------------------

    def usable(self, now: float) -> bool:
        """Whether a request may be written now: checked before any byte of one is (never twice)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if now - self.idle_since >= PEEK_AFTER and self._peer_closed(transport):
            return False
        return True

    @staticmethod
    def _peer_closed(transport: asyncio.Transport) -> bool:
        """A peek at the socket: has the upstream closed (or sent bytes nobody asked for)?"""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        probe = socket.socket(fileno=sock.fileno())  # the same descriptor, detached below: never closed here
        try:
            data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        finally:
            probe.detach()
        # Over TLS, bytes may be a close_notify we cannot read here; only the end is certain.
        return data == b"" or transport.get_extra_info("sslcontext") is None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted with the next request
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if not isinstance(cause, HttpClientError):
                cause = RequestFailed(f"malformed answer: {exc}")
            self._fail_exchange(cause)
            self.abort()
        except httptools.HttpParserUpgrade:
            self._fail_exchange(RequestFailed("the upstream switched protocols"))
            self.abort()

    def eof_received(self) -> bool:
        self.closed = True
        response = self._response
        if response is not None and self._needs_eof and self._headers_waiter is None:
            self.on_message_complete()  # RFC 9112 §6.3: a body without a length ends with the connection
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._response is not None:
            waiting = self._headers_waiter is not None and not self._headers_waiter.done()
            detail = f": {exc}" if exc else ""
            self._fail_exchange(
                RequestFailed(f"the upstream closed the connection before answering{detail}") if waiting
                else BodyError(f"the upstream closed the connection before the end of the body{detail}"))
        self._wake_writer(RequestFailed("the connection closed while the request was written"))
        self._pool.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- httptools callbacks (inside feed_data) ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is None:
            raise RequestFailed("an answer nobody asked for")
        self._header_list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # As aiohttp's parser decoded them, so values pass to the client as they did.
        self._header_list.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise RequestFailed("the upstream switched protocols (101) unasked")
            self._informational = True  # 100 Continue, 103 Early Hints: the real answer follows
            return
        response = self._response
        if response is None:
            raise RequestFailed("an answer nobody asked for")
        headers = CIMultiDictProxy(CIMultiDict(self._header_list))
        response.status = status
        response.headers = headers
        length = headers.get("Content-Length")
        response.content_length = int(length) if length is not None else None  # llhttp checked the digits
        chunked = False
        if "Transfer-Encoding" in headers:
            codings = ",".join(headers.getall("Transfer-Encoding")).rsplit(",", 1)[-1]
            chunked = codings.strip().lower() == "chunked"
        self._needs_eof = length is None and not chunked and status not in (204, 304)
        encoding = headers.get("Content-Encoding")
        if encoding is not None:
            coding = encoding.strip().lower()
            if coding in ("gzip", "x-gzip", "deflate"):
                response._decoder = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or zlib header
                response.content_length = None  # the decoded length is unknown
            elif coding != "identity":
                raise RequestFailed(f"unsupported Content-Encoding {encoding[:30]!r} (identity was asked for)")
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        self._headers_waiter = None
        self._wake_writer()  # an answer before the whole body was written ends the writing

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            return
        response._feed(body)
        if response._buffered > READ_HIGH_WATER:
            self.pause_reading()  # R2: resumed by the reader once it has caught up

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        response, self._response = self._response, None
        if response is None:
            return
        response._finish()
        self.resume_reading()
        if self._writing or self.closed or not self._parser.should_keep_alive():
            self.close()  # the request was not all written, or the upstream ends the connection
        else:
            self._pool.release(self)


class ConnectionPool:
    """At most ``limit`` connections to one origin (busy, idle and opening), reused newest first.

    ``_limit`` is read live (tests lower it to make the pool full)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, limit: int, connect_timeout: float):
        self.loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._tls = tls
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._size = 0  # slots taken: connections open or opening
        self._idle: collections.deque[_Connection] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[object]] = collections.deque()
        self._connections: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def size(self) -> int:
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self, deadline: float) -> _Connection:
        """A connection on which nothing was written since it was last found whole.

        Raises ``ConnectTimeout`` at ``connect_timeout``, ``ResponseTimeout`` at ``deadline`` if that is
        earlier, ``ConnectError`` when the upstream cannot be reached."""
        connection = self._take_idle()
        if connection is not None:
            return connection
        connect_deadline = self.loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(min(connect_deadline, deadline)):
                return await self._acquire_slowly()
        except TimeoutError as exc:
            if connect_deadline <= deadline:
                raise ConnectTimeout(f"no connection within {self._connect_timeout:g}s (a free pooled one or a new one)") from exc
            raise ResponseTimeout("no response headers in time (still waiting for a connection)") from exc

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since > IDLE_TIMEOUT:
                connection.close()
                self._close_expired(now)
                return None
            if connection.usable(now):
                return connection
            connection.abort()  # the upstream closed it: set aside before a byte was written
        return None

    async def _acquire_slowly(self) -> _Connection:
        if self._closed:
            raise ConnectError("the upstream client is closed", OSError("closed"))
        while True:
            connection = self._take_idle()
            if connection is not None:
                return connection
            if self._size < self._limit:
                self._size += 1
                return await self._open()
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._give_back(waiter.result())
                else:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
            if got is _SLOT:
                return await self._open()
            if isinstance(got, _Connection):
                if got.usable(self.loop.time()):
                    return got
                got.abort()
            else:  # the pool closed
                raise ConnectError("the upstream client is closed", OSError("closed"))

    async def _open(self) -> _Connection:
        """Open a connection in a slot already counted in ``_size``."""
        connection = _Connection(self)
        self._connections.add(connection)
        try:
            await self.loop.create_connection(
                lambda: connection, self._host, self._port, ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        except BaseException as exc:
            self.discard(connection)
            if isinstance(exc, OSError):
                raise ConnectError(f"cannot connect to {self._host}:{self._port}: {exc}", exc) from exc
            raise
        return connection

    def release(self, connection: _Connection) -> None:
        """A connection whose exchange ended whole, for the next request."""
        if self._closed:
            connection.close()
            return
        connection.idle_since = self.loop.time()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = self.loop.call_at(connection.idle_since + IDLE_TIMEOUT, self._sweep_idle)

    def discard(self, connection: _Connection) -> None:
        """A connection that is closed or never opened gives its slot back (once)."""
        if not connection.counted:
            return
        connection.counted = False
        self._connections.discard(connection)
        try:
            self._idle.remove(connection)
        except ValueError:
            pass
        self._free_slot()

    def _give_back(self, got: object) -> None:
        """What a waiter received after it stopped waiting (timed out, cancelled) goes to the next one."""
        if got is _SLOT:
            self._free_slot()
        elif isinstance(got, _Connection):
            self.release(got)

    def _free_slot(self) -> None:
        if self._size <= self._limit and not self._closed:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(_SLOT)  # the slot passes on: _size stays
                    return
        self._size -= 1

    def _close_expired(self, now: float) -> None:
        idle = self._idle
        while idle and now - idle[0].idle_since > IDLE_TIMEOUT:
            idle.popleft().close()

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = self.loop.time()
        self._close_expired(now)
        if self._idle:
            self._sweep = self.loop.call_at(self._idle[0].idle_since + IDLE_TIMEOUT + 0.01, self._sweep_idle)

    def close(self) -> None:
        """Close every connection, busy or idle; waiters get ``ConnectError``."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()
        for connection in list(self._connections):
            connection.abort()


class UpstreamClient:
    """Requests to the one upstream URL over a ``ConnectionPool``."""

    def __init__(self, url: str, *, limit: int, connect_timeout: float, tls: ssl.SSLContext | None = None):
        """``tls`` is for ``https`` URLs only; the default verifies against the system's CAs."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme == "https":
            tls = tls or ssl.create_default_context()
        else:
            tls = None
        self.pool = ConnectionPool(parts.hostname, parts.port or (443 if tls else 80), tls=tls, limit=limit,
                                   connect_timeout=connect_timeout)

    @property
    def connector(self) -> ConnectionPool:
        """The pool, by the name aiohttp gives it (tests/test_bounds_memory.py lowers its ``_limit``)."""
        return self.pool

    async def request(self, method: str, headers: CIMultiDict[str], body: bytes | None, *, timeout: float) -> UpstreamResponse:
        """Send one request, written at most once; the answer once its headers are in (within ``timeout``).

        ``headers`` must not carry framing (``Content-Length``, ``Transfer-Encoding``): the length is added
        here. ``Host`` is the URL's when absent."""
        for name in _FRAMING:
            if name in headers:
                raise InvalidRequest(f"{name} is set by the client itself")
        items: Iterable[tuple[str, str]] = headers.items()
        extra = []
        if "Host" not in headers:
            extra.append(("Host", self.host_header))
        if "Accept" not in headers:
            extra.append(("Accept", "*/*"))  # what aiohttp's client sent when the caller named none
        if extra:
            items = [*items, *extra]
        head = serialize_head(method, self.target, items, None if body is None else len(body))
        pool = self.pool
        deadline = pool.loop.time() + timeout
        connection = await pool.acquire(deadline)
        return await connection.exchange(head, body, deadline)

    async def close(self) -> None:
        self.pool.close()
        await asyncio.sleep(0)  # let the transports' connection_lost run
