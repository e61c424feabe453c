"""The MCP endpoint: one request through the stages, in the order that is part of the security design.

    edge ─► credentials ─► token ─► limits ─► message ─► scopes ─► policy ─► step-up ─► session ─►
        upstream ─► response

Each stage either hands a richer request on or raises a ``GatewayError``; ``refuse`` turns that into a
definite answer. Nothing reaches the upstream before every earlier stage has passed. Validity is checked
before scopes (T10: an expired token that also lacks scopes gets 401), identity before policy. The limits
stage comes as soon as the caller is known, so a principal over its share costs no body read and no
policy decision; its slot is held until the answer, a streamed one included, is over (R3). Step-up
(A6, RFC 9470) follows the policy: a call the policy denies is a 403 however the user signed in, so
nobody is sent to authenticate again for a call they may not make. The session
stage checks every server-minted handle the request names, session id and task ids (M4), against the
caller. The upstream and response stages are ``gateway.forwarding``: what the upstream gets (U1-U3, I5,
O2, P4, M4) and what the answer may carry (Z4 list filtering, M3 resource updates, M4 sealed task ids,
A1/A2 tool learning, A5 candidate audits).
"""

from __future__ import annotations

import asyncio
import logging
from secrets import token_hex
from typing import Any

from aiohttp import web

from gateway.auth.authenticator import Authenticator, token_hash
from gateway.auth.bearer import extract_credentials
from gateway.auth.principal import Principal
from gateway.auth.scopes import ScopeRequirements
from gateway.auth.step_up import StepUpRules
from gateway.auth.sender import RequestFacts
from gateway.authz.cedar import DECISION_PIECE, Authorizer
from gateway.config import Config
from gateway.edge.challenge import Challenges
from gateway.edge.origin import OriginPolicy
from gateway.edge.responses import error_response
from gateway.errors import (
    Forbidden, GatewayError, InsufficientUserAuthentication, MethodNotAllowed, PayloadTooLarge, RequestTimeout)
from gateway.exchange import Observers, RequestState, TracedRequestState, audit_decision
from gateway.forwarding import Forwarder
from gateway.limits import PrincipalLimiter
from gateway.mcp.jsonrpc import Batch, check_routing_headers, parse_body
from gateway.mcp.sessions import SessionBindings
from gateway.mcp.tasks import TaskBindings, TaskNotFound
from gateway.upstream.headers import check_client_headers

log = logging.getLogger(__name__)

# Set by the access middleware in gateway.app (declared here so the endpoint does not import the app).
REQUEST_ID = web.RequestKey("request_id", str)

