"""JWT access tokens: shape test, header rules and verification (T2-T7). Pure: no I/O, the clock is a value.

The checks run in the order of RFC 8725's advice: decide what the token is from its shape (T2), pick the
issuer's rules by its exact ``iss`` (T3), refuse any header that would make us trust the token's own say
on keys (``jku``, ``x5u``, ``jwk``, ``x5c`` are never read), bind each key to one algorithm, check the
signature with PyJWT, then audience (T4), time (T5) and type (T6) ourselves, so every refusal has a
precise reason for the log while the client only sees "Invalid token" (T7).

Warning: ``jwt.decode`` is only ever called with ``algorithms=[key.alg]`` where ``key.alg`` comes from
our JWKS handling, never from the token. That single line is what stops algorithm confusion attacks.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.api_jwk import PyJWK

from gateway.auth.principal import Principal, principal_from_claims
from gateway.config import IssuerConfig
from gateway.errors import Unauthenticated

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1

# RFC 7518 §6 / RFC 8037: the one algorithm a key is used with when its JWK names none.
_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "Ed448": "EdDSA"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    alg: str
    key: Any  # a cryptography public key


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...] = ()

    def select(self, kid: str | None, alg: str) -> VerificationKey | None:
        """T2: ``kid`` picks the key; without ``kid``, only when exactly one key fits ``alg``."""
        if kid is not None:
            for key in self.keys:
                if key.kid == kid and key.alg == alg:
                    return key
            return None
        fitting = [key for key in self.keys if key.alg == alg]
        return fitting[0] if len(fitting) == 1 else None

    def has_kid(self, kid: str | None) -> bool:
        return kid is not None and any(key.kid == kid for key in self.keys)


def key_algorithm(jwk: Mapping[str, Any]) -> str | None:
    """T2: a key's one algorithm: its JWK ``alg``, else derived from ``kty``/``crv``."""
    if isinstance(jwk.get("alg"), str):
        return jwk["alg"]
    if jwk.get("kty") == "RSA":
        return "RS256"
    if jwk.get("kty") in ("EC", "OKP"):
        return _ALG_BY_CURVE.get(jwk.get("crv", ""))
    return None


