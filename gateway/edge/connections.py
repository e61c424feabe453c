"""R1: what a client connection may cost before it has said anything worth a token check.

aiohttp closes idle keep-alive connections (``server.keepalive_timeout``), but it has no limit on how
long the request line and headers may take: 300 connections that each sent half a request held every
descriptor and ``/healthz`` stopped answering. ``ConnectionGuard`` adds the two missing bounds:

- the request line and headers must arrive within ``server.header_timeout`` of the connection opening,
  or of the first byte after the connection went idle; otherwise the connection is closed;
- at most ``server.max_connections`` client connections are open at once; one more is closed at once.

It works at the asyncio level: ``GuardedSite`` listens like ``web.TCPSite`` and wraps each aiohttp protocol
in a ``GuardedProtocol`` that forwards every call and keeps the header timer. The clock stops when aiohttp's
parser has read a request's headers, in the ``data_received`` call that completed them: not when the
request reaches the application, which under CPU starvation can be several loop turns later, too late
for a request that arrived whole in time. The guard learns from its ``middleware`` when the application
has finished with a request, and so when the connection is idle again. The body has its own limit
(``server.body_timeout``, enforced where the body is read).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardedProtocol(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, a header timer around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol):
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self.in_flight = 0  # requests the application is handling on this connection
        self._parsed = 0  # requests whose headers aiohttp's parser has read (its request count)
        self._started = 0  # requests that reached the application

    # -- the header timer ------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> bool:
        """No request on this connection is parsed and waiting for the application, or in it."""
        return self.in_flight == 0 and self._started >= self._parsed

    def _expire(self) -> None:
        self._timer = None
        if self._idle() and self._transport is not None and not self._transport.is_closing():
            self._guard.header_timeouts += 1
            log.info("closed a connection whose request headers did not arrive within %gs", self._guard.header_timeout)
            self._transport.abort()

    def request_started(self) -> None:
        self.in_flight += 1
        self._started += 1
        self._disarm()

    def request_finished(self) -> None:
        self.in_flight -= 1

    # -- asyncio.Protocol, forwarded ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's (gateway.app.run) has the interface without subclassing asyncio's.
        self._transport = transport  # type: ignore[assignment]
        if len(self._guard.open) >= self._guard.max_connections:
            self._guard.refused += 1
            log.warning("refused a connection: %d client connections are open (server.max_connections)", len(self._guard.open))
            transport.abort()
            return
        self._admitted = True
        self._guard.open[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._idle():
            self._arm()  # the first bytes of a request: its headers are on the clock from now
        self._inner.data_received(data)
        # aiohttp's RequestHandler counts the requests its parser has completed (a parse error counts too: it
        # is answered 400 and the connection closed). Without that count (another aiohttp), the clock stops
        # in the middleware, as a fallback.
        parsed = getattr(self._inner, "_request_count", None)
        if isinstance(parsed, int) and parsed > self._parsed:
            self._parsed = parsed
            self._disarm()  # the headers are in: their clock stops here, however long the handler takes to run

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._guard.open.pop(self._transport, None)  # type: ignore[arg-type]
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    def __init__(self, *, header_timeout: float, max_connections: int):
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open: dict[asyncio.Transport, GuardedProtocol] = {}
        self.refused = 0
        self.header_timeouts = 0

    def protocol(self, inner: asyncio.Protocol) -> GuardedProtocol:
        return GuardedProtocol(self, inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The request's headers are complete: stop their clock until the connection is idle again."""
        connection = self.open.get(request.transport) if request.transport is not None else None  # type: ignore[arg-type]
        if connection is None:
            return await handler(request)  # not a guarded listener (tests build the app alone)
        connection.request_started()
        try:
            return await handler(request)
        finally:
            connection.request_finished()


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with every accepted connection wrapped by ``guard``."""

    __slots__ = ("_host", "_port", "_guard", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *, backlog: int = 1024,
                 reuse_port: bool = False):
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard, self._reuse_port = host, port, guard, reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._guard.protocol(server()), self._host, self._port, backlog=self._backlog, reuse_address=True,
            reuse_port=self._reuse_port or None)


def raise_descriptor_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` descriptors if the hard limit allows: a connection cap above the soft
    limit would otherwise be reached as EMFILE, which stops accept() for probes too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("raised the open-file limit from %d to %d for server.max_connections", soft, target)
    elif soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("the open-file limit %d is below server.max_connections %d plus headroom", soft, wanted)
