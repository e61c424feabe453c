"""Forwarding one MCP request to the upstream and streaming its answer back (U4).

Owns the one ``UpstreamClient`` (``gateway.upstream.client``: a bounded keep-alive pool, P1), the
timeouts, the translation of its errors into ``UpstreamError``, and the pass-through of Server-Sent Events
chunk by chunk as they arrive. Header hygiene lives in ``gateway.upstream.headers``. It makes no decisions
about the caller: by the time ``forward`` runs, identity and policy are settled.

Memory (R2). An answer is held in memory only while it may be a list the filter has to rewrite (Z4, I8);
everything else streams through in the chunks it arrives in. For an ``application/json`` answer the
list filter's own pre-check (``mentions_a_list_key``: could any JSON reader find a list key in these
bytes?) decides, applied to what has arrived so far:

- a list was asked for (``require_transform``): the answer is read whole, up to
  ``upstream.max_list_bytes``, and filtered; a larger one (by ``Content-Length`` or as it arrives) is a
  ``502`` (``upstream_list_too_large``);
- otherwise the first ``STREAM_AFTER`` bytes (1 MiB, or ``max_list_bytes`` if smaller) are held and
  scanned. An answer that ends within them is handed to the filter whole, as before. One that mentions a
  list key in them is read whole up to ``max_list_bytes`` and filtered, else ``502`` as above: it may hold
  a list that is too big to filter;
- an answer that mentions no list key in its first MiB is streamed from there on: the held bytes are sent,
  then every chunk, each scanned first with the last ``LIST_KEY_LOOK_BEHIND`` bytes of the one before (so a
  key split across chunks is seen). A list key that first appears after the headers were sent cannot be
  filtered any more and the bytes before it cannot be taken back, so the gateway fails closed: the chunk
  holding it is not sent, the client connection is aborted (the client sees an incomplete body, never
  a complete answer) and the reason is logged as ``upstream_late_list_key``. No MCP server puts a list
  result behind a megabyte of other members; a hostile one gets a broken answer, never an unfiltered list.

So the gateway holds at most ``max(max_list_bytes, STREAM_AFTER)`` bytes of one JSON answer (plus a
chunk), whatever its size; parsing a list of that size costs a few times more in objects, which is what
``max_list_bytes`` bounds. SSE events are held one at a time by the framer (``EventSplitter``, 16 MiB or
``max_list_bytes`` at most); an event that the filter would parse (it mentions a list key, or a list was
asked for) and is larger than ``max_list_bytes`` is dropped and the stream ended with a log line (fail
closed: headers are out, so no 502 is possible).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UPSTREAM_POOL_SIZE, UpstreamConfig
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.mcp.listing import LIST_KEY_LOOK_BEHIND, mentions_a_list_key
from gateway.mcp.sse import MAX_EVENT_BYTES, EventSplitter
from gateway.upstream.client import (
    BodyError, ConnectError, ConnectTimeout, HttpClientError, InvalidRequest, ResponseTimeout, UpstreamClient,
    UpstreamResponse,
)
from gateway.upstream.headers import client_response_headers
from gateway.observe.metrics import Metrics

log = logging.getLogger(__name__)

# R2: a JSON answer with no list key in its first MiB streams from there on (see the module docstring).
STREAM_AFTER = 1024 * 1024
# Small answers (most JSON-RPC results) are one read and one write, with a Content-Length for the client.
SMALL_BODY = 64 * 1024

# I8: media types are recognised the way lenient clients recognise them (the Python SDK tests
# startswith("application/json"), the TypeScript SDK includes(...)): "application/json-rpc" and
# "application/x+json" are JSON to them, so they are filtered as JSON here.
def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower().startswith("text/event-stream")


def is_json(content_type: str | None) -> bool:
    media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    return media.startswith("application/json") or media.endswith("+json") or media in ("text/json", "text/x-json")


def challenge_summary(header: str | None) -> str:
    """``Bearer error="invalid_token"`` from a WWW-Authenticate value, without any free-text parameter."""
    if not header:
        return "no WWW-Authenticate"
    scheme = header.strip().split(" ", 1)[0][:20]
    code = re.search(r'\berror="?([A-Za-z0-9_.-]{1,40})', header)
    return f"WWW-Authenticate {scheme}" + (f" error={code.group(1)}" if code else "")


class _UpstreamEnded(Exception):
    """The upstream's body broke off after the client's headers were sent."""


class UpstreamProxy:
    """The one door to the upstream MCP server, over one pooled client."""

    def __init__(self, config: UpstreamConfig, *, public_url: str, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics
        self.public_url = public_url
        self.url = config.url
        self.host = urlsplit(config.url).netloc
        self._client: UpstreamClient | None = None
        self._standalone_streams: set[UpstreamResponse] = set()  # GET streams, closed first at shutdown

    async def start(self) -> None:
        # Bodies stream for as long as the upstream keeps them open (long tool calls, SSE), so only
        # connecting (waiting for a free pooled connection as well as opening one: R3, a full pool is no
        # unbounded wait) and the wait for response headers are bounded.
        self._client = UpstreamClient(self.url, limit=UPSTREAM_POOL_SIZE, connect_timeout=self.config.connect_timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def close_standalone_streams(self) -> None:
        """E3: end every open GET stream cleanly (its client reconnects); calls in flight go on."""
        for upstream in list(self._standalone_streams):
            upstream.close()

    @property
    def session(self) -> UpstreamClient:
        if self._client is None:
            raise RuntimeError("UpstreamProxy.start() was not awaited")
        return self._client

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
        may_rewrite: Callable[[bytes], bool] | None = None,
        decide_ahead: Callable[[bytes, bool], Awaitable[None]] | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and relay the answer.

        ``extra_headers`` are added to the client's answer (CORS). ``on_response`` sees the upstream's
        status and headers before the client does (session binding). ``transform_json`` rewrites a whole
        ``application/json`` body that may hold a list, other JSON bodies stream past it (R2, module
        docstring); ``transform_event`` rewrites each SSE event (Z4 list filtering). ``require_transform``:
        a list was asked for, so the answer must be filterable. ``may_rewrite``: a pre-check beside the list
        keys' for a whole JSON answer that ``transform_json`` may change for another reason (M4 task ids, M3
        resource updates); False only when it cannot. ``decide_ahead(raw, is_event)`` is awaited before a
        whole body or an event is transformed: the list filter makes its decisions there, yielding the loop
        (R4). Without transforms bytes pass untouched, event streams chunk by chunk.
        """
        started = time.perf_counter()
        try:
            # Written at most once (a tools/call is not idempotent); response_timeout runs until the headers.
            upstream = await self.session.request(request.method, headers, body, timeout=self.config.response_timeout)
        except ConnectTimeout as exc:
            raise UpstreamTimeout(
                "upstream_timeout",
                f"no connection to {self.host} within {self.config.connect_timeout:g}s (a free pooled one or a new one)",
            ) from exc
        except ResponseTimeout as exc:
            raise UpstreamTimeout(
                "upstream_timeout", f"no response headers within {self.config.response_timeout:g}s"
            ) from exc
        except ConnectError as exc:
            raise UpstreamError("upstream_unreachable", f"cannot connect to {self.host}: {exc.os_error}") from exc
        except InvalidRequest as exc:
            # Never sent: a header that would have split the request (headers.py should have dropped it).
            raise UpstreamError("upstream_request_refused", str(exc)) from exc
        except HttpClientError as exc:
            raise UpstreamError("upstream_failed", f"{type(exc).__name__}: {exc}") from exc
        if self.metrics is not None:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)

        try:
            if upstream.status in (401, 403):
                # U4: a challenge from the upstream is about the gateway's own credential; passing it on
                # would send the client to re-authenticate for a problem that is not theirs. Only the scheme
                # and error code are logged: an error_description is free text (it has quoted tokens).
                raise UpstreamError(
                    "upstream_refused_gateway",
                    f"upstream answered {upstream.status} ({challenge_summary(upstream.headers.get('WWW-Authenticate'))})",
                )
            if upstream.status < 200 or 300 <= upstream.status < 400:
                # An MCP server has no business redirecting: a client following Location would take its
                # token (and the call) elsewhere, so neither the status nor Location is passed on.
                raise UpstreamError("upstream_redirect", f"upstream answered {upstream.status}")
            if len(upstream.headers.getall("Content-Type", [])) > 1:
                # Which one would the client believe? The list filter reads one, a client may read the other.
                raise UpstreamError("upstream_ambiguous_content_type", "the upstream sent two Content-Type headers")
            if on_response is not None:
                on_response(upstream.status, upstream.headers)
            response_headers = client_response_headers(upstream.headers)
            if extra_headers:
                response_headers.update(extra_headers)
            if is_event_stream(upstream.headers.get("Content-Type")):
                if request.method == "GET":
                    self._standalone_streams.add(upstream)
                try:
                    return await self._relay_event_stream(
                        request, upstream, response_headers, transform_event, strict=require_transform,
                        request_id=headers.get("X-Request-Id"), decide_ahead=decide_ahead,
                    )
                finally:
                    self._standalone_streams.discard(upstream)
            if transform_json is not None and is_json(upstream.headers.get("Content-Type")):
                return await self._relay_json(
                    request, upstream, response_headers, transform_json, strict=require_transform,
                    request_id=headers.get("X-Request-Id"), may_rewrite=may_rewrite, decide_ahead=decide_ahead,
                )
            if transform_json is not None and require_transform and 200 <= upstream.status < 300 and upstream.status != 202:
                # A list was asked for and the answer is neither JSON nor SSE: it cannot be filtered (Z4).
                raise UpstreamError("upstream_unreadable_list", f"list answer with Content-Type {upstream.headers.get('Content-Type')!r}")
            return await self._relay_body(request, upstream, response_headers)
        finally:
            if upstream.complete:
                upstream.release()  # read to the end: the connection already serves the next request
            else:
                upstream.close()  # cut short (client gone, error): never reuse a half-read connection

    async def _relay_body(
        self, request: web.Request, upstream: UpstreamResponse, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY:
            # Small answers (most JSON-RPC results): one read, one write, a Content-Length for the client.
            try:
                payload = await upstream.read()
            except BodyError as exc:
                raise UpstreamError("upstream_broken", f"{type(exc).__name__}: {exc}") from exc
            return web.Response(status=upstream.status, headers=headers, body=payload)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        await self._pump(upstream, response, None)
        return response

    @staticmethod
    async def _whole_json(upstream: UpstreamResponse, headers: CIMultiDict[str], whole: bytes,
                          transform_json: Callable[[bytes], bytes],
                          decide_ahead: Callable[[bytes, bool], Awaitable[None]] | None, rewrite: bool) -> web.Response:
        """A whole JSON answer: as it came, or (``rewrite``) filtered, its decisions made first (R4)."""
        if rewrite and decide_ahead is not None:
            await decide_ahead(whole, False)
        return web.Response(status=upstream.status, headers=headers, body=transform_json(whole) if rewrite else whole)

    async def _relay_json(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        transform_json: Callable[[bytes], bytes],
        *,
        strict: bool,
        request_id: str | None = None,
        may_rewrite: Callable[[bytes], bool] | None = None,
        decide_ahead: Callable[[bytes, bool], Awaitable[None]] | None = None,
    ) -> web.StreamResponse:
        """R2, Z4: hold a JSON answer only while it may be a list; stream the rest (module docstring)."""
        limit = self.config.max_list_bytes
        length = upstream.content_length
        if upstream.arrived_whole and upstream.buffered <= min(STREAM_AFTER, limit):
            # P1: all of it came with the headers and it is under both bounds (the usual small answer): what
            # the loop below would do in one round. Unscanned only when no list can be in it, unasked.
            whole = await self._read_chunk(upstream)
            return await self._whole_json(upstream, headers, whole, transform_json, decide_ahead,
                                          strict or mentions_a_list_key(whole) or (may_rewrite is not None and may_rewrite(whole)))
        holds_a_list = strict  # from here on: the answer is read whole (up to `limit`) and filtered
        pieces: list[bytes] = []
        size = 0
        tail = b""  # the last bytes scanned, in front of the next chunk (a key split across two)
        while True:
            if holds_a_list and max(size, length or 0) > limit:
                what = "a list answer" if strict else "an answer that may hold a list"
                seen = f"Content-Length {length}" if (length or 0) > limit else f"{size} bytes read"
                raise UpstreamError("upstream_list_too_large",
                                    f"{what} is over upstream.max_list_bytes ({limit} bytes): {seen}")
            if not holds_a_list and size > min(STREAM_AFTER, limit):
                break  # no list key in the first STREAM_AFTER bytes: stream the rest
            chunk = await self._read_chunk(upstream)
            if not chunk:  # the whole answer is here: the filter reads it as one document
                whole = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                # P1: an answer the scan found no list key in, when no list was asked for, is what the filter
                # would return unchanged (its own first step is the same scan); otherwise the filter reads it.
                return await self._whole_json(upstream, headers, whole, transform_json, decide_ahead,
                                              holds_a_list or (may_rewrite is not None and may_rewrite(whole)))
            pieces.append(chunk)
            size += len(chunk)
            if not holds_a_list:
                window = tail + chunk
                holds_a_list = mentions_a_list_key(window)
                tail = window[-LIST_KEY_LOOK_BEHIND:]
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        held = b"".join(pieces)
        del pieces
        try:
            await response.write(held)
            del held
            while chunk := await self._read_chunk(upstream, streaming=True):
                window = tail + chunk
                if mentions_a_list_key(window):
                    self._abort_late_list(request, size, request_id)
                    return response
                tail = window[-LIST_KEY_LOOK_BEHIND:]
                size += len(chunk)
                await response.write(chunk)
        except _UpstreamEnded as exc:
            # Headers are sent: no 502 is possible. An incomplete answer must not look complete.
            log.warning("upstream JSON answer ended abruptly after %d bytes: %s; the client connection was closed",
                        size, exc)
            self._abort(request)
            return response
        except ConnectionResetError:
            log.info("client went away during a streamed response; closing the upstream stream")
            upstream.close()
            return response
        except asyncio.CancelledError:
            upstream.close()
            raise
        try:
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    @staticmethod
    async def _read_chunk(upstream: UpstreamResponse, *, streaming: bool = False) -> bytes:
        """The next chunk of the body, ``b""`` at its end. An upstream failure before the client's headers
        are sent is a 502; after, it is ``_UpstreamEnded`` for the caller to end the stream."""
        try:
            return await upstream.read_chunk()
        except BodyError as exc:
            if streaming:
                raise _UpstreamEnded(type(exc).__name__) from exc
            raise UpstreamError("upstream_broken", f"{type(exc).__name__}: {exc}") from exc

    def _abort_late_list(self, request: web.Request, sent: int, request_id: str | None) -> None:
        log.error(
            "refused %s %s: upstream_late_list_key: a list key appeared in a JSON answer after %d bytes had "
            "been streamed to the client; the connection was aborted (fail closed, R2/I8)",
            request.method, request.path, sent,
            extra={"fields": {"reason": "upstream_late_list_key", "sent_bytes": sent, "request_id": request_id}},
        )
        if self.metrics is not None:
            self.metrics.upstream_errors.labels("upstream_late_list_key").inc()
        self._abort(request)

    @staticmethod
    def _abort(request: web.Request) -> None:
        """End the client connection without the end of the body (no last chunk): the answer is incomplete."""
        if request.transport is not None:
            request.transport.abort()

    async def _relay_event_stream(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        headers: CIMultiDict[str],
        transform_event: Callable[[bytes], bytes | None] | None,
        *,
        strict: bool = False,
        request_id: str | None = None,
        decide_ahead: Callable[[bytes, bool], Awaitable[None]] | None = None,
    ) -> web.StreamResponse:
        headers.setdefault("Cache-Control", "no-cache")
        headers["X-Accel-Buffering"] = "no"  # tell any buffering proxy in front of us not to
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        if self.metrics is not None:
            self.metrics.open_streams.inc()
        try:
            await self._pump(upstream, response, transform_event, strict=strict, request_id=request_id, decide_ahead=decide_ahead)
        finally:
            if self.metrics is not None:
                self.metrics.open_streams.dec()
        return response

    async def _pump(
        self,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        transform_event: Callable[[bytes], bytes | None] | None,
        *,
        strict: bool = False,
        request_id: str | None = None,
        decide_ahead: Callable[[bytes, bool], Awaitable[None]] | None = None,
    ) -> None:
        """Copy the upstream body as it arrives. An upstream dying mid-stream ends the stream cleanly."""
        limit = self.config.max_list_bytes
        splitter = EventSplitter(max(MAX_EVENT_BYTES, limit)) if transform_event is not None else None
        try:
            async for chunk in upstream:
                if splitter is None:
                    await response.write(chunk)
                    continue
                try:
                    events = splitter.feed(chunk)
                except ValueError as exc:
                    log.error("upstream SSE framing failed (%s); the stream was ended", exc)
                    return
                for raw in events:
                    if len(raw) > limit and (strict or mentions_a_list_key(raw)):
                        # R2: the filter would have to parse it, and it is over the list bound. Headers
                        # are sent, so no 502: end the stream without it (fail closed).
                        log.error("dropped an upstream SSE event of %d bytes that may hold a list (over "
                                  "upstream.max_list_bytes, %d); the stream was ended: upstream_list_too_large",
                                  len(raw), limit,
                                  extra={"fields": {"reason": "upstream_list_too_large", "request_id": request_id}})
                        if self.metrics is not None:
                            self.metrics.upstream_errors.labels("upstream_list_too_large").inc()
                        return
                    try:
                        if decide_ahead is not None:
                            await decide_ahead(raw, True)
                        event = transform_event(raw)
                    except Exception:
                        # Headers are sent, so no error status is possible: end the stream rather than
                        # pass on an event that was not checked (fail closed).
                        log.exception("could not filter an upstream event; the stream was ended")
                        return
                    if event:
                        await response.write(event)
            if splitter is not None and splitter.pending:
                log.warning("upstream event stream ended inside an event; the partial event was dropped")
        except BodyError as exc:
            log.warning("upstream stream ended abruptly: %s (%s)", type(exc).__name__, exc)
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