def parse_jwks(document: Any, allowed_algorithms: Iterable[str]) -> KeySet:
    """The signing keys of a JWKS document that fit ``allowed_algorithms``; every other key is skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' array")
    allowed = set(allowed_algorithms)
    keys = []
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            continue
        alg = key_algorithm(jwk)
        reason = None
        if jwk.get("use", "sig") != "sig":
            reason = f"use {jwk.get('use')!r}"
        elif jwk.get("kty") == "oct":
            reason = "symmetric key"  # T2: never HS* with keys from a JWKS
        elif "d" in jwk:
            reason = "private key material published"
        elif alg not in allowed:
            reason = f"algorithm {alg!r} not allowed for this issuer"
        if reason:
            log.debug("JWKS key %d (kid %r) skipped: %s", index, jwk.get("kid"), reason)
            continue
        try:
            parsed = PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %d (kid %r) unusable: %s", index, jwk.get("kid"), exc)
            continue
        kid = jwk.get("kid")
        keys.append(VerificationKey(kid=kid if isinstance(kid, str) else None, alg=alg, key=parsed.key))
    return KeySet(tuple(keys))


_NEVER_MATCHES = "\x00not a usable URL"


def canonical_url(value: str) -> str:
    """T4: scheme and host lower-case, default port dropped, empty path as ``/``, no fragment.

    Values that are not http(s) URLs (``api://x``, plain names) are compared as they are.
    """
    try:
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return value
        port = parts.port  # raises ValueError for a port out of range
    except ValueError:
        return _NEVER_MATCHES
    if parts.username is not None or parts.password is not None:
        return _NEVER_MATCHES  # https://user@host/mcp is not this resource, whatever follows the @
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _b64url_decode(part: str) -> bytes:
    if not part or "=" in part:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def read_jose_header(token: str) -> dict[str, Any] | None:
    """T2's shape test: three base64url parts whose first decodes to a JSON object. Otherwise ``None``.

    Only a token that fails this test may go to introspection (T9).
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        header = json.loads(_b64url_decode(parts[0]))
        _b64url_decode(parts[1])
        if parts[2]:
            _b64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


def read_unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified: used only to choose the issuer whose keys and rules then verify it."""
    try:
        claims = json.loads(_b64url_decode(token.split(".")[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError, IndexError) as exc:
        raise Unauthenticated("jwt_payload_malformed", "payload is not base64url JSON") from exc
    if not isinstance(claims, dict):
        raise Unauthenticated("jwt_payload_malformed", "payload is not a JSON object")
    return claims


@dataclass(frozen=True, slots=True)
class IssuerRules:
    """What one configured issuer's tokens must satisfy."""

    config: IssuerConfig
    audiences: frozenset[str]  # canonical forms: the public URL and the configured aliases
    index: int

    @classmethod
    def build(cls, config: IssuerConfig, public_url: str, index: int) -> IssuerRules:
        return cls(config, frozenset(canonical_url(a) for a in (public_url, *config.audiences)), index)


def check_header(header: Mapping[str, Any], rules: IssuerRules) -> str:
    """T2 and T6 on the JOSE header. Returns the algorithm."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.config.algorithms:
        raise Unauthenticated("jwt_alg_not_allowed", f"alg {str(alg)[:20]!r} not in the issuer's allow-list")
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extension, so any critical one makes the token unusable.
        raise Unauthenticated("jwt_crit_unsupported", "crit header present")
    if rules.config.token_type == "at+jwt":
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise Unauthenticated(
                "jwt_wrong_type",
                f"typ {str(typ)[:30]!r} is not at+jwt (RFC 9068); if this identity provider does not issue "
                f"RFC 9068 access tokens, set auth.issuers[{rules.index}].token_type: any",
            )
    return alg


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthenticated("jwt_claim_malformed", f"{name} is not a number")
    return float(value)


def check_claims(claims: Mapping[str, Any], rules: IssuerRules, now: float) -> None:
    """T3-T5 on verified claims."""
    if claims.get("iss") != rules.config.issuer:
        raise Unauthenticated("jwt_wrong_issuer", "iss does not match")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not audiences:
        raise Unauthenticated("jwt_no_audience", "token has no aud (RFC 8707: it must name this resource)")
    if not any(isinstance(a, str) and canonical_url(a) in rules.audiences for a in audiences):
        raise Unauthenticated("jwt_wrong_audience", "aud does not name this resource")
    leeway = rules.config.leeway
    exp = _number(claims, "exp")
    if exp is None:
        raise Unauthenticated("jwt_no_expiry", "token has no exp")
    if now >= exp + leeway:
        raise Unauthenticated("jwt_expired", f"expired {now - exp:.0f}s ago")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise Unauthenticated("jwt_not_yet_valid", f"nbf is {nbf - now:.0f}s in the future")
    iat = _number(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise Unauthenticated("jwt_issued_in_future", f"iat is {iat - now:.0f}s in the future")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Unauthenticated("jwt_no_subject", "token has no sub (RFC 9068 §2.2)")


def verify_jwt(token: str, key: VerificationKey, rules: IssuerRules, now: float) -> Principal:
    """Signature with ``key`` (and its one algorithm), then every claim rule. Returns the caller."""
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            options={
                "verify_signature": True,
                # Time, audience and issuer are checked below with our clock, canonical forms and reasons.
                "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise Unauthenticated("jwt_bad_signature", "signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("jwt_invalid", f"{type(exc).__name__}: {exc}") from exc
    check_claims(claims, rules, now)
    return principal_from_claims(claims, token_type="jwt")
