"""The one place where a ``GatewayError`` becomes an HTTP response (Envoy's ``onComplete``).

Clients get the status, a JSON-RPC error body with a short generic message, and the headers the status
calls for (``WWW-Authenticate``, ``Allow``, ``Retry-After``). The precise reason goes to the log only.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import GatewayError, MethodNotAllowed, TooManyRequests, VerifierUnavailable


def jsonrpc_error_body(code: int, message: str, rpc_id: Any = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}).encode()


def error_response(
    error: GatewayError, *, rpc_id: Any = None, www_authenticate: str | None = None
) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if www_authenticate:
        headers["WWW-Authenticate"] = www_authenticate
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, (VerifierUnavailable, TooManyRequests)):
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(
        status=error.status,
        body=jsonrpc_error_body(error.jsonrpc_code, error.message, rpc_id),
        content_type="application/json",
        headers=headers,
    )
