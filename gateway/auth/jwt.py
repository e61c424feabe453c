"""JWT access tokens: shape test, header rules and verification (T2-T7). Pure: no I/O, the clock is a value.

The checks run in the order of RFC 8725's advice: decide what the token is from its shape (T2), pick the
issuer's rules by its exact ``iss`` (T3), refuse any header that would make us trust the token's own say
on keys (``jku``, ``x5u``, ``jwk``, ``x5c`` are never read), bind each key to one algorithm, check the
signature with PyJWT, then audience (T4), time (T5) and type (T6) ourselves, so every refusal has a
precise reason for the log while the client only sees "Invalid token" (T7).

I6, one reading of every token: *whether* a token is a JWT is decided leniently (``looks_like_jwt``: any
reading a lenient base64 or JSON decoder could give it), and a JWT is then held to the strict rules of
the compact serialization (``read_jose_header``): it is verified or refused, never introspected, so a
lenient authorization server never gets to accept what T2-T7 refuse. Values that are compared (``iss``,
``aud``) are refused, never normalised, when they carry whitespace, control characters or odd ports, and
time claims must be finite numbers within ±2^53.

Warning: ``jwt.decode`` is only ever called with ``algorithms=[key.alg]`` where ``key.alg`` comes from
our JWKS handling, never from the token. That single line is what stops algorithm confusion attacks.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.api_jwk import PyJWK

from gateway.auth.principal import Principal, principal_from_claims
from gateway.config import IssuerConfig
from gateway.errors import Unauthenticated
from gateway.mcp.jsonrpc import MAX_DEPTH as MAX_CLAIM_DEPTH
from gateway.mcp.jsonrpc import nested_deeper_than

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


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def clean_identifier(value: str) -> bool:
    """I6: no whitespace, control or format character anywhere (Unicode categories C* and Z*).

    Readers disagree about such characters (one strips a leading space or deletes a tab, another keeps
    it), so a value carrying one has no single reading and never matches.
    """
    if _VISIBLE_ASCII.fullmatch(value):
        return True
    return not any(unicodedata.category(char)[0] in "CZ" for char in value)


def canonical_url(value: str) -> str | None:
    """T4: scheme and host lower-case, default port dropped, empty path as ``/``, no fragment.

    Values that are not http(s) URLs (``api://x``, plain names) are compared as they are. ``None`` means
    "never matches" (I6): whitespace, control or format characters anywhere, an empty port or one with
    leading zeros (``:0443``, ``https://h:/mcp``), a port out of range, user info, or a non-ASCII host.
    Warning: such values are refused, never normalised. ``urlsplit`` alone strips leading C0 controls and
    spaces and deletes tabs and newlines anywhere (WHATWG URL parsing), which made ``https://mcp.exa``,
    a tab, ``mple.com/mcp`` this resource; a reader that keeps the tab sees another URL.
    """
    if not value or not clean_identifier(value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    scheme = parts.scheme  # urlsplit lower-cases it
    if scheme not in ("http", "https") or not parts.netloc:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        return None  # https://user@host/mcp is not this resource, whatever follows the @
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port_text = (netloc[: end + 1], netloc[end + 1:]) if end > 0 else ("", "")
    else:
        host, colon, digits = netloc.partition(":")
        port_text = colon + digits
    if not host or not host.isascii():
        # IDNs are compared in their ASCII form only: str.lower() maps the Kelvin sign (U+212A) to "k".
        return None
    port = None
    if port_text:
        # RFC 3986 §3.2.3 allows "h:" and ":0443"; readers disagree on both, so neither names this resource.
        if not port_text.startswith(":") or not _PORT.fullmatch(port_text[1:]) or int(port_text[1:]) > 65535:
            return None
        port = int(port_text[1:])
    host = host.lower()
    default = port is None or (scheme, port) in (("http", 80), ("https", 443))
    return urlunsplit((scheme, host if default else f"{host}:{port}", parts.path or "/", parts.query, ""))


# -- I6: JWT or not (lenient), and the rules for a JWT (strict) --------------------------------------------

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_OUTSIDE_BOTH_ALPHABETS = re.compile(r"[^A-Za-z0-9+/_-]")
_OUTSIDE_STANDARD_ALPHABET = re.compile(r"[^A-Za-z0-9+/]")
_URL_TO_STANDARD = str.maketrans("-_", "+/")
_LENIENT_JSON = json.JSONDecoder(strict=False)  # control characters inside strings allowed


def looks_like_jwt(token: str) -> bool:
    """I6's shape test, lenient on purpose: three dot-separated parts whose first part *some* decoder
    reads as a JSON object. Such a token is a JWT: verified or refused, never introspected (T9).

    Being lenient here is what makes the strict rules stick: a token that any reader could take for a JWT
    never reaches an authorization server that might read it leniently and call it active.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[0]:
        return False
    return any(_reads_as_json_object(data) for data in _lenient_base64_readings(parts[0]))


def _lenient_base64_readings(part: str) -> Iterator[bytes]:
    """The bytes lenient base64 decoders make of ``part``:

    - both alphabets at once, any other character skipped (Node's ``Buffer.from(s, "base64")``);
    - the standard alphabet only, everything else skipped, ``-`` and ``_`` included (Python's
      ``b64decode`` without ``validate``, Java's MIME decoder);
    - each of those ending at the first ``=`` or at the first character outside both alphabets.

    A dangling 4n+1th character is dropped (Node does) and missing padding is supplied.
    """
    seen: set[str] = set()
    for prefix in (part, part.split("=", 1)[0], _OUTSIDE_BOTH_ALPHABETS.split(part, 1)[0]):
        for outside in (_OUTSIDE_BOTH_ALPHABETS, _OUTSIDE_STANDARD_ALPHABET):
            chars = outside.sub("", prefix).translate(_URL_TO_STANDARD)
            if len(chars) % 4 == 1:
                chars = chars[:-1]
            if chars in seen:
                continue
            seen.add(chars)
            yield base64.b64decode(chars + "=" * (-len(chars) % 4))


def _reads_as_json_object(data: bytes) -> bool:
    """Whether a lenient JSON reader finds an object at the start of ``data``: any UTF (``json.loads`` on
    bytes reads UTF-16 and UTF-32 too), bad bytes replaced, a BOM and whitespace skipped, control
    characters in strings, duplicate keys, and trailing bytes ignored (Jackson's default)."""
    texts = {data.decode("utf-8", "replace")}
    encoding = json.detect_encoding(data)
    if encoding not in ("utf-8", "utf-8-sig"):
        texts.add(data.decode(encoding, "replace"))
    for text in texts:
        text = text.lstrip().lstrip("\ufeff").lstrip()
        if not text.startswith("{"):
            continue
        try:
            value, _ = _LENIENT_JSON.raw_decode(text)
        except RecursionError:
            return True  # deeper than we read; a reader with a deeper stack reads an object
        except ValueError:
            continue
        if isinstance(value, dict):
            return True
    return False


def _strict_base64url(part: str) -> bytes | None:
    """RFC 7515 §2: base64url without padding, nothing but ``[A-Za-z0-9_-]``, in canonical form (zero
    trailing bits), which is also what PyJWT insists on, minus the ``=`` padding it tolerates."""
    if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == part else None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key[:40]!r}")
        result[key] = value
    return result


def _strict_json_object(data: bytes) -> tuple[dict[str, Any] | None, str]:
    """RFC 7515 §4 and RFC 7519 §4: a UTF-8 JSON object (no BOM) with unique member names.

    PyJWT's ``json.loads`` on bytes would also read UTF-16, a BOM, and let the last duplicate win while
    another reader takes the first; none of that gets this far.
    """
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members)
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        return None, f"{type(exc).__name__}: {str(exc)[:80]}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, ""


