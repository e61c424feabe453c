"""Forwarding one MCP request to the upstream and streaming its answer back (U4).

Owns the one pooled ``ClientSession``, the timeouts, and the pass-through of Server-Sent Events chunk by
chunk as they arrive. Header hygiene lives in ``gateway.upstream.headers``. It makes no decisions about
the caller: by the time ``forward`` runs, identity and policy are settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.mcp.sse import EventSplitter
from gateway.upstream.headers import client_response_headers
from gateway.observe.metrics import Metrics

log = logging.getLogger(__name__)

def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def is_json(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "application/json"


class UpstreamProxy:
    """The one door to the upstream MCP server, over one pooled client session."""

    def __init__(self, config: UpstreamConfig, *, public_url: str, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics
        self.public_url = public_url
        self.url = config.url
        self.host = urlsplit(config.url).netloc
        self._session: aiohttp.ClientSession | None = None
        self._standalone_streams: set[aiohttp.ClientResponse] = set()  # GET streams, closed first at shutdown

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=1024, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Bodies stream for as long as the upstream keeps them open (long tool calls, SSE), so only
            # connecting is bounded here; the wait for response headers is bounded in `forward`.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def close_standalone_streams(self) -> None:
        """E3: end every open GET stream cleanly (its client reconnects); calls in flight go on."""
        for upstream in list(self._standalone_streams):
            upstream.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamProxy.start() was not awaited")
        return self._session

    async def forward(
        self,
        request: web.Request,
        *,
        body: bytes | None,
        headers: CIMultiDict[str],
        extra_headers: Mapping[str, str] | None = None,
        on_response: Callable[[int, CIMultiDictProxy[str]], None] | None = None,
        transform_json: Callable[[bytes], bytes] | None = None,
        transform_event: Callable[[bytes], bytes | None] | None = None,
        require_transform: bool = False,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer.

        ``extra_headers`` are added to the client's answer (CORS). ``on_response`` sees the upstream's
        status and headers before the client does (session binding). ``transform_json`` rewrites a whole
        ``application/json`` body and ``transform_event`` each SSE event (Z4 list filtering); without
        them bytes pass untouched, event streams chunk by chunk.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.response_timeout):
                upstream = await self.session.request(
                    request.method, self.url, headers=headers, data=body, allow_redirects=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                "upstream_timeout", f"no response headers within {self.config.response_timeout:g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("upstream_unreachable", f"cannot connect to {self.host}: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_failed", f"{type(exc).__name__}: {exc}") from exc
        if self.metrics is not None:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)

        try:
            if upstream.status in (401, 403):
                # U4: a challenge from the upstream is about the gateway's own credential; passing it on
                # would send the client to re-authenticate for a problem that is not theirs.
                raise UpstreamError(
                    "upstream_refused_gateway",
                    f"upstream answered {upstream.status} "
                    f"(WWW-Authenticate: {upstream.headers.get('WWW-Authenticate', '-')[:200]})",
                )
            if on_response is not None:
                on_response(upstream.status, upstream.headers)
            response_headers = client_response_headers(upstream.headers)
            if extra_headers:
                response_headers.update(extra_headers)
            if is_event_stream(upstream.headers.get("Content-Type")):
                if request.method == "GET":
                    self._standalone_streams.add(upstream)
                try:
                    return await self._relay_event_stream(request, upstream, response_headers, transform_event)
                finally:
                    self._standalone_streams.discard(upstream)
            if transform_json is not None and is_json(upstream.headers.get("Content-Type")):
                try:
                    payload = transform_json(await upstream.read())
                except aiohttp.ClientError as exc:
                    raise UpstreamError("upstream_broken", f"{type(exc).__name__}: {exc}") from exc
                return web.Response(status=upstream.status, headers=response_headers, body=payload)
            if transform_json is not None and require_transform and 200 <= upstream.status < 300 and upstream.status != 202:
                # A list was asked for and the answer is neither JSON nor SSE: it cannot be filtered (Z4).
                raise UpstreamError("upstream_unreadable_list", f"list answer with Content-Type {upstream.headers.get('Content-Type')!r}")
            return await self._relay_body(request, upstream, response_headers)
        finally:
            if upstream.content.is_eof():
                upstream.release()  # read to the end: the connection can serve the next request
            else:
                upstream.close()  # cut short (client gone, error): never reuse a half-read connection

    async def _relay_body(
        self, request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        length = upstream.content_length
        if length is not None and length <= 64 * 1024:
            # Small answers (most JSON-RPC results): one read, one write, a Content-Length for the client.
            try:
                payload = await upstream.read()
            except aiohttp.ClientError as exc:
                raise UpstreamError("upstream_broken", f"{type(exc).__name__}: {exc}") from exc
            return web.Response(status=upstream.status, headers=headers, body=payload)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        await self._pump(upstream, response, None)
        return response

    async def _relay_event_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        transform_event: Callable[[bytes], bytes | None] | None,
    ) -> web.StreamResponse:
        headers.setdefault("Cache-Control", "no-cache")
        headers["X-Accel-Buffering"] = "no"  # tell any buffering proxy in front of us not to
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        if self.metrics is not None:
            self.metrics.open_streams.inc()
        try:
            await self._pump(upstream, response, transform_event)
        finally:
            if self.metrics is not None:
                self.metrics.open_streams.dec()
        return response

    async def _pump(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        transform_event: Callable[[bytes], bytes | None] | None,
    ) -> None:
        """Copy the upstream body as it arrives. An upstream dying mid-stream ends the stream cleanly."""
        splitter = EventSplitter() if transform_event is not None else None
        try:
            async for chunk in upstream.content.iter_any():
                if splitter is None:
                    await response.write(chunk)
                    continue
                try:
                    replaced = [transform_event(event) for event in splitter.feed(chunk)]
                except Exception:
                    # Headers are sent, so no error status is possible: end the stream rather than
                    # pass on an event that was not checked (fail closed).
                    log.exception("could not filter an upstream event; the stream was ended")
                    return
                for event in replaced:
                    if event:
                        await response.write(event)
            if splitter is not None and splitter.pending:
                log.warning("upstream event stream ended inside an event; the partial event was dropped")
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("upstream stream ended abruptly: %s", type(exc).__name__)
        except ConnectionResetError:
            # MCP 2026-07-28: closing a response stream cancels the request, so close the upstream's too.
            log.info("client went away during a streamed response; closing the upstream stream")
            upstream.close()
            return
        except asyncio.CancelledError:
            upstream.close()  # the client went away (handler cancellation) or the gateway is stopping
            raise
        try:
            await response.write_eof()
        except ConnectionResetError:
            pass
