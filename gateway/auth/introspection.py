"""T9: RFC 7662 token introspection, the fallback for tokens that are not JWTs (and only for those).

One ``Introspector`` per process. It authenticates to the endpoint as a client (``client_secret_basic``
by default, or ``client_secret_post`` or ``private_key_jwt``: ``gateway.auth.client_auth``), checks ``active``, ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` like T3-T5 (and I6: times
must be finite numbers within ±2^53, values with whitespace never match), caches answers under a hash of
the token (positive ones no longer than the token lives, negative ones briefly), and lets concurrent
requests carrying the same new token share one call. An endpoint that cannot be reached gives 503 with
``Retry-After``: the gateway's trouble is not the client's, so never a 401.

R6: at most ``auth.introspection.max_concurrent`` calls are in flight; a request that would start one more
gets 503 ``introspection_busy`` with ``Retry-After`` at once, never a queue (every new random opaque token
costs a call, so an unbounded queue is the attacker's). Cache hits and requests joining the call already
in flight for their token take no place. A call runs as its own task: a client that goes away neither
cancels it for the others waiting on it nor frees its place before the endpoint has answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import aiohttp
from cachetools import TLRUCache

from gateway.auth.client_auth import ClientAuthentication
from gateway.auth.jwks import FetchError, read_capped
from gateway.auth.jwt import IssuerRules, time_claim
from gateway.auth.principal import Principal, principal_from_claims
from gateway.config import IntrospectionConfig
from gateway.errors import Unauthenticated, VerifierUnavailable
from gateway.mcp.jsonrpc import MAX_DEPTH as MAX_CLAIM_DEPTH
from gateway.mcp.jsonrpc import nested_deeper_than

log = logging.getLogger(__name__)

NEGATIVE_TTL = 10.0
# token_type values (RFC 7662 §2.2, RFC 8693 §3 URIs) that name something other than an access token.
NOT_ACCESS_TOKENS = ("refresh", "id_token", "id-token", "authorization_code", "code")
MAX_RESPONSE_BYTES = 64 * 1024
BUSY_RETRY_AFTER = 1  # seconds: calls take milliseconds, so places free quickly

EndpointResolver = Callable[[], Awaitable[str]]


class Introspector:
    def __init__(
        self,
        config: IntrospectionConfig,
        rules: Mapping[str, IssuerRules],
        *,
        resolve_endpoint: EndpointResolver,
        clock: Callable[[], float] = time.time,
        max_entries: int = 10_000,
    ):
        self.config = config
        self.rules = rules
        self.clock = clock
        self._resolve_endpoint = resolve_endpoint
        self._endpoint: str | None = config.endpoint
        self._client = ClientAuthentication(
            client_id=config.client_id, method=config.auth_method,
            secret=config.client_secret.reveal() if config.client_secret else None,
            key=config.private_key, audience=config.assertion_audience, clock=clock)
        # value: Principal, or the Unauthenticated error to repeat (negative cache)
        self._cache: TLRUCache[bytes, Principal | Unauthenticated] = TLRUCache(
            maxsize=max_entries, ttu=self._expiry, timer=clock
        )
        self._expiries: dict[int, float] = {}
        self._inflight: dict[bytes, asyncio.Task[Principal]] = {}  # one per token: its size is the calls in flight
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0
        self.cache_hits = 0
        self.busy_refusals = 0

    def _expiry(self, key: bytes, value: Principal | Unauthenticated, now: float) -> float:
        if isinstance(value, Unauthenticated):
            return now + min(NEGATIVE_TTL, self.config.cache_ttl)
        limit = now + self.config.cache_ttl
        return min(limit, value.expires_at) if value.expires_at is not None else limit

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        for call in self._inflight.values():
            call.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def introspect(self, token: str, token_hash: bytes) -> Principal:
        cached = self._cache.get(token_hash)
        if cached is not None:
            self.cache_hits += 1
        if isinstance(cached, Principal):
            return cached
        if isinstance(cached, Unauthenticated):
            raise Unauthenticated(cached.reason, cached.detail + " (cached)")
        call = self._inflight.get(token_hash)
        if call is None:
            if len(self._inflight) >= self.config.max_concurrent:
                self.busy_refusals += 1
                busy = VerifierUnavailable("introspection_busy", f"{len(self._inflight)} introspection calls in flight "
                                                                 "(auth.introspection.max_concurrent)")
                busy.retry_after = BUSY_RETRY_AFTER
                raise busy
            call = asyncio.create_task(self._call_and_cache(token, token_hash), name="introspection")
            call.add_done_callback(partial(self._called, token_hash))
            self._inflight[token_hash] = call
        return await asyncio.shield(call)

    async def _call_and_cache(self, token: str, token_hash: bytes) -> Principal:
        try:
            principal = await self._call(token)
        except Unauthenticated as exc:
            # A fresh copy: the raised one's traceback holds the call's frames (the token, the answer).
            self._cache[token_hash] = Unauthenticated(exc.reason, exc.detail)
            raise
        self._cache[token_hash] = principal
        return principal

    def _called(self, token_hash: bytes, call: asyncio.Task[Principal]) -> None:
        del self._inflight[token_hash]
        if not call.cancelled():
            call.exception()  # retrieved: the waiters, if any are left, raise it themselves

    async def _call(self, token: str) -> Principal:
        if self._session is None:
            raise VerifierUnavailable("introspection_unavailable", "Introspector.start() was not awaited")
        endpoint = await self._endpoint_url()
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {"Accept": "application/json"}
        self._client.apply(endpoint, form, headers)  # O6
        self.calls += 1
        try:
            async with self._session.post(endpoint, data=form, headers=headers) as response:
                if response.status != 200:
                    raise VerifierUnavailable("introspection_failed", f"{endpoint} answered {response.status}")
                try:
                    body = await read_capped(response.content, MAX_RESPONSE_BYTES)
                except FetchError as exc:
                    raise VerifierUnavailable("introspection_failed", f"{endpoint}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VerifierUnavailable("introspection_unavailable", f"{endpoint}: {type(exc).__name__}") from exc
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise VerifierUnavailable("introspection_failed", f"{endpoint}: answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise VerifierUnavailable("introspection_failed", f"{endpoint}: answer is not a JSON object")
        return self.check_answer(answer)

    def check_answer(self, answer: Mapping[str, Any]) -> Principal:
        """RFC 7662 §2.2 answer → caller, with the same issuer, audience and time rules as JWTs."""
        if answer.get("active") is not True:
            raise Unauthenticated("token_inactive", "introspection says the token is not active")
        iss = answer.get("iss")
        if iss is None and len(self.rules) == 1:
            iss = next(iter(self.rules))  # RFC 7662: iss is optional; one issuer leaves no doubt
        rules = self.rules.get(iss) if isinstance(iss, str) else None
        if rules is None or not rules.issued(iss):
            raise Unauthenticated("introspection_wrong_issuer", "iss is missing or not a configured issuer")
        if not rules.names_resource(answer.get("aud")):
            raise Unauthenticated("introspection_wrong_audience", "aud missing or does not name this resource")
        # I6: the answer is JSON read by Python's json, which accepts NaN, Infinity and 1e400 (as infinity).
        now = self.clock()
        leeway = rules.config.leeway
        exp = time_claim(answer, "exp", reason="introspection_claim_malformed")
        if exp is not None and now >= exp + leeway:
            raise Unauthenticated("token_expired", "introspected token expired")
        nbf = time_claim(answer, "nbf", reason="introspection_claim_malformed")
        if nbf is not None and now + leeway < nbf:
            raise Unauthenticated("token_not_yet_valid", "introspected token not yet valid")
        iat = time_claim(answer, "iat", reason="introspection_claim_malformed")
        if iat is not None and now + leeway < iat:
            raise Unauthenticated("token_issued_in_future", "introspected token issued in the future")
        token_type = answer.get("token_type")
        if isinstance(token_type, str) and any(kind in token_type.lower() for kind in NOT_ACCESS_TOKENS):
            # RFC 7662 §2.2 token_type: a refresh token (or an ID token) is not a credential for this resource.
            raise Unauthenticated("introspection_not_an_access_token", f"token_type {token_type[:60]!r}")
        if nested_deeper_than(dict(answer), MAX_CLAIM_DEPTH):
            raise Unauthenticated("introspection_claim_malformed", f"claims nested deeper than {MAX_CLAIM_DEPTH} levels")
        claims = dict(answer)
        claims["iss"] = iss
        if "sub" in claims and (not isinstance(claims["sub"], str) or not claims["sub"]):
            # Only a missing sub may fall back to the client: {"sub": 123, "client_id": "svc-admin"} is not svc-admin.
            raise Unauthenticated("introspection_claim_malformed", "sub is not a non-empty string")
        if "sub" not in claims:
            # RFC 7662 makes sub optional; without a resource owner (client credentials) RFC 9068 §2.2 says
            # the subject is the client, so the client id stands in for it.
            if not isinstance(claims.get("client_id"), str) or not claims["client_id"]:
                raise Unauthenticated("introspection_no_subject", "introspection answer has neither sub nor client_id")
            claims["sub"] = claims["client_id"]
        claims.pop("active", None)
        return principal_from_claims(claims, token_type="introspected", namespace=rules.namespace)

    async def _endpoint_url(self) -> str:
        if self._endpoint is None:
            try:
                self._endpoint = await self._resolve_endpoint()
            except Exception as exc:  # discovery trouble is ours, not the client's
                raise VerifierUnavailable("introspection_unavailable", f"no introspection endpoint: {exc}") from exc
        return self._endpoint
