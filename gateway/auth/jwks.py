"""Signing keys per issuer, fetched asynchronously and cached (T8).

``JwksCache`` owns, for every configured issuer: where its keys live (``jwks_uri`` from configuration, or
discovered from RFC 8414 / OpenID metadata whose ``issuer`` must match), the last good key set, and when
to fetch again. Its promises:

- one fetch at a time per issuer, shared by every request that waits for it;
- R6: a request waits for a fetch only when it needs one: while there are keys, ``keys`` answers at once,
  even while a refetch for some (possibly forged) token's unknown ``kid`` runs, and stale keys are served
  while one refresh runs in the background (stale-while-revalidate). Only with no keys at all does a
  request wait, and only a token whose ``kid`` is unknown waits for its refetch;
- a token with an unknown ``kid`` causes at most one refetch per ``jwks.refresh_cooldown`` per issuer;
- lifetimes come from ``Cache-Control: max-age``, clamped to ``jwks.cache_min``..``jwks.cache_max``;
- when a refresh fails the last good keys stay in use; with no keys at all the request gets 503, not 401;
- every fetch is bounded in time (``jwks.fetch_timeout``) and size (``jwks.max_bytes``).

It uses aiohttp's client, not PyJWT's blocking ``PyJWKClient``, so a slow identity provider never blocks
the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.auth.jwt import KeySet, parse_jwks
from gateway.config import IssuerConfig, JwksConfig
from gateway.errors import VerifierUnavailable

log = logging.getLogger(__name__)

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


class FetchError(Exception):
    """A metadata or key document could not be had; the message says why (no secrets in it)."""


async def fetch_json(session: aiohttp.ClientSession, url: str, *, timeout: float, max_bytes: int) -> tuple[Any, float | None]:
    """GET a JSON document with time and size limits. Returns the document and its ``max-age``, if any."""
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as response:
                if response.status != 200:
                    raise FetchError(f"{url} answered {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{url} is larger than {max_bytes} bytes")
                cache_control = response.headers.get("Cache-Control", "")
    except TimeoutError as exc:
        raise FetchError(f"{url} did not answer within {timeout:g}s") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{url} is not JSON") from exc
    match = None if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower() else _MAX_AGE.search(cache_control)
    return document, float(match.group(1)) if match else None


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, however it was split on the wire, refusing more than ``limit`` bytes."""
    body = bytearray()
    async for chunk in content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise FetchError(f"answer larger than {limit} bytes")
    return bytes(body)


