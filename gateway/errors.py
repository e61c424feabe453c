"""Every way a request can be refused, as one small exception tree.

    GatewayError                   (status, reason code, safe message, precise log detail)
     ├── BadRequest                400  invalid_request   malformed credentials or message (T1, Z5, Z6)
     ├── Unauthenticated           401  invalid_token     no token, or a token that is not valid (D1, T7)
     │    └── InvalidDpopProof     401  invalid_dpop_proof a DPoP proof missing or not valid (S1)
     │         └── UseDpopNonce    401  use_dpop_nonce    the proof needs a fresh server nonce (S1, RFC 9449 §9)
     ├── InsufficientScope         403  insufficient_scope a valid token without the scopes needed (T10)
     ├── InsufficientUserAuthentication 401 insufficient_user_authentication  step-up needed (A6, RFC 9470)
     ├── Forbidden                 403                    origin refused (E1) or policy denied (Z3)
     ├── NotFound                  404                    unknown path, or a session of someone else (U5)
     ├── MethodNotAllowed          405
     ├── RequestTimeout            408                    body not in within server.body_timeout (R1)
     ├── PayloadTooLarge           413                    body over server.max_body_bytes (Z5)
     ├── UnsupportedMediaType      415
     ├── TooManyRequests           429  (Retry-After)     a principal over its share (R3)
     ├── VerifierUnavailable       503  (Retry-After)     keys or introspection unreachable or busy (T8, T9, R6)
     └── UpstreamError             502                    upstream unreachable, broken or refusing us (U4)
          └── UpstreamTimeout      504                    no response headers within response_timeout

Each error carries a stable ``reason`` code (used in the log line, the audit event and the metric label),
a ``message`` that is safe to show any client, and a ``detail`` with the precise cause for the log only.
``gateway.edge.responses`` is the one place that turns an error into an HTTP response.
"""

from __future__ import annotations

from typing import ClassVar, Literal

OAuthErrorCode = Literal["invalid_request", "invalid_token", "insufficient_scope", "insufficient_user_authentication",
                         "invalid_dpop_proof", "use_dpop_nonce"]

# JSON-RPC 2.0 error codes used in bodies (https://www.jsonrpc.org/specification#error_object).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000 to -32099).
SERVER_ERROR = -32000
UNAUTHORIZED = -32001
FORBIDDEN = -32003


class GatewayError(Exception):
    """The root of every refusal. Subclasses fix the status; instances carry the specifics."""

    status: ClassVar[int] = 500
    oauth_error: ClassVar[OAuthErrorCode | None] = None
    jsonrpc_code: ClassVar[int] = INTERNAL_ERROR
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, reason: str, detail: str = "", *, message: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.message = message or self.default_message


class BadRequest(GatewayError):
    status = 400
    oauth_error = "invalid_request"
    jsonrpc_code = INVALID_REQUEST
    default_message = "Bad request"


class Unauthenticated(GatewayError):
    """401. ``oauth_error`` is None when no credentials were sent at all (D1: bare challenge)."""

    status = 401
    jsonrpc_code = UNAUTHORIZED
    default_message = "Authentication required"

    def __init__(self, reason: str, detail: str = "", *, message: str | None = None, token_sent: bool = True):
        super().__init__(reason, detail, message=message or ("Invalid token" if token_sent else None))
        self.token_sent = token_sent

    @property
    def oauth_error(self) -> OAuthErrorCode | None:  # type: ignore[override]
        return "invalid_token" if self.token_sent else None


class InvalidDpopProof(Unauthenticated):
    """401 for the DPoP scheme (RFC 9449 §7.1): the challenge that carries it is ``DPoP``, not ``Bearer``.
    ``oauth_error="invalid_token"`` for a proof that is fine but names another key than the token's."""

    def __init__(self, reason: str, detail: str = "", *, oauth_error: OAuthErrorCode = "invalid_dpop_proof"):
        super().__init__(reason, detail, message="Invalid DPoP proof")
        self._oauth_error = oauth_error

    @property
    def oauth_error(self) -> OAuthErrorCode | None:  # type: ignore[override]
        return self._oauth_error


class UseDpopNonce(InvalidDpopProof):
    """401 ``use_dpop_nonce``: answered with a fresh ``DPoP-Nonce`` header (RFC 9449 §9)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail, oauth_error="use_dpop_nonce")


class InsufficientScope(GatewayError):
    status = 403
    oauth_error = "insufficient_scope"
    jsonrpc_code = FORBIDDEN
    default_message = "Insufficient scope"

    def __init__(self, reason: str, detail: str = "", *, required_scopes: tuple[str, ...]):
        super().__init__(reason, detail)
        self.required_scopes = required_scopes


class InsufficientUserAuthentication(GatewayError):
    """401 (RFC 9470 §3): a valid token whose user authentication (``acr``, ``auth_time``) is not what this
    request needs. Not an ``Unauthenticated``: the token is valid, the client must step up, not start over."""

    status = 401
    oauth_error = "insufficient_user_authentication"
    jsonrpc_code = UNAUTHORIZED
    default_message = "Stronger or more recent authentication required"

    def __init__(self, reason: str, detail: str = "", *, acr_values: tuple[str, ...], max_age: int | None,
                 scopes: tuple[str, ...] = ()):
        super().__init__(reason, detail)
        self.acr_values = acr_values
        self.max_age = max_age
        self.scopes = scopes


class Forbidden(GatewayError):
    status = 403
    jsonrpc_code = FORBIDDEN
    default_message = "Forbidden"


class NotFound(GatewayError):
    status = 404
    jsonrpc_code = INVALID_REQUEST
    default_message = "Not found"


class MethodNotAllowed(GatewayError):
    status = 405
    jsonrpc_code = INVALID_REQUEST
    default_message = "Method not allowed"

    def __init__(self, reason: str, detail: str = "", *, allowed: tuple[str, ...]):
        super().__init__(reason, detail)
        self.allowed = allowed


class RequestTimeout(GatewayError):
    status = 408
    jsonrpc_code = INVALID_REQUEST
    default_message = "Request timed out"


class PayloadTooLarge(GatewayError):
    status = 413
    jsonrpc_code = INVALID_REQUEST
    default_message = "Request body too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    jsonrpc_code = INVALID_REQUEST
    default_message = "Unsupported media type"


class TooManyRequests(GatewayError):
    """429: this caller has more requests in flight, or more per second, than its share (R3)."""

    status = 429
    jsonrpc_code = SERVER_ERROR
    default_message = "Too many requests"

    def __init__(self, reason: str, detail: str = "", *, retry_after: int = 1):
        super().__init__(reason, detail)
        self.retry_after = max(1, retry_after)


class VerifierUnavailable(GatewayError):
    """503: the gateway cannot check the token right now. Not the client's fault, so not a 401."""

    status = 503
    jsonrpc_code = SERVER_ERROR
    default_message = "Authorization temporarily unavailable"
    retry_after = 5


class UpstreamError(GatewayError):
    status = 502
    jsonrpc_code = SERVER_ERROR
    default_message = "Upstream MCP server unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_message = "Upstream MCP server timed out"
