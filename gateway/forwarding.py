"""The upstream stage of the MCP endpoint: what the upstream gets, and what the answer may carry.

``Forwarder.forward`` runs last, once every check of the pipeline (gateway.endpoint) has passed.

What the upstream gets (``Forwarder.forward``, ``Forwarder._gateway_headers``):
    the client's headers minus the hop-by-hop ones, those that claim identity or routing and
    ``upstream.strip_headers`` (U1, I5), plus the gateway's own: ``X-Request-Id``, the upstream's session
    id unwrapped from the client's (P4), the upstream's task id in ``Mcp-Name`` (M4), the identity headers
    or assertion (U3), the upstream credential (U2) and the trace context (O2), in the header and in
    SEP-414's ``_meta``. The body is the gateway's serialization of what was decided (I1), as JSON.

What the answer may carry (``on_response`` and the frame transforms):
    the session id the upstream issues, wrapped for the caller's principal (P4; a DELETE forgets it);
    lists filtered to what the caller may see (Z4), with the tool catalogue learning from a relayed
    ``tools/list`` answer (A1, A2) and candidate policies that would have filtered otherwise audited (A5);
    resource updates only for resources the caller may read (M3); task ids sealed for the caller (M4).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.auth.principal import Principal
from gateway.authz.cedar import Authorizer
from gateway.config import Config
from gateway.edge.origin import OriginPolicy
from gateway.exchange import RequestState, audit_decision
from gateway.mcp.jsonrpc import Batch, Message, encode_header_value
from gateway.mcp.listing import ListFilter
from gateway.mcp.lists import LIST_METHODS
from gateway.mcp.sessions import SessionBindings
from gateway.mcp.subscriptions import UpdateFilter, may_mention as may_be_an_update
from gateway.mcp.tasks import TaskBindings, may_mention as may_mention_a_task
from gateway.observe.audit import AuditLog
from gateway.observe.tracing import forwarded_meta_context, forwarded_trace_context
from gateway.upstream.credentials import UpstreamCredential
from gateway.upstream.headers import never_forwarded, upstream_request_headers
from gateway.upstream.identity import IdentityAssertion, IdentityHeaders
from gateway.upstream.proxy import UpstreamProxy

log = logging.getLogger(__name__)


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


class Forwarder:
    """Sends an admitted request upstream and shapes its answer for the caller (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        proxy: UpstreamProxy,
        credential: UpstreamCredential,
        identity: list[IdentityHeaders | IdentityAssertion],
        sessions: SessionBindings,
        tasks: TaskBindings,
        authorizer: Authorizer,
        audit: AuditLog,
    ):
        self.config = config
        self.proxy = proxy
        self.credential = credential
        self.identity = identity
        self.sessions = sessions
        self.tasks = tasks
        self.authorizer = authorizer
        self.audit = audit
        # U1, I5: what the client sent is never forwarded when the gateway sets it itself (identity headers,
        # the request id) or the configuration says so (upstream.strip_headers).
        self._never_forwarded = never_forwarded((
            *config.upstream.identity_headers, *(i.header for i in identity if isinstance(i, IdentityAssertion)),
            *config.upstream.strip_headers, "X-Request-Id", config.upstream.auth.header))

    async def forward(self, request: web.Request, body: bytes | None, state: RequestState) -> web.StreamResponse:
        """U1-U4: ``body`` (None for GET and DELETE) and the request's headers to the upstream; its answer,
        streamed, to the caller."""
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

        added = self._gateway_headers(request, state)
        added.update(await self.credential.headers(state.token, state.token_hash))  # U2
        # O2: tracing off, the client's trace context, parsed and re-serialized, or none; tracing on, the
        # upstream continues the gateway's span. In the header, and in _meta where the client used it.
        if state.trace is None:
            trace_context, trace_meta = forwarded_trace_context(request.headers), forwarded_meta_context
        else:
            trace_context = trace_meta = state.trace.upstream_context()
        added.update(trace_context)
        headers = upstream_request_headers(  # U1, I5: the client's headers that may pass, and the gateway's
            request.headers,
            dropped=self._never_forwarded,
            remote=request.remote,
            public_url=self.config.server.public_url,
            upstream_host=self.proxy.host,
            add=added,
        )
        if body is not None:
            if state.batch is not None and state.batch.carries_trace_meta:
                body = state.batch.with_trace_meta(trace_meta)  # SEP-414's _meta
            headers["Content-Type"] = "application/json"  # exactly what was parsed: no charset games (Z5)
        # Z4 on every answer, POST and GET: a resumed stream replays earlier list results too.
        lists_asked = state.batch is not None and any(m.method in LIST_METHODS for m in state.batch.messages)
        transform_json = transform_event = None
        list_filter: ListFilter | None = None
        if principal is not None:
            list_filter = self._list_filter(principal, state, lists_asked)
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

    def _gateway_headers(self, request: web.Request, state: RequestState) -> dict[str, str]:
        """The headers the gateway itself sets for the upstream, but for its credential (U2) and the trace
        context (O2). Not a coroutine: one less object per request (P1)."""
        added = {"X-Request-Id": state.request_id}
        if state.upstream_session is not None:
            added["Mcp-Session-Id"] = state.upstream_session  # P4
        if state.known_tasks and "Mcp-Name" in request.headers:
            # M4: for tasks/* Mcp-Name is params.taskId (SEP-2663) and matched the body (Z6): the upstream's id too.
            handle = state.batch.messages[0].params.get("taskId")
            added.update({"Mcp-Name": encode_header_value(raw) for raw, mine in state.known_tasks.items() if mine == handle})
        if state.principal is not None:
            for source in self.identity:  # U3
                added.update(source.headers(state.principal))
        return added

    def _list_filter(self, principal: Principal, state: RequestState, lists_asked: bool) -> ListFilter:
        """Z4: lists keep what the caller may see (strict when the request asked for one); A1, A2, A5."""
        return ListFilter(
            lambda scope: self.authorizer.item_check(principal, scope, report=lambda *d: self._audit_candidate_list(state, *d)),
            strict=lists_asked,
            scope=lambda: self.authorizer.listing_scope(principal),
            memo=self.authorizer.filtered_lists,
            observe_tools=(lambda tools: self._learn_tools(state, tools)) if _asks_only_tools_list(state.batch) else None,
        )

    def _learn_tools(self, state: RequestState, tools: list[Any]) -> None:
        """A1, A2: the catalogue learns a relayed tools/list answer; each definition change is audited."""
        for change in self.authorizer.catalogue.learn(tools):
            self.audit.record(request_id=state.request_id, event="tool_definition_changed" if change.changed else
                              "tool_definition_accepted_again", target=change.tool, changed_parts=list(change.parts),
                              digest=change.digest, accepted_digest=change.accepted,
                              tool_changes="deny" if self.authorizer.deny_changed_tools else "warn")

    def _audit_candidate_list(self, state: RequestState, list_method: str, only_enforced: list[str],
                              only_candidate: list[str]) -> None:
        """A5: a list the candidate policies would have filtered otherwise (at most 50 names of each kind)."""
        audit_decision(self.audit, state, Message(kind="request", method=list_method), "allow", "candidate_disagrees",
                       event="candidate_list", candidate_would_hide=only_enforced[:50],
                       candidate_would_show=only_candidate[:50], candidate_differences=len(only_enforced) + len(only_candidate))

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
