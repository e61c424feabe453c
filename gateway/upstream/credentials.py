"""U2: what the gateway presents to the upstream instead of the client's token.

    none                nothing
    static              a header value from configuration, the environment or a file (re-read on change)
    client_credentials  an OAuth token for the gateway itself, cached until shortly before it expires
    token_exchange      RFC 8693: the client's token exchanged at the authorization server for one meant
                        for the upstream; cached per client token (by hash) until it expires

The gateway authenticates to the token endpoint with ``upstream.auth.auth_method`` (a client secret, or
``private_key_jwt``: ``gateway.auth.client_auth``, O6). The client's token goes to the authorization
server in a token exchange and nowhere else. Any failure to
obtain a credential is the gateway's problem, not the client's: ``UpstreamError`` (502), never a 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from cachetools import TLRUCache

from gateway.auth.client_auth import ClientAuthentication
from gateway.auth.jwks import FetchError, read_capped
from gateway.config import UpstreamAuthConfig
from gateway.errors import UpstreamError

log = logging.getLogger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Refresh this long before a credential expires, so a request never carries one that dies in flight.
EXPIRY_MARGIN = 30.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024


class UpstreamCredential(Protocol):
    """The one method every credential type has: the headers to add for this request."""

    async def headers(self, client_token: str, token_hash: bytes) -> Mapping[str, str]: ...


class NoCredential:
    async def headers(self, client_token: str, token_hash: bytes) -> Mapping[str, str]:
        return {}


class StaticCredential:
    """A fixed header value; with ``value_file`` the file is re-read when it changes (rotated Secrets)."""

    def __init__(self, header: str, *, value: str | None = None, value_file: Path | None = None, clock: Callable[[], float] = time.monotonic):
        self.header = header
        self._value = value
        self._file = value_file
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._clock = clock

    async def headers(self, client_token: str, token_hash: bytes) -> Mapping[str, str]:
        return {self.header: self.current()}

    def current(self) -> str:
        if self._file is None:
            return self._value or ""
        now = self._clock()
        if now - self._checked >= 1.0:  # at most one stat per second
            self._checked = now
            try:
                stat = os.stat(self._file)  # follows the symlink Kubernetes swaps on rotation
                stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if stamp != self._stamp:
                    self._value = self._file.read_text(encoding="utf-8").strip()
                    self._stamp = stamp
                    log.info("upstream credential read from %s", self._file)
            except OSError as exc:
                if self._value is None:
                    raise UpstreamError("upstream_credential_unavailable", f"cannot read {self._file}: {exc.strerror}") from exc
                log.warning("cannot re-read %s (%s); keeping the previous value", self._file, exc.strerror)
        if not self._value:
            raise UpstreamError("upstream_credential_unavailable", f"{self._file} is empty")
        return self._value


class TokenEndpoint:
    """An OAuth token endpoint the gateway calls as a confidential client (``upstream.auth.auth_method``:
    client_secret_basic by default, client_secret_post or private_key_jwt; gateway.auth.client_auth)."""

    def __init__(self, config: UpstreamAuthConfig):
        self.url = config.token_endpoint or ""
        self._client = ClientAuthentication(
            client_id=config.client_id or "", method=config.auth_method,
            secret=config.client_secret.reveal() if config.client_secret else None,
            key=config.private_key, audience=config.assertion_audience)
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, form: Mapping[str, str]) -> tuple[str, float]:
        """POSTs ``form``; returns the access token and its lifetime in seconds."""
        if self._session is None:
            raise UpstreamError("upstream_credential_failed", "TokenEndpoint.start() was not awaited")
        self.calls += 1
        data = {k: v for k, v in form.items() if v}
        headers = {"Accept": "application/json"}
        self._client.apply(self.url, data, headers)  # O6
        try:
            async with self._session.post(self.url, data=data, headers=headers) as response:
                body = await read_capped(response.content, MAX_TOKEN_RESPONSE_BYTES)
                status = response.status
        except FetchError as exc:
            raise UpstreamError("upstream_credential_failed", f"{self.url}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError("upstream_credential_failed", f"{self.url}: {type(exc).__name__}") from exc
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if status != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise UpstreamError("upstream_credential_failed", f"{self.url} answered {status} {error or ''}".strip())
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError("upstream_credential_failed", f"{self.url}: no access_token in the answer")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) else 300.0
        return token, lifetime


class ClientCredentials:
    """The gateway's own token (RFC 6749 §4.4), one for all requests, refreshed once for everyone."""

    def __init__(self, config: UpstreamAuthConfig, endpoint: TokenEndpoint, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.endpoint = endpoint
        self.clock = clock
        self._token: str | None = None
        self._valid_until = 0.0
        self._refresh: asyncio.Task[str] | None = None

    async def headers(self, client_token: str, token_hash: bytes) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        if self._token is not None and self.clock() < self._valid_until:
            return self._token
        if self._refresh is None:
            self._refresh = asyncio.create_task(self._fetch())
            self._refresh.add_done_callback(lambda _task: setattr(self, "_refresh", None))
        return await asyncio.shield(self._refresh)

    async def _fetch(self) -> str:
        token, lifetime = await self.endpoint.request({
            "grant_type": "client_credentials",
            "scope": self.config.scope or "",
            "audience": self.config.audience or "",
            "resource": self.config.resource or "",
        })
        self._token = token
        self._valid_until = self.clock() + max(lifetime - EXPIRY_MARGIN, lifetime / 2)
        log.info("obtained the gateway's upstream token (valid %.0fs)", lifetime)
        return token


class TokenExchange:
    """RFC 8693: the client's token for an upstream token, cached under the client token's hash."""

    def __init__(self, config: UpstreamAuthConfig, endpoint: TokenEndpoint, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000):
        self.config = config
        self.endpoint = endpoint
        self.clock = clock
        self._cache: TLRUCache[bytes, tuple[str, float]] = TLRUCache(maxsize=max_entries, ttu=lambda _k, v, _now: v[1], timer=clock)
        self._inflight: dict[bytes, asyncio.Future[str]] = {}

    async def headers(self, client_token: str, token_hash: bytes) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {await self.token_for(client_token, token_hash)}"}

    async def token_for(self, client_token: str, token_hash: bytes) -> str:
        cached = self._cache.get(token_hash)
        if cached is not None:
            return cached[0]
        pending = self._inflight.get(token_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[token_hash] = future
        try:
            token, lifetime = await self.endpoint.request({
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token": client_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": ACCESS_TOKEN_TYPE,
                "scope": self.config.scope or "",
                "audience": self.config.audience or "",
                "resource": self.config.resource or "",
            })
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(token_hash, None)
        self._cache[token_hash] = (token, self.clock() + max(lifetime - EXPIRY_MARGIN, lifetime / 2))
        future.set_result(token)
        return token


def build_credential(config: UpstreamAuthConfig) -> tuple[UpstreamCredential, TokenEndpoint | None]:
    """The credential for ``upstream.auth``, and the token endpoint it needs started, if any."""
    if config.type == "static":
        return StaticCredential(config.header, value=config.value.reveal() if config.value else None, value_file=config.value_file), None
    if config.type in ("client_credentials", "token_exchange"):
        endpoint = TokenEndpoint(config)
        credential: Any = ClientCredentials(config, endpoint) if config.type == "client_credentials" else TokenExchange(config, endpoint)
        return credential, endpoint
    return NoCredential(), None
