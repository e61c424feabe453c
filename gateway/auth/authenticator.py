"""From a raw bearer token to a verified ``Principal`` (T2-T9, T11).

The order: a verified-token cache (keyed by a hash, never the token: T11); the shape test that decides
JWT or not (T2, leniently: I6); for a JWT, the strict compact-serialization rules, the issuer's rules, the
header rules, the key (refetching once on an unknown ``kid``, T8) and the signature and claims; for
anything else, introspection when configured (T9). A JWT that fails, however it is malformed, is never
introspected. Each issuer's rules carry the namespace of its principals (I7).

``authenticate_request`` puts the sender checks around it (S1-S3, ``gateway.auth.sender``): the DPoP
proof's cheap checks before the token, its binding, signature and replay window after it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

from gateway.auth.introspection import Introspector
from gateway.auth.jwks import JwksCache
from gateway.auth.jwt import IssuerRules, check_header, read_jose_header, read_unverified_claims, verify_jwt
from gateway.auth.bearer import Credentials
from gateway.auth.principal import Principal, principal_namespaces
from gateway.auth.sender import RequestFacts, SenderConstraints
from gateway.config import AuthConfig
from gateway.errors import Unauthenticated

# A verified token is trusted from the cache until shortly before it expires, and never for longer than this.
VERIFIED_CACHE_MARGIN = 5.0
VERIFIED_CACHE_MAX_TTL = 3600.0


def token_hash(token: str) -> bytes:
    """T11: the only form in which a token is used as a key."""
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(
        self,
        config: AuthConfig,
        public_url: str,
        jwks: JwksCache,
        *,
        introspector: Introspector | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ):
        namespaces = principal_namespaces(config.issuers)  # I7
        self.rules = {
            issuer.issuer: IssuerRules.build(issuer, public_url, i, namespace=namespaces[issuer.issuer])
            for i, issuer in enumerate(config.issuers)
        }
        self.jwks = jwks
        self.introspector = introspector
        self.senders: SenderConstraints | None = None  # S1-S3; set by the app wiring
        self.clock = clock
        self._verified: TLRUCache[bytes, Principal] = TLRUCache(maxsize=cache_size, ttu=self._expiry, timer=clock)
        self.verifications = 0

    @staticmethod
    def _expiry(key: bytes, principal: Principal, now: float) -> float:
        limit = now + VERIFIED_CACHE_MAX_TTL
        return limit if principal.expires_at is None else min(limit, principal.expires_at - VERIFIED_CACHE_MARGIN)

    async def authenticate_request(self, credentials: Credentials, digest: bytes, request: RequestFacts) -> Principal:
        """The caller of one request: its token verified, and what the token is bound to proven (S1-S3)."""
        if self.senders is None:
            if credentials.scheme != "bearer":
                raise Unauthenticated("unsupported_scheme", "Authorization scheme dpop", token_sent=False)
            principal = await self.authenticate(credentials.token, digest)
            if "cnf" in principal.claims:  # fail closed: a bound token is never a bearer token by omission
                raise Unauthenticated("sender_checks_unavailable", "a bound token (cnf) and no sender checks configured")
            return principal
        proof = self.senders.before_token(credentials.scheme, credentials.token, request)
        principal = await self.authenticate(credentials.token, digest)
        await self.senders.after_token(principal, credentials.scheme, proof, request)
        return principal

    async def authenticate(self, token: str, digest: bytes | None = None) -> Principal:
        """``digest``: ``token_hash(token)`` when the caller has it already (it keys the upstream credential too)."""
        if digest is None:
            digest = token_hash(token)
        cached = self._verified.get(digest)
        if cached is not None:
            return cached
        header = read_jose_header(token)  # raises jwt_malformed for a JWT that breaks the strict rules (I6)
        if header is None:
            if self.introspector is None:
                raise Unauthenticated("not_a_jwt", "token is not a JWT and no introspection is configured")
            return await self.introspector.introspect(token, digest)
        principal = await self._verify_jwt(token, header)
        self._verified[digest] = principal
        return principal

    async def _verify_jwt(self, token: str, header: dict[str, Any]) -> Principal:
        claims = read_unverified_claims(token)
        issuer = claims.get("iss")
        rules = self.rules.get(issuer) if isinstance(issuer, str) else None
        if rules is None:
            raise Unauthenticated("jwt_unknown_issuer", "iss is not a configured issuer")
        alg = check_header(header, rules)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("jwt_header_malformed", "kid is not a string")
        keys = await self.jwks.keys(rules.config.issuer)
        key = keys.select(kid, alg)
        if key is None and kid is not None and not keys.has_kid(kid):
            # T8: perhaps the issuer rotated its keys since our last fetch.
            keys = await self.jwks.keys_after_unknown_kid(rules.config.issuer)
            key = keys.select(kid, alg)
        if key is None:
            if kid is None:
                raise Unauthenticated("jwt_no_kid", f"no kid and {alg} does not select exactly one key")
            if keys.has_kid(kid):
                raise Unauthenticated("jwt_key_alg_mismatch", f"key {kid[:64]!r} is not for {alg}")
            raise Unauthenticated("jwt_unknown_key", f"no key {kid[:64]!r} in the issuer's key set")
        self.verifications += 1
        return verify_jwt(token, key, rules, self.clock())