def _compact_problem(parts: list[str]) -> tuple[dict[str, Any] | None, str]:
    """The header of a JWS in strict compact serialization, or why the token is not one."""
    decoded = []
    for name, part in zip(("header", "payload", "signature"), parts):
        if not part and name != "signature":  # an empty signature is an unsecured JWS: refused by alg
            return None, f"empty {name}"
        data = _strict_base64url(part)
        if data is None:
            return None, f"{name} is not unpadded base64url"
        decoded.append(data)
    header, problem = _strict_json_object(decoded[0])
    return header, f"header {problem}" if problem else ""


def read_jose_header(token: str) -> dict[str, Any] | None:
    """T2/I6: the JOSE header of a JWT, or ``None`` for a token that is not a JWT (only such a token may
    be introspected, T9).

    Raises ``Unauthenticated("jwt_malformed")`` for a token that ``looks_like_jwt`` but breaks a strict
    rule: padding, ``~``, ``+``, ``/`` or other characters outside base64url, a header that is not a
    strict UTF-8 JSON object. Nothing lenient reaches PyJWT (which accepts ``=`` padding) or introspection.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header, problem = _compact_problem(parts)
    if header is not None:
        return header
    if not looks_like_jwt(token):
        return None
    raise Unauthenticated("jwt_malformed", problem)


def read_unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified: used only to choose the issuer whose keys and rules then verify it."""
    parts = token.split(".")
    data = _strict_base64url(parts[1]) if len(parts) == 3 else None
    if data is None:
        raise Unauthenticated("jwt_payload_malformed", "payload is not base64url")
    claims, problem = _strict_json_object(data)
    if claims is None:
        raise Unauthenticated("jwt_payload_malformed", f"payload {problem}")
    if nested_deeper_than(claims, MAX_CLAIM_DEPTH):
        # Claims become Cedar values by a recursive conversion; 600 levels fit in an 8 KiB token (R5).
        raise Unauthenticated("jwt_payload_malformed", f"claims nested deeper than {MAX_CLAIM_DEPTH} levels")
    return claims


