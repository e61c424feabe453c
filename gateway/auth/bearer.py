"""T1: the one place a credential is taken from: a single ``Authorization: Bearer <token>`` header.

RFC 6750 §2 also allows form bodies and query strings; MCP forbids the query and the gateway accepts
neither, so a token there is a malformed request (400 ``invalid_request``), never a credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from multidict import MultiMapping

from gateway.errors import BadRequest, Unauthenticated

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_BYTES = 8 * 1024

QUERY_TOKEN_PARAMETERS = ("access_token",)
KNOWN_SCHEMES = frozenset({"basic", "digest", "dpop", "negotiate", "ntlm", "hoba", "mutual", "aws4-hmac-sha256"})


def extract_bearer(headers: MultiMapping[str], query: Mapping[str, str], content_type: str = "") -> str:
    """Returns the token, or raises ``BadRequest`` (malformed) or ``Unauthenticated`` (none sent)."""
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
    if scheme.lower() != "bearer":
        # Another scheme (Basic, DPoP, ...) is not a credential here: answer as if none was sent, so the
        # client starts discovery from the challenge. Only a known scheme name is logged: a header without
        # a space is all credential (an API key pasted without "Bearer").
        named = scheme.lower() if scheme.lower() in KNOWN_SCHEMES else "other"
        raise Unauthenticated("unsupported_scheme", f"Authorization scheme {named}", token_sent=False)
    token = token.strip()
    if not token:
        raise BadRequest("empty_bearer", "Bearer with no token")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("token_too_large", f"{len(token)} bytes > {MAX_TOKEN_BYTES}")
    if not _B64TOKEN.fullmatch(token):
        raise Unauthenticated("token_malformed", "token has characters outside RFC 6750 b64token")
    return token
