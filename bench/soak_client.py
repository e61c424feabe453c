"""A lean HTTP/1.1 client for the soak's bulk traffic: keep-alive connections to one address, requests
written as ready-made bytes, answers parsed by llhttp (``httptools``, which the gateway uses too).

aiohttp's client costs about as much CPU per request as the gateway does; on a two-core machine the soak's
clients would then take the CPU the gateway is supposed to be measured with. This one does only what the
soak needs: one request at a time per connection (no pipelining), the status, the headers it asks for and
the body. Connections are opened on demand up to ``limit``; past that a request waits for one (the wait
counts in its latency). A connection the gateway closed, or that broke, is never reused.

``RawPool.request`` returns ``(status, body, wire)``: ``wire`` is when the request's bytes were handed to
the socket (loop time), so the soak knows whether the gateway could have seen a request before its SIGTERM.
Failures raise ``ConnectionRefusedError`` (nothing listens), ``ConnectionError`` (the connection ended
before a whole answer) or ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import collections

import httptools


class _Exchange(asyncio.Protocol):
    """One connection; ``answer`` is the future of the request in progress."""

    def __init__(self, pool: RawPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed answer: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("the connection closed before a whole answer"))
        self.parser = None  # type: ignore[assignment]  (no cycle left behind)
        self.pool._lost(self)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        answer, self.answer = self.answer, None
        self.keep_alive = self.parser.should_keep_alive()
        if answer is not None and not answer.done():
            answer.set_result((self.parser.get_status_code(), b"".join(self.body), self.headers))
        self.body, self.headers = [], {}

    def _fail(self, error: Exception) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class RawPool:
    def __init__(self, host: str, port: int, *, limit: int, clock, idle_timeout: float):
        """``idle_timeout`` must be shorter than the gateway's keep-alive timeout, so a request is never written
        to a connection the gateway is closing at that moment."""
        self.host, self.port, self.limit, self.clock, self.idle_timeout = host, port, limit, clock, idle_timeout
        self._idle: collections.deque[_Exchange] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def _acquire(self) -> _Exchange:
        now = self.clock()
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > self.idle_timeout:
                connection.abort()
                continue
            return connection
        if self._open < self.limit:
            self._open += 1
            try:
                _, connection = await asyncio.get_running_loop().create_connection(lambda: _Exchange(self), self.host, self.port)
            except BaseException:
                self._open -= 1
                self._wake()
                raise
            return connection
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return await self._acquire()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Exchange) -> None:
        if connection.closed or not connection.keep_alive:
            connection.abort()
            return  # _lost gives the slot back
        connection.idle_since = now = self.clock()
        idle = self._idle
        while idle and now - idle[0].idle_since > self.idle_timeout:  # the oldest are at the left
            idle.popleft().abort()
        idle.append(connection)
        self._wake()

    def _lost(self, connection: _Exchange) -> None:
        try:
            self._idle.remove(connection)
        except ValueError:
            pass
        self._open -= 1
        self._wake()

    async def request(self, data: bytes, holder, *, timeout: float) -> tuple[int, bytes, dict[bytes, bytes]]:
        """Send ``data`` (a whole request) and return the answer's status, body and headers (lower-case names)."""
        async with asyncio.timeout(timeout):
            connection = await self._acquire()
            answer = connection.answer = asyncio.get_running_loop().create_future()
            try:
                connection.transport.write(data)
                if holder is not None and holder.wire is None:
                    holder.wire = self.clock()
                result = await answer
            except BaseException:
                connection.abort()  # cancelled, timed out or broken: never reused half-way
                raise
        self._release(connection)
        return result

    def close(self) -> None:
        for connection in self._idle:
            connection.abort()
        self._idle.clear()
