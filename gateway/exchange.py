"""One request's exchange, as the endpoint's pipeline (gateway.endpoint) and its upstream stage
(gateway.forwarding) share it: what the request has learned so far (``RequestState``), the parts that
observe it (``Observers``) and the audit event of one of its decisions (``audit_decision``).

Only for answering this one request; nothing here outlives it but the audit event it writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.principal import Principal
from gateway.limits import Slot
from gateway.mcp.jsonrpc import Batch, Message
from gateway.observe.audit import AuditLog
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import RequestTrace, Tracing


@dataclass(frozen=True, slots=True)
class Observers:
    """E2, E4, O2: the audit log, the counters and the tracer (None when tracing is off)."""

    audit: AuditLog
    metrics: Metrics
    tracing: Tracing | None = None


@dataclass
class RequestState:
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


class TracedRequestState(RequestState):
    """O2, tracing on: every stage change also notes the stage's start for its span (gateway.observe.tracing)."""

    @property  # type: ignore[override]
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        self._stage = value
        if self.trace is not None:
            self.trace.enter(value)


def audit_decision(audit: AuditLog, state: RequestState, message: Message | None, outcome: str, reason: str,
                   **extra: Any) -> None:
    """E4: the audit event of one decision on ``message`` (None: the request as a whole), with who asked."""
    principal = state.principal
    if state.trace is not None:  # O2: the same decision on the span, without who made the call
        state.trace.decided(message.method if message else None, message.name if message else None,
                            outcome, reason, extra.get("policies"))
    audit.record(
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