MCP_METHODS = ("POST", "GET", "DELETE")


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes before reading them (Z5: 413) and a body
    that takes longer than ``timeout`` to arrive (R1: 408, so a slow client cannot hold a connection)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("body_too_large", f"Content-Length {request.content_length} > {limit}")
    content = request.content
    if content.is_eof():
        # P1: the whole body came with the headers (a small call, the usual case): aiohttp holds all of it
        # already (its reading pauses at 128 KiB unread), so nothing is waited for and no timer is needed.
        body = content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge("body_too_large", f"body exceeds {limit} bytes")
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge("body_too_large", f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout("body_timeout", f"{size} bytes of the body in {timeout:g}s") from exc
    return b"".join(chunks)


def log_refusal(request: web.Request, error: GatewayError, principal: Principal | None = None) -> None:
    # No subject or other claim value here (house rule); the audit event carries who it was.
    fields: dict[str, Any] = {"status": error.status, "reason": error.reason, "detail": error.detail,
                              "method": request.method, "path": request.path, "request_id": request.get(REQUEST_ID)}
    if principal is not None:
        fields["issuer"] = principal.issuer
    log.log(
        logging.ERROR if error.status >= 500 else logging.INFO,
        "refused %s %s with %d: %s: %s", request.method, request.path, error.status, error.reason, error.detail,
        extra={"fields": fields},
    )


class McpEndpoint:
    """The admission pipeline of the MCP endpoint; ``forwarder`` is its last stage (gateway.forwarding)."""

    def __init__(
        self,
        config: Config,
        *,
        origins: OriginPolicy,  # edge
        challenges: Challenges,
        authenticator: Authenticator,  # credentials, token
        limiter: PrincipalLimiter,  # limits
        scopes: ScopeRequirements,  # scopes
        authorizer: Authorizer,  # message (I2, M2), policy
        sessions: SessionBindings,  # session
        tasks: TaskBindings,
        forwarder: Forwarder,  # upstream, response
        observers: Observers,
    ):
        self.config = config
        self.origins = origins
        self.challenges = challenges
        self.authenticator = authenticator
        self.limiter = limiter
        self.scopes = scopes
        self.authorizer = authorizer
        self.step_up = StepUpRules(config.auth.step_up, leeways={i.issuer: i.leeway for i in config.auth.issuers})  # A6
        self.sessions = sessions
        self.tasks = tasks
        self.forwarder = forwarder
        self.audit = observers.audit
        self.metrics = observers.metrics
        self.tracing = observers.tracing

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID) or token_hex(16)
        if self.tracing is None:  # O2 off: no span, no trace object, one test
            return await self._handle(request, RequestState(request_id=request_id))
        trace = self.tracing.begin(request.method, request.path, request.headers, request_id)
        state = TracedRequestState(request_id=request_id, trace=trace)
        trace.enter(state.stage)
        status = 499  # the client went away (cancelled) unless an answer says otherwise
        try:
            response = await self._handle(request, state)
            status = response.status
            return response
        except Exception:
            status = 500
            raise
        finally:
            trace.finish(status)

    async def _handle(self, request: web.Request, state: RequestState) -> web.StreamResponse:
        try:
            check_client_headers(request.headers)  # I4
            state.origin = self.origins.check(request.headers.get("Origin"))  # E1
            if request.method == "OPTIONS":
                return self._preflight(state.origin, request.headers.get("Access-Control-Request-Headers"))
            if request.method not in MCP_METHODS:
                raise MethodNotAllowed("method_not_allowed", request.method, allowed=MCP_METHODS)
            state.stage = "credentials"
            credentials = extract_credentials(request.headers, request.query, request.headers.get("Content-Type", ""))  # T1
            state.token, state.scheme = credentials.token, credentials.scheme
            state.stage = "token"
            state.token_hash = token_hash(state.token)
            state.principal = await self.authenticator.authenticate_request(  # T2-T9, S1-S3
                credentials, state.token_hash, RequestFacts.of(request.method, request.headers, request.remote))
            state.credential_stage = False
            state.stage = "limits"
            state.slot = self.limiter.acquire(state.principal)  # R3
            body = None
            if request.method == "POST":  # Z5, Z6
                state.stage = "message"
                body = await read_body(request, self.config.server.max_body_bytes, self.config.server.body_timeout)
                state.batch = parse_body(body, request.headers.get("Content-Type", ""), max_batch=self.config.server.max_batch)
                check_routing_headers(state.batch, request.headers.get("Mcp-Method"), request.headers.get("Mcp-Name"))
                if state.trace is not None:
                    state.trace.message_parsed(state.batch.messages)  # O2: SEP-414 parent, method attributes
                for message in state.batch.messages:  # I2, M2: what the tool's learned inputSchema says
                    if message.method == "tools/call" and message.name is not None:
                        self.authorizer.catalogue.check_call(message.name, message.params.get("arguments") or {}, request.headers)
            state.stage = "scopes"
            self.scopes.check(state.principal, state.batch.messages if state.batch else ())  # T10
            if state.batch is not None:
                state.stage = "policy"
                await self.authorize(state.principal, state.batch, state)  # Z1-Z3
                if self.step_up:
                    state.stage = "step_up"
                    self.check_step_up(state.principal, state.batch, state)  # A6
            state.stage = "session"
            client_session = request.headers.get("Mcp-Session-Id")  # one at most (I4)
            if client_session is not None:
                state.upstream_session = self.sessions.unwrap(client_session, state.principal)  # U5, P4
            if state.batch is not None:
                self._open_tasks(state)  # M4
            state.stage = "upstream"
            # I1: the upstream gets the gateway's serialization of what was decided, never the client's bytes.
            response = await self.forwarder.forward(request, state.batch.canonical if state.batch else None, state)  # U1-U4
        except GatewayError as error:
            return self.refuse(request, error, state)
        finally:
            if state.slot is not None:
                state.slot.release()  # R3: answered, refused, upstream failed, or the client gone (cancelled)
        self.metrics.request_counts("forwarded", response.status).inc()
        return response

    async def authorize(self, principal: Principal, batch: Batch, state: RequestState) -> None:
        """Z1, Z3, Z5: every evaluated message must be allowed; one denial refuses the whole batch. A large
        batch is decided in pieces that yield the event loop (R4, ``Authorizer.decide_all_async``)."""
        evaluated = [message for message in batch.messages if message.evaluated]
        decisions = (self.authorizer.decide_all(principal, evaluated) if len(evaluated) <= DECISION_PIECE
                     else await self.authorizer.decide_all_async(principal, evaluated))
        for message, decision in zip(evaluated, decisions, strict=True):
            self.metrics.decision_counts("allow" if decision.allowed else "deny", decision.reason).inc()
            audit_decision(self.audit, state, message, "allow" if decision.allowed else "deny", decision.reason,
                           policies=decision.policies, policy_version=decision.policy_version, errors=decision.errors or None,
                           **decision.audit_fields())  # A5: the candidate set's decision, when configured
            if not decision.allowed:
                if decision.errors:
                    log.warning("policy evaluation error, denied (fail closed): %s", "; ".join(decision.errors))
                state.rpc_id = message.id
                state.audited = True
                raise Forbidden(decision.reason, f"{message.method} on {message.name or 'the server'}")

    def check_step_up(self, principal: Principal, batch: Batch, state: RequestState) -> None:
        """A6: the policy allowed every message; does the user's authentication satisfy auth.step_up?"""
        try:
            self.step_up.check(principal, batch.messages, scopes=self.scopes.needed(batch.messages))
        except (InsufficientUserAuthentication, Forbidden) as error:
            # The audit event names the message that needs the step-up, not merely the batch's first.
            message = next((m for m in batch.messages if self.step_up.requirement([m]) is not None), None)
            needed = self.step_up.requirement(batch.messages)
            audit_decision(self.audit, state, message, "deny", error.reason, step_up=needed and {
                "rules": list(needed.rules), "acr_values": list(needed.acr_values or ()), "max_age": needed.max_age})
            state.rpc_id = message.id if message is not None else None
            state.audited = True
            raise

    def _open_tasks(self, state: RequestState) -> None:
        """M4: every task id the request names must be the caller's (else 404); the upstream gets its own."""
        try:
            state.batch, state.known_tasks = self.tasks.unwrap_requests(state.batch, state.principal)
        except TaskNotFound as error:
            state.rpc_id = error.rpc_id
            raise

    def refuse(self, request: web.Request, error: GatewayError, state: RequestState) -> web.Response:
        log_refusal(request, error, state.principal)
        self.metrics.request_counts("refused", error.status).inc()
        self.metrics.refusal_counts(state.stage, error.reason).inc()
        if state.stage == "upstream":
            self.metrics.upstream_error_counts(error.reason).inc()
        if not state.audited:
            first = state.batch.messages[0] if state.batch and state.batch.messages else None
            audit_decision(self.audit, state, first, "deny", error.reason)
        challenges = self.challenges.all_for_error(error, credential_stage=state.credential_stage, scheme=state.scheme)
        response = error_response(
            error,
            rpc_id=state.rpc_id if state.rpc_id is not None else (state.batch.first_id if state.batch else None),
            www_authenticate=challenges[0] if challenges else None,
        )
        for challenge in challenges[1:]:  # S1: the DPoP challenge, a field of its own beside Bearer's
            response.headers.add("WWW-Authenticate", challenge)
        if state.origin is not None:
            response.headers.update(OriginPolicy.response_headers(state.origin))
        return response

    def _preflight(self, origin: str | None, requested: str | None) -> web.Response:
        headers = (OriginPolicy.preflight_headers(origin, requested) if origin
                   else {"Allow": ", ".join(MCP_METHODS)})
        return web.Response(status=204, headers=headers)