def metadata_urls(issuer: str) -> list[str]:
    """T8 / RFC 8414 §3.1: where an issuer's metadata may be, in the order they are tried.

    For ``https://h/realms/x``: the well-known suffix inserted before the path (RFC 8414), then appended
    after it (OpenID Connect Discovery 1.0 §4).
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    urls = []
    for suffix in ("oauth-authorization-server", "openid-configuration"):
        urls.append(urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{suffix}{path}", "", "")))
    if path:
        for suffix in ("openid-configuration", "oauth-authorization-server"):
            urls.append(urlunsplit((parts.scheme, parts.netloc, f"{path}/.well-known/{suffix}", "", "")))
    return urls


@dataclass
class _IssuerState:
    config: IssuerConfig
    keys: KeySet | None = None
    metadata: dict[str, Any] | None = None
    expires_at: float = 0.0
    last_attempt: float = float("-inf")
    last_kid_refetch: float = float("-inf")
    fetches: int = 0
    fetched_at: float | None = None  # clock time of the last successful fetch
    inflight: asyncio.Task[KeySet] | None = None


class JwksCache:
    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        config: JwksConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.clock = clock
        self._states = {issuer.issuer: _IssuerState(issuer) for issuer in issuers}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.fetch_timeout))

    async def close(self) -> None:
        for state in self._states.values():
            if state.inflight is not None:
                state.inflight.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what requests use --------------------------------------------------------------------

    async def keys(self, issuer: str) -> KeySet:
        """The issuer's current keys, at once whenever there are some (R6).

        Fresh keys are served as they are, whatever fetch is in flight. Stale keys are served too, while
        one shared refresh runs in the background; when it fails they stay in use (T8). Only with no keys
        at all does the caller wait for a fetch.
        """
        state = self._states[issuer]
        if state.keys is not None:
            if self.clock() >= state.expires_at:
                self._start_fetch(state)  # stale-while-revalidate: a no-op while a fetch is in flight
            return state.keys
        if self.clock() < state.expires_at and state.inflight is None:
            # The last fetch failed and the cool-down runs: forged tokens must not make us fetch per request.
            raise VerifierUnavailable("jwks_unavailable", f"no keys for {issuer} (retrying after the cool-down)")
        return await self._refresh_or_keep(state)

    async def keys_after_unknown_kid(self, issuer: str) -> KeySet:
        """A token named a key we do not have: refetch, unless one was tried within the cool-down."""
        state = self._states[issuer]
        if state.inflight is None:
            # The cool-down counts only refetches caused by unknown kids, so a key rotated just after a
            # scheduled fetch is still picked up on the first request that uses it.
            if self.clock() - state.last_kid_refetch < self.config.refresh_cooldown:
                if state.keys is None:
                    raise VerifierUnavailable("jwks_unavailable", f"no keys for {issuer} (cooling down)")
                return state.keys
            state.last_kid_refetch = self.clock()
        return await self._refresh_or_keep(state)

    @property
    def ready(self) -> bool:
        """E2: every issuer's keys have been fetched at least once."""
        return all(state.keys is not None for state in self._states.values())

    def states(self) -> dict[str, _IssuerState]:
        """Per issuer: keys, fetch count and time (read by the metrics collector)."""
        return dict(self._states)

    def fetch_count(self, issuer: str) -> int:
        return self._states[issuer].fetches

    def metadata(self, issuer: str) -> dict[str, Any] | None:
        return self._states[issuer].metadata

    async def warm_up(self) -> None:
        """Fetch every issuer's keys once; failures are logged and retried by later calls."""
        await asyncio.gather(*(self._refresh_or_keep(s, quiet=True) for s in self._states.values()), return_exceptions=True)

    async def keep_warm(self, interval: float = 5.0) -> None:
        """Until every issuer has keys (readiness), retry the ones that do not."""
        while not self.ready:
            await self.warm_up()
            if not self.ready:
                await asyncio.sleep(interval)

    # -- fetching -----------------------------------------------------------------------------

    def _start_fetch(self, state: _IssuerState) -> asyncio.Task[KeySet]:
        """The issuer's one fetch in flight, started if there is none. It runs to its end even when every
        request waiting for it has gone (``shield``), so its result is never wasted."""
        if state.inflight is None:
            state.inflight = asyncio.create_task(self._fetch(state), name=f"jwks-fetch {state.config.issuer}")
            state.inflight.add_done_callback(partial(self._fetched, state))
        return state.inflight

    @staticmethod
    def _fetched(state: _IssuerState, task: asyncio.Task[KeySet]) -> None:
        state.inflight = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so a background refresh that failed is not "never retrieved"
        if isinstance(exc, FetchError) and state.keys is not None:
            log.warning("JWKS refresh for %s failed, keeping the last good keys: %s", state.config.issuer, exc)
        elif exc is not None and not isinstance(exc, FetchError):
            log.error("JWKS fetch for %s failed unexpectedly", state.config.issuer, exc_info=exc)

    async def _refresh_or_keep(self, state: _IssuerState, *, quiet: bool = False) -> KeySet:
        try:
            return await asyncio.shield(self._start_fetch(state))
        except FetchError as exc:
            if state.keys is not None:
                return state.keys  # T8: the last good keys stay in use (``_fetched`` logged the failure)
            if not quiet:
                log.warning("no keys for %s: %s", state.config.issuer, exc)
            raise VerifierUnavailable("jwks_unavailable", f"{state.config.issuer}: {exc}") from exc

    async def _fetch(self, state: _IssuerState) -> KeySet:
        if self._session is None:
            raise FetchError("JwksCache.start() was not awaited")
        state.last_attempt = self.clock()
        state.fetches += 1
        try:
            jwks_uri = state.config.jwks_uri or await self._discover_jwks_uri(state)
            document, max_age = await fetch_json(
                self._session, jwks_uri, timeout=self.config.fetch_timeout, max_bytes=self.config.max_bytes
            )
            try:
                keys = parse_jwks(document, state.config.algorithms)
            except ValueError as exc:
                raise FetchError(f"{jwks_uri}: {exc}") from exc
            if not keys.keys:
                raise FetchError(f"{jwks_uri} has no usable signing key")
        except FetchError:
            # Try again after the cool-down, not on every request.
            state.expires_at = self.clock() + self.config.refresh_cooldown
            if not state.config.jwks_uri:
                state.metadata = None  # the keys may have moved: discover again next time
            raise
        lifetime = min(max(max_age if max_age is not None else self.config.cache_min, self.config.cache_min), self.config.cache_max)
        state.keys = keys
        state.fetched_at = self.clock()
        state.expires_at = self.clock() + lifetime
        log.info("fetched %d key(s) for %s, cached for %.0fs", len(keys.keys), state.config.issuer, lifetime)
        return keys

    async def _discover_jwks_uri(self, state: _IssuerState) -> str:
        if state.metadata is None:
            state.metadata = await self.discover(state.config.issuer)
        jwks_uri = state.metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
            raise FetchError(f"metadata of {state.config.issuer} has no usable jwks_uri")
        return jwks_uri

    async def discover(self, issuer: str) -> dict[str, Any]:
        """T8: the first metadata document found, which must name exactly this issuer (RFC 8414 §3.3)."""
        if self._session is None:
            raise FetchError("JwksCache.start() was not awaited")
        failures = []
        for url in metadata_urls(issuer):
            try:
                document, _ = await fetch_json(self._session, url, timeout=self.config.fetch_timeout, max_bytes=self.config.max_bytes)
            except FetchError as exc:
                failures.append(str(exc))
                continue
            if not isinstance(document, dict):
                failures.append(f"{url} is not a JSON object")
                continue
            if document.get("issuer") != issuer:
                # RFC 8414 §3.3: a document for another issuer must not be used (mix-up defence).
                failures.append(f"{url} names issuer {str(document.get('issuer'))[:100]!r}")
                continue
            return document
        raise FetchError("no metadata found: " + "; ".join(failures))
