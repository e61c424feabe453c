"""The MCP endpoint: one request through the stages, in the order that is part of the security design.

    edge ─► credentials ─► token ─► message ─► scopes ─► policy ─► session ─► upstream ─► response

Each stage either hands a richer request on or raises a ``GatewayError``; ``refuse`` turns that into a
definite answer. Nothing reaches the upstream before every earlier stage has passed. Validity is checked
before scopes (T10: an expired token that also lacks scopes gets 401), identity before policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.auth.authenticator import Authenticator
from gateway.auth.bearer import extract_bearer
from gateway.auth.principal import Principal
from gateway.auth.scopes import ScopeRequirements
from gateway.config import Config
from gateway.edge.challenge import Challenges
from gateway.edge.origin import OriginPolicy
from gateway.edge.responses import error_response
from gateway.errors import GatewayError, MethodNotAllowed, PayloadTooLarge
from gateway.mcp.jsonrpc import Batch, check_routing_headers, parse_body
from gateway.mcp.sessions import SessionBindings
from gateway.upstream.proxy import UpstreamProxy, upstream_request_headers

log = logging.getLogger(__name__)

MCP_METHODS = ("POST", "GET", "DELETE")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes before reading them (Z5: 413)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("body_too_large", f"Content-Length {request.content_length} > {limit}")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _RequestState:
    """What one request has learned so far; only for answering it."""

    origin: str | None = None
    credential_stage: bool = True
    principal: Principal | None = None
    batch: Batch | None = None


def log_refusal(request: web.Request, error: GatewayError, principal: Principal | None = None) -> None:
    fields: dict[str, Any] = {"status": error.status, "reason": error.reason, "detail": error.detail,
                              "method": request.method, "path": request.path}
    if principal is not None:
        fields.update(issuer=principal.issuer, subject=principal.subject)
    log.log(
        logging.ERROR if error.status >= 500 else logging.INFO,
        "refused %s %s with %d: %s: %s", request.method, request.path, error.status, error.reason, error.detail,
        extra={"fields": fields},
    )


class McpEndpoint:
    def __init__(
        self,
        config: Config,
        *,
        proxy: UpstreamProxy,
        authenticator: Authenticator,
        scopes: ScopeRequirements,
        sessions: SessionBindings,
        challenges: Challenges,
        origins: OriginPolicy,
    ):
        self.config = config
        self.proxy = proxy
        self.authenticator = authenticator
        self.scopes = scopes
        self.sessions = sessions
        self.challenges = challenges
        self.origins = origins
        self._identity_headers = tuple(config.upstream.identity_headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = _RequestState()
        try:
            state.origin = self.origins.check(request.headers.get("Origin"))  # E1
            if request.method == "OPTIONS":
                return self._preflight(state.origin)
            if request.method not in MCP_METHODS:
                raise MethodNotAllowed("method_not_allowed", request.method, allowed=MCP_METHODS)
            token = extract_bearer(request.headers, request.query, request.headers.get("Content-Type", ""))  # T1
            state.principal = await self.authenticator.authenticate(token)  # T2-T9
            state.credential_stage = False
            body = None
            if request.method == "POST":  # Z5, Z6
                body = await read_body(request, self.config.server.max_body_bytes)
                state.batch = parse_body(body, request.headers.get("Content-Type", ""))
                check_routing_headers(state.batch, request.headers.get("Mcp-Method"), request.headers.get("Mcp-Name"))
            self.scopes.check(state.principal, state.batch.messages if state.batch else ())  # T10
            self.sessions.check(request.headers.get("Mcp-Session-Id"), state.principal)  # U5
            return await self._forward(request, body, state)  # U1-U4
        except GatewayError as error:
            return self.refuse(request, error, state)

    def refuse(self, request: web.Request, error: GatewayError, state: _RequestState) -> web.Response:
        log_refusal(request, error, state.principal)
        response = error_response(
            error,
            rpc_id=state.batch.first_id if state.batch else None,
            www_authenticate=self.challenges.for_error(error, credential_stage=state.credential_stage),
        )
        if state.origin is not None:
            response.headers.update(OriginPolicy.response_headers(state.origin))
        return response

    def _preflight(self, origin: str | None) -> web.Response:
        headers = OriginPolicy.preflight_headers(origin) if origin else {"Allow": ", ".join(MCP_METHODS)}
        return web.Response(status=204, headers=headers)

    async def _forward(self, request: web.Request, body: bytes | None, state: _RequestState) -> web.StreamResponse:
        principal = state.principal
        session_id = request.headers.get("Mcp-Session-Id")

        def on_response(status: int, headers: CIMultiDictProxy[str]) -> None:
            if not 200 <= status < 300 or principal is None:
                return
            issued = headers.get("Mcp-Session-Id")
            if issued and issued != session_id:
                self.sessions.bind(issued, principal)
            if request.method == "DELETE" and session_id:
                self.sessions.forget(session_id)

        headers = upstream_request_headers(
            request.headers,
            remote=request.remote,
            public_url=self.config.server.public_url,
            upstream_host=self.proxy.host,
            strip=self._identity_headers,
        )
        return await self.proxy.forward(
            request,
            body=body,
            headers=headers,
            extra_headers=OriginPolicy.response_headers(state.origin) if state.origin else None,
            on_response=on_response,
        )