@dataclass(frozen=True, slots=True)
class IssuerRules:
    """What one configured issuer's tokens must satisfy."""

    config: IssuerConfig
    audiences: frozenset[str]  # canonical forms: the public URL and the configured aliases
    index: int
    # I7: with several issuers, principal ids are "<namespace>/<sub>" (the issuer's configured name).
    namespace: str | None = None

    @classmethod
    def build(cls, config: IssuerConfig, public_url: str, index: int, *, namespace: str | None = None) -> IssuerRules:
        audiences = set()
        for where, value in (("server.public_url", public_url), *((f"auth.issuers[{index}].audiences", a) for a in config.audiences)):
            canonical = canonical_url(value)
            if canonical is None:
                log.warning("%s: %r can never match an aud (whitespace, control characters, an odd port or user info)", where, value[:100])
            else:
                audiences.add(canonical)
        return cls(config, frozenset(audiences), index, namespace)

    def names_resource(self, aud: Any) -> bool:
        """T4: ``aud`` (a string or an array) contains the public URL or an alias, in canonical form."""
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        return any(isinstance(a, str) and canonical_url(a) in self.audiences for a in values)

    def issued(self, iss: Any) -> bool:
        """T3: ``iss`` is exactly this issuer; I6: and carries nothing that readers could strip."""
        return isinstance(iss, str) and iss == self.config.issuer and clean_identifier(iss)


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


# I6: the integers an IEEE 754 double holds exactly; every JSON reader agrees on numbers within ±2^53.
MAX_TIME = 2**53


def time_claim(claims: Mapping[str, Any], name: str, *, reason: str = "jwt_claim_malformed") -> float | None:
    """T5/I6: ``exp``, ``nbf`` or ``iat`` in seconds; ``None`` when absent.

    Python's ``json`` (PyJWT's, and ours for introspection answers) reads ``NaN``, ``Infinity`` and turns
    ``1e400`` into infinity. Every comparison with NaN is false, so ``now >= exp`` would never expire such
    a token. Anything but a finite number within ±2^53 is refused.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthenticated(reason, f"{name} is not a number")
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_TIME:
        raise Unauthenticated(reason, f"{name} is not a finite number within ±2^53")
    return float(value)


def check_claims(claims: Mapping[str, Any], rules: IssuerRules, now: float) -> None:
    """T3-T5 on verified claims."""
    if not rules.issued(claims.get("iss")):
        raise Unauthenticated("jwt_wrong_issuer", "iss does not match")
    aud = claims.get("aud")
    if not aud or not isinstance(aud, (str, list)):
        raise Unauthenticated("jwt_no_audience", "token has no aud (RFC 8707: it must name this resource)")
    if not rules.names_resource(aud):
        raise Unauthenticated("jwt_wrong_audience", "aud does not name this resource")
    leeway = rules.config.leeway
    exp = time_claim(claims, "exp")
    if exp is None:
        raise Unauthenticated("jwt_no_expiry", "token has no exp")
    if now >= exp + leeway:
        raise Unauthenticated("jwt_expired", f"expired {now - exp:.0f}s ago")
    nbf = time_claim(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise Unauthenticated("jwt_not_yet_valid", f"nbf is {nbf - now:.0f}s in the future")
    iat = time_claim(claims, "iat")
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
    return principal_from_claims(claims, token_type="jwt", namespace=rules.namespace)
