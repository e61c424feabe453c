"""T1, S1: the one place a credential is taken from: a single ``Authorization`` header with the
``Bearer`` scheme (RFC 6750) or the ``DPoP`` scheme (RFC 9449 §7.1, the same token68 syntax).

RFC 6750 §2 also allows form bodies and query strings; MCP forbids the query and the gateway accepts
neither, so a token there is a malformed request (400 ``invalid_request``), never a credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from multidict import MultiMapping

from gateway.errors import BadRequest, Unauthenticated

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_BYTES = 8 * 1024

QUERY_TOKEN_PARAMETERS = ("access_token",)
KNOWN_SCHEMES = frozenset({"basic", "digest", "dpop", "negotiate", "ntlm", "hoba", "mutual", "aws4-hmac-sha256"})


Scheme = Literal["bearer", "dpop"]


@dataclass(frozen=True, slots=True)
class Credentials:
    scheme: Scheme
    token: str = field(repr=False)


def extract_bearer(headers: MultiMapping[str], query: Mapping[str, str], content_type: str = "") -> str:
    """The token of ``Authorization: Bearer <token>``; any other scheme counts as no credentials."""
    return extract_credentials(headers, query, content_type, schemes=("bearer",)).token


def extract_credentials(headers: MultiMapping[str], query: Mapping[str, str], content_type: str = "",
                        *, schemes: tuple[Scheme, ...] = ("bearer", "dpop")) -> Credentials:
    """Returns the scheme and token, or raises ``BadRequest`` (malformed) or ``Unauthenticated`` (none sent)."""
    if any(name in query for name in QUERY_TOKEN_PARAMETERS):
        raise BadRequest("token_in_query", "access_token in the query string", message="Tokens are accepted only in the Authorization header")
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        raise BadRequest("form_body", "form-encoded body (RFC 6750 §2.2 form tokens are not accepted)", message="Tokens are accepted only in the Authorization header")
    values = headers.getall("Authorization", [])
    if len(values) > 1:
        raise BadRequest("multiple_authorization_headers", f"{len(values)} Authorization headers")
    if not values:
        raise Unauthenticated("no_token", "no Authorization header", token_sent=False)
    scheme, _, token = values[0].strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in schemes:
        # Another scheme (Basic, DPoP, ...) is not a credential here: answer as if none was sent, so the
        # client starts discovery from the challenge. Only a known scheme name is logged: a header without
        # a space is all credential (an API key pasted without "Bearer").
        named = scheme if scheme in KNOWN_SCHEMES else "other"
        raise Unauthenticated("unsupported_scheme", f"Authorization scheme {named}", token_sent=False)
    token = token.strip()
    if not token:
        raise BadRequest(f"empty_{scheme}", f"{scheme} scheme with no token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("token_too_large", f"{len(token)} bytes > {MAX_TOKEN_BYTES}")
    if not _B64TOKEN.fullmatch(token):
        raise Unauthenticated("token_malformed", "token has characters outside RFC 6750 b64token")
    return Credentials(scheme, token)  # type: ignore[arg-type]
