"""U3: telling the upstream who is calling, without giving it the caller's token.

``IdentityHeaders`` turns configured claims into headers (``X-MCP-Subject: sub``); headers of the same
names sent by the client are removed by the proxy first (U1), so they cannot be spoofed.

``IdentityAssertion`` signs a short-lived JWT with the gateway's own key: ``iss`` is the gateway's
public URL, ``aud`` the upstream URL, ``sub``, ``client_id``, ``scope`` and ``subject_issuer`` (the
identity provider that vouched for the caller). Its ``typ`` is ``mcp-identity+jwt`` so it can never be
mistaken for an access token (RFC 8725 §3.11). The upstream verifies it with the gateway's public key.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cachetools import TTLCache

from gateway.auth.keys import SigningKey
from gateway.auth.principal import Principal
from gateway.config import IdentityAssertionConfig

ASSERTION_TYPE = "mcp-identity+jwt"
MAX_HEADER_VALUE = 1024


def claim_value(principal: Principal, claim: str) -> str | None:
    """A claim as a header value: strings as they are, lists comma-joined, other values as JSON."""
    standard = {"sub": principal.subject, "iss": principal.issuer, "client_id": principal.client_id,
                "scope": " ".join(sorted(principal.scopes))}
    value: Any = standard[claim] if claim in standard else principal.claims.get(claim)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    # No CR, LF or other control characters in a header value; bounded length.
    text = "".join(ch for ch in text if ch >= " " and ch != "\x7f")
    return text[:MAX_HEADER_VALUE] or None


class IdentityHeaders:
    def __init__(self, mapping: Mapping[str, str]):
        self.mapping = dict(mapping)  # header -> claim

    def headers(self, principal: Principal) -> dict[str, str]:
        headers = {}
        for header, claim in self.mapping.items():
            value = claim_value(principal, claim)
            if value is not None:
                headers[header] = value
        return headers


def load_signing_key(path: Path) -> SigningKey:
    return SigningKey.from_pem(path.read_bytes())


class IdentityAssertion:
    def __init__(self, config: IdentityAssertionConfig, *, issuer: str, audience: str, clock: Callable[[], float] = time.time):
        self.header = config.header
        self.ttl = config.ttl
        self.issuer = issuer
        self.audience = audience
        self.clock = clock
        self.signing_key = load_signing_key(config.key_file)  # O6: its public half is in /.well-known/jwks.json
        self.key, self.algorithm, self.kid = self.signing_key.private, self.signing_key.algorithm, self.signing_key.kid
        # Signing (RSA especially) costs far more than a lookup: reuse an assertion for half its life.
        self._cache: TTLCache[tuple[Any, ...], str] = TTLCache(maxsize=10_000, ttl=max(self.ttl / 2, 1.0), timer=clock)

    def headers(self, principal: Principal) -> dict[str, str]:
        key = (principal.issuer, principal.subject, principal.client_id, tuple(sorted(principal.scopes)))
        assertion = self._cache.get(key)
        if assertion is None:
            assertion = self.sign(principal)
            self._cache[key] = assertion
        return {self.header: assertion}

    def sign(self, principal: Principal) -> str:
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.subject,
            "client_id": principal.client_id,
            "scope": " ".join(sorted(principal.scopes)),
            "subject_issuer": principal.issuer,
            "iat": now,
            "exp": now + int(self.ttl),
            "jti": secrets.token_urlsafe(12),
        }
        return self.signing_key.sign(claims, typ=ASSERTION_TYPE)
