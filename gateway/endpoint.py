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
caller; the response stage filters lists (Z4), resource updates (M3) and seals new task ids (M4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from secrets import token_hex
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

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
from gateway.limits import PrincipalLimiter, Slot
from gateway.mcp.jsonrpc import Batch, Message, check_routing_headers, encode_header_value, parse_body
from gateway.mcp.listing import ListFilter
from gateway.mcp.lists import LIST_METHODS
from gateway.mcp.sessions import SessionBindings
from gateway.mcp.subscriptions import UpdateFilter, may_mention as may_be_an_update
from gateway.mcp.tasks import PURPOSE as TASK_PURPOSE, TaskBindings, TaskNotFound, may_mention as may_mention_a_task
from gateway.observe.audit import AuditLog
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import RequestTrace, Tracing, forwarded_meta_context, forwarded_trace_context
from gateway.upstream.credentials import UpstreamCredential
from gateway.upstream.identity import IdentityAssertion, IdentityHeaders
from gateway.upstream.headers import check_client_headers, never_forwarded, upstream_request_headers
from gateway.upstream.proxy import UpstreamProxy

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


@dataclass
class _RequestState:
    """What one request has learned so far; only for answering it."""

    request_id: str = ""  # the access middleware's (one id per request, made once)
    started: float = field(default_factory=time.perf_counter)
    origin: str | None = None
    credential_stage: bool = True
    principal: Principal | None = None
    batch: Batch | None = None
    stage: str = "edge"  # where a refusal happened, for the metric label
    rpc_id: Any = None  # the id a refusal's JSON-RPC error answers
    audited: bool = False
    token: str = field(default="", repr=False)  # the client's token: for a token exchange only, never upstream
    token_hash: bytes = field(default=b"", repr=False)  # T11: computed once, the key of every token cache
    scheme: str | None = None  # S1: "bearer" or "dpop", once the credentials are read
    slot: Slot | None = None  # R3: this request's place in its principal's share, released when it ends
    upstream_session: str | None = None  # P4: the upstream's own session id, unwrapped from the client's
    trace: RequestTrace | None = None  # O2: only with tracing on
    known_tasks: dict[str, str] = field(default_factory=dict)  # M4: upstream task id -> the client's handle


class _TracedRequestState(_RequestState):
    """O2, tracing on: every stage change also notes the stage's start for its span (gateway.observe.tracing)."""

    @property  # type: ignore[override]
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        self._stage = value
        if self.trace is not None:
            self.trace.enter(value)


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


def _may_name_a_task_or_update(raw: bytes) -> bool:
    """M3, M4: an answer without a list key is still rewritten when it may name a task or be a resource update."""
    return may_mention_a_task(raw) or may_be_an_update(raw)


def _asks_only_tools_list(batch: Batch | None) -> bool:
    """Whether every answer in this POST's response can only be the upstream's own tools/list answer: the
    tool catalogue (I2, M2, A1, A2) learns from those alone. A list-shaped result answering anything else
    (a tools/call whose result echoes the caller's input, a replayed GET stream) is filtered (Z4) but
    never learned from: a caller must not be able to give a tool annotations or change its definition."""
    if batch is None:
        return False
    methods = [m.method for m in batch.messages if m.method is not None]
    return "tools/list" in methods and all(m == "tools/list" or m.startswith("notifications/") for m in methods)


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
        authorizer: Authorizer,
        audit: AuditLog,
        credential: UpstreamCredential,
        identity: list[IdentityHeaders | IdentityAssertion],
        metrics: Metrics,
        limiter: PrincipalLimiter,
        tracing: Tracing | None = None,
    ):
        self.config = config
        self.proxy = proxy
        self.authenticator = authenticator
        self.scopes = scopes
        self.sessions = sessions
        self.tasks = TaskBindings(sessions.sibling(TASK_PURPOSE))  # M4: same key, another purpose
        self.challenges = challenges
        self.origins = origins
        self.authorizer = authorizer
        self.audit = audit
        self.credential = credential
        self.identity = identity
        self.metrics = metrics
        self.limiter = limiter
        self.step_up = StepUpRules(config.auth.step_up, leeways={i.issuer: i.leeway for i in config.auth.issuers})  # A6
        self.tracing = tracing
        # U1, I5: what the client sent is never forwarded when the gateway sets it itself (identity headers,
        # the request id) or the configuration says so (upstream.strip_headers).
        self._never_forwarded = never_forwarded((
            *config.upstream.identity_headers, *(i.header for i in identity if isinstance(i, IdentityAssertion)),
            *config.upstream.strip_headers, "X-Request-Id", config.upstream.auth.header))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID) or token_hex(16)
        if self.tracing is None:  # O2 off: no span, no trace object, one test
            return await self._handle(request, _RequestState(request_id=request_id))
        trace = self.tracing.begin(request.method, request.path, request.headers, request_id)
        state = _TracedRequestState(request_id=request_id, trace=trace)
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

    async def _handle(self, request: web.Request, state: _RequestState) -> web.StreamResponse:
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
            response = await self._forward(request, state.batch.canonical if state.batch else None, state)  # U1-U4
        except GatewayError as error:
            return self.refuse(request, error, state)
        finally:
            if state.slot is not None:
                state.slot.release()  # R3: answered, refused, upstream failed, or the client gone (cancelled)
        self.metrics.request_counts("forwarded", response.status).inc()
        return response

    async def authorize(self, principal: Principal, batch: Batch, state: _RequestState) -> None:
        """Z1, Z3, Z5: every evaluated message must be allowed; one denial refuses the whole batch. A large
        batch is decided in pieces that yield the event loop (R4, ``Authorizer.decide_all_async``)."""
        evaluated = [message for message in batch.messages if message.evaluated]
        decisions = (self.authorizer.decide_all(principal, evaluated) if len(evaluated) <= DECISION_PIECE
                     else await self.authorizer.decide_all_async(principal, evaluated))
        for message, decision in zip(evaluated, decisions, strict=True):
            self.metrics.decision_counts("allow" if decision.allowed else "deny", decision.reason).inc()
            self._audit(state, message, "allow" if decision.allowed else "deny", decision.reason,
                        policies=decision.policies, policy_version=decision.policy_version, errors=decision.errors or None,
                        **decision.audit_fields())  # A5: the candidate set's decision, when configured
            if not decision.allowed:
                if decision.errors:
                    log.warning("policy evaluation error, denied (fail closed): %s", "; ".join(decision.errors))
                state.rpc_id = message.id
                state.audited = True
                raise Forbidden(decision.reason, f"{message.method} on {message.name or 'the server'}")

    def check_step_up(self, principal: Principal, batch: Batch, state: _RequestState) -> None:
        """A6: the policy allowed every message; does the user's authentication satisfy auth.step_up?"""
        try:
            self.step_up.check(principal, batch.messages, scopes=self.scopes.needed(batch.messages))
        except (InsufficientUserAuthentication, Forbidden) as error:
            # The audit event names the message that needs the step-up, not merely the batch's first.
            message = next((m for m in batch.messages if self.step_up.requirement([m]) is not None), None)
            needed = self.step_up.requirement(batch.messages)
            self._audit(state, message, "deny", error.reason, step_up=needed and {
                "rules": list(needed.rules), "acr_values": list(needed.acr_values or ()), "max_age": needed.max_age})
            state.rpc_id = message.id if message is not None else None
            state.audited = True
            raise

    def _open_tasks(self, state: _RequestState) -> None:
        """M4: every task id the request names must be the caller's (else 404); the upstream gets its own."""
        try:
            state.batch, state.known_tasks = self.tasks.unwrap_requests(state.batch, state.principal)
        except TaskNotFound as error:
            state.rpc_id = error.rpc_id
            raise
    def _learn_tools(self, state: _RequestState, tools: list[Any]) -> None:
        """A1, A2: the catalogue learns a relayed tools/list answer; each definition change is audited."""
        for change in self.authorizer.catalogue.learn(tools):
            self.audit.record(request_id=state.request_id, event="tool_definition_changed" if change.changed else
                              "tool_definition_accepted_again", target=change.tool, changed_parts=list(change.parts),
                              digest=change.digest, accepted_digest=change.accepted,
                              tool_changes="deny" if self.authorizer.deny_changed_tools else "warn")

    def _audit_candidate_list(self, state: _RequestState, list_method: str, only_enforced: list[str],
                              only_candidate: list[str]) -> None:
        """A5: a list the candidate policies would have filtered otherwise (at most 50 names of each kind)."""
        self._audit(state, Message(kind="request", method=list_method), "allow", "candidate_disagrees",
                    event="candidate_list", candidate_would_hide=only_enforced[:50],
                    candidate_would_show=only_candidate[:50], candidate_differences=len(only_enforced) + len(only_candidate))

    def _audit(self, state: _RequestState, message: Message | None, outcome: str, reason: str, **extra: Any) -> None:
        principal = state.principal
        if state.trace is not None:  # O2: the same decision on the span, without who made the call
            state.trace.decided(message.method if message else None, message.name if message else None,
                                outcome, reason, extra.get("policies"))
        self.audit.record(
            request_id=state.request_id,
            issuer=principal.issuer if principal else None,
            subject=principal.subject if principal else None,
            client_id=principal.client_id if principal else None,
            method=message.method if message else None,
            target=message.name if message else None,
            outcome=outcome,
            reason=reason,
            latency_ms=round((time.perf_counter() - state.started) * 1000, 3),
            **extra,
        )

    def refuse(self, request: web.Request, error: GatewayError, state: _RequestState) -> web.Response:
        log_refusal(request, error, state.principal)
        self.metrics.request_counts("refused", error.status).inc()
        self.metrics.refusal_counts(state.stage, error.reason).inc()
        if state.stage == "upstream":
            self.metrics.upstream_error_counts(error.reason).inc()
        if not state.audited:
            first = state.batch.messages[0] if state.batch and state.batch.messages else None
            self._audit(state, first, "deny", error.reason)
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

    async def _forward(self, request: web.Request, body: bytes | None, state: _RequestState) -> web.StreamResponse:
        principal = state.principal
        client_session = request.headers.get("Mcp-Session-Id")
        # What the client's answer carries beyond the upstream's headers; filled in by on_response, which the
        # proxy calls before it applies these (so a wrapped session id replaces the upstream's).
        answer_headers: dict[str, str] = OriginPolicy.response_headers(state.origin) if state.origin else {}

        def on_response(status: int, headers: CIMultiDictProxy[str]) -> None:
            issued = headers.get("Mcp-Session-Id")
            if issued is not None and principal is not None:
                # P4: the client sees a wrapped id that names its principal; the upstream's id never leaves.
                answer_headers["Mcp-Session-Id"] = (
                    client_session if issued == state.upstream_session and client_session else self.sessions.wrap(issued, principal))
            if request.method == "DELETE" and client_session and 200 <= status < 300:
                self.sessions.forget(client_session)

        added = {"X-Request-Id": state.request_id}
        if state.upstream_session is not None:
            added["Mcp-Session-Id"] = state.upstream_session
        if state.known_tasks and "Mcp-Name" in request.headers:
            # M4: for tasks/* Mcp-Name is params.taskId (SEP-2663) and matched the body (Z6): the upstream's id too.
            handle = state.batch.messages[0].params.get("taskId")
            added.update({"Mcp-Name": encode_header_value(raw) for raw, mine in state.known_tasks.items() if mine == handle})
        if principal is not None:
            for source in self.identity:  # U3
                added.update(source.headers(principal))
        added.update(await self.credential.headers(state.token, state.token_hash))  # U2
        if state.trace is None:  # O2: the client's trace context, parsed and re-serialized, or none
            added.update(forwarded_trace_context(request.headers))
            if body is not None and state.batch is not None and state.batch.carries_trace_meta:
                body = state.batch.with_trace_meta(forwarded_meta_context)  # the same for SEP-414's _meta
        else:  # O2: the upstream continues the gateway's span, in the header and in _meta where the client used it
            context = state.trace.upstream_context()
            added.update(context)
            if body is not None and state.batch is not None and state.batch.carries_trace_meta:
                body = state.batch.with_trace_meta(context)
        headers = upstream_request_headers(
            request.headers,
            dropped=self._never_forwarded,
            remote=request.remote,
            public_url=self.config.server.public_url,
            upstream_host=self.proxy.host,
            add=added,
        )
        if body is not None:
            headers["Content-Type"] = "application/json"  # exactly what was parsed: no charset games (Z5)
        # Z4 on every answer, POST and GET: a resumed stream replays earlier list results too.
        lists_asked = state.batch is not None and any(m.method in LIST_METHODS for m in state.batch.messages)
        list_filter = None
        if principal is not None:
            list_filter = ListFilter(
                lambda scope: self.authorizer.item_check(principal, scope, report=lambda *d: self._audit_candidate_list(state, *d)),
                strict=lists_asked,
                scope=lambda: self.authorizer.listing_scope(principal),
                memo=self.authorizer.filtered_lists,
                observe_tools=(lambda tools: self._learn_tools(state, tools)) if _asks_only_tools_list(state.batch) else None,
            )
        transform_json = transform_event = None
        if list_filter is not None and principal is not None:
            # M3: updates only for resources the caller may read; M4: task ids sealed for this caller.
            listens = state.batch is not None and any(m.method == "subscriptions/listen" for m in state.batch.messages)
            most = self.config.upstream.max_list_bytes  # R2: no frame larger than a list is parsed
            updates = UpdateFilter(lambda uri: self._may_read(principal, uri), strict=listens, max_bytes=most)
            tasks = self.tasks.answers(principal, state.known_tasks, state.batch, max_bytes=most)
            transform_json = _chain(list_filter.filter_json_body, tasks.filter_json_body, updates.filter_json_body)
            transform_event = _chain(list_filter.filter_event, tasks.filter_event, updates.filter_event)
        return await self.proxy.forward(
            request,
            body=body,
            headers=headers,
            extra_headers=answer_headers,
            on_response=on_response,
            transform_json=transform_json,
            transform_event=transform_event,
            require_transform=lists_asked,
            may_rewrite=_may_name_a_task_or_update if transform_json is not None else None,
            decide_ahead=list_filter.decide_ahead if list_filter else None,  # R4
        )

    def _may_read(self, principal: Principal, uri: str) -> bool:
        """M3: the caller's resources/read decision on ``Resource::"<uri>"`` (the authorizer caches it)."""
        decision = self.authorizer.decide(principal, Message(kind="request", method="resources/read", params={"uri": uri}))
        if not decision.allowed:
            log.info("dropped notifications/resources/updated for a resource the caller may not read",
                     extra={"fields": {"reason": "subscription_update_denied", "policies": decision.policies}})
        return decision.allowed


def _chain(*steps: Any) -> Any:
    """Frame transforms applied in order; a step that drops the frame (None) ends the chain."""
    def chained(raw: bytes) -> Any:
        for step in steps:
            raw = step(raw)
            if raw is None:
                return None
        return raw
    return chained
