"""O2: OpenTelemetry tracing of MCP requests, and the W3C Trace Context the gateway reads and passes on.

Off by default (``tracing.enabled``). Then nothing here runs per request except ``forwarded_trace_context``
(and ``forwarded_meta_context`` for a body with ``params._meta`` trace context): a well-formed
``traceparent`` (and its ``tracestate``) from the client is re-serialized for the upstream, so a trace that
the gateway does not take part in still joins up, and a malformed one is dropped rather than passed on
unparsed (the other parser could read it differently). No OpenTelemetry module is imported.

On, each MCP request is one SERVER span, ``POST /mcp``, with a child span per stage (token, message,
scopes, policy, upstream). Its parent is the caller's span, from the ``traceparent`` header or, when there
is none (or it is malformed), from ``params._meta.traceparent`` (SEP-414; the header wins: a proxy in
front rewrites headers, never bodies). A malformed value means a new trace, never an error. The parent is
only known once the body is parsed, which comes after the token stage, so a ``RequestTrace`` notes when
each stage began (one ``time_ns`` each) and makes the spans with those times once the parent is
known: at the upstream stage, whose CLIENT span is what the upstream's ``traceparent`` names as its
parent, or at the end. Exported in batches over OTLP/HTTP (protobuf) by a background thread; the queue is
bounded (2,048 spans; more are dropped, R), and what is queued is flushed at shutdown.

Attributes say what happened, never who or with what: the MCP method, the tool or prompt name (names are
not secrets; resource URIs, arguments, tokens and claim values can be, and are never recorded; a value
is cut at 256 characters), the decision, its reason code and the deciding policy ids, the HTTP status,
and the request id that the access log and the audit event carry.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import TracingConfig

log = logging.getLogger(__name__)

# W3C Trace Context §3.2: version-traceid-parentid-flags, lowercase hex. A later version may append
# "-..." fields (read as version 00, §3.2.4); version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?")
# §3.3.1: key = simple-key / tenant@system; value printable ASCII without "," and "=", not ending in a space.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13}|[a-z][_0-9a-z*/-]{0,255})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
MAX_TRACESTATE_MEMBERS = 32  # §3.3.1.1
MAX_TRACESTATE_LENGTH = 512  # §3.3.1.5: what every vendor propagates; a longer one is dropped whole

# module -> the package that installs it (dependencies of mcp-auth-gateway; imported only when enabled)
REQUIRED_PACKAGES = {"opentelemetry.sdk": "opentelemetry-sdk",
                     "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http"}


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str  # 32 lowercase hex digits
    parent_id: str  # 16
    flags: int

    @property
    def header(self) -> str:
        """As version 00, the version this gateway speaks (§3.2.4: a later version is re-sent as ours)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def parse_traceparent(values: Sequence[str]) -> TraceParent | None:
    """The one ``traceparent`` value, or None: absent, sent twice (which one would the next hop read?),
    or not the W3C format."""
    if len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0].strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def parse_tracestate(values: Sequence[str]) -> str | None:
    """The ``tracestate`` list-members, re-joined with plain commas; None when absent or malformed
    (§3.3.1.3: several headers are one list; a malformed list is dropped whole, never half-read)."""
    joined = ",".join(values)
    if not joined or len(joined) > MAX_TRACESTATE_LENGTH:
        return None
    members, keys = [], set()
    for member in joined.split(","):
        member = member.strip(" \t")
        if not member:
            continue  # empty list-members are allowed (§3.3.1.1)
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return None
        keys.add(match.group(1))
        members.append(member)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


def forwarded_trace_context(headers: Any) -> dict[str, str]:
    """With tracing off: the client's trace context for the upstream, re-serialized, or nothing."""
    values = headers.getall("traceparent", ())
    if not values:
        return {}
    parent = parse_traceparent(values)
    if parent is None:
        return {}
    context = {"traceparent": parent.header}
    state = parse_tracestate(headers.getall("tracestate", ()))
    if state is not None:
        context["tracestate"] = state
    return context


def forwarded_meta_context(meta: Mapping[str, Any]) -> dict[str, str]:
    """With tracing off: what replaces the trace context in one message's ``params._meta`` upstream, like
    ``forwarded_trace_context`` for the headers: the client's, re-serialized, or nothing."""
    parent, state = meta_trace_context({"_meta": meta})
    if parent is None:
        return {}
    return {"traceparent": parent.header, **({"tracestate": state} if state is not None else {})}


def meta_trace_context(params: Mapping[str, Any]) -> tuple[TraceParent | None, str | None]:
    """SEP-414: ``params._meta.traceparent`` and ``tracestate`` of one message, parsed like the headers."""
    meta = params.get("_meta")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("traceparent"), str):
        return None, None
    parent = parse_traceparent([meta["traceparent"]])
    state = meta.get("tracestate")
    return parent, parse_tracestate([state]) if parent is not None and isinstance(state, str) else None


def tracing_problem() -> str | None:
    """Why ``tracing.enabled: true`` cannot work here, or None (checked by the configuration loader)."""
    for module, package in REQUIRED_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"needs the Python package {package} (a dependency of mcp-auth-gateway: was it left out?)"
    return None


# One export's time limit (retries included), and how long shutdown waits for the queue: an unreachable
# collector holds the pod's exit about 5 s, after the requests and the audit log are done.
EXPORT_TIMEOUT = 5.0
FLUSH_TIMEOUT_MS = 3000
MAX_ATTRIBUTE_LENGTH = 256  # characters of one attribute value (a tool name) kept in a span
MAX_EVENTS = 64  # decision events of one request (a batch has at most server.max_batch messages)

# Stages with a child span of their own; the others (credentials, limits, session) only end the one before.
STAGE_SPANS = frozenset({"token", "message", "scopes", "policy", "upstream"})
# Attributes of the server span, and the names the decision events use.
MCP_METHOD = "mcp.method.name"  # OpenTelemetry semantic conventions for MCP
TOOL_NAME = "gen_ai.tool.name"
PROMPT_NAME = "gen_ai.prompt.name"
DECISION = "mcp_gateway.decision"
REASON = "mcp_gateway.reason"
POLICIES = "mcp_gateway.policies"
REQUEST_ID = "mcp_gateway.request_id"
NAMED_TARGETS = {"tools/call": TOOL_NAME, "prompts/get": PROMPT_NAME}


class Tracing:
    """The process's tracer provider: sampler, OTLP/HTTP exporter, batch processor. Built only when enabled."""

    def __init__(self, config: TracingConfig):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        # ParentBased: a caller's sampling decision is kept, so its trace is whole; sample_ratio decides
        # for requests that start a trace here. Not the global provider: the gateway traces only itself.
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False,
            # R: a tool name is as long as the client makes it, and a span waits in a queue of 2,048.
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH, max_events=MAX_EVENTS),
        )
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint, timeout=EXPORT_TIMEOUT)))
        self.tracer = self.provider.get_tracer("mcp-auth-gateway")
        log.info("tracing on: OTLP/HTTP to %s, sample ratio %g", without_userinfo(config.endpoint), config.sample_ratio)

    def begin(self, method: str, path: str, headers: Any, request_id: str) -> RequestTrace:
        trace = RequestTrace(self, f"{method} {path}", method, headers)
        trace.attributes[REQUEST_ID] = request_id  # the access log's and the audit event's id
        return trace

    def remote_parent(self, parent: TraceParent | None, state: str | None) -> Any:
        """An OpenTelemetry context whose span is the caller's (or an empty one: a new trace)."""
        if parent is None:
            return self._trace.set_span_in_context(self._trace.INVALID_SPAN)
        carrier = {"traceparent": parent.header}
        if state is not None:
            carrier["tracestate"] = state
        return self._propagator.extract(carrier)

    def inject(self, span: Any) -> dict[str, str]:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier

    def shutdown(self) -> None:
        """Flushes what is queued (E3: the last requests' spans are not lost), then stops the exporter."""
        self.provider.force_flush(timeout_millis=FLUSH_TIMEOUT_MS)
        self.provider.shutdown()


def without_userinfo(url: str) -> str:
    """``https://user:secret@collector/v1/traces`` as ``https://***@collector/v1/traces``: a collector's
    basic-auth credentials in the endpoint URL never reach the log."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _now_ns() -> int:
    return time.time_ns()


class RequestTrace:
    """One request's spans. Stages only note their start until the parent is known (module docstring)."""

    def __init__(self, tracing: Tracing, name: str, method: str, headers: Any):
        self.tracing = tracing
        self.name = name
        self.started = _now_ns()
        self.parent = parse_traceparent(headers.getall("traceparent", ()))
        self.parent_state = parse_tracestate(headers.getall("tracestate", ())) if self.parent else None
        self.from_meta = False
        self.attributes: dict[str, Any] = {"http.request.method": method}
        self.stages: list[tuple[str, int]] = []
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.server: Any = None
        self.upstream: Any = None

    def enter(self, stage: str) -> None:
        self.stages.append((stage, _now_ns()))

    def message_parsed(self, messages: Sequence[Any]) -> None:
        """The MCP method (and tool or prompt name) of the first message; SEP-414 parent if no header had one."""
        if not messages:
            return
        first = messages[0]
        if first.method is not None:
            self.attributes[MCP_METHOD] = first.method
            target = NAMED_TARGETS.get(first.method)
            if target is not None and first.name is not None:
                self.attributes[target] = first.name
        if self.parent is None:
            for message in messages:
                parent, state = meta_trace_context(message.params)
                if parent is not None:
                    self.parent, self.parent_state, self.from_meta = parent, state, True
                    break

    def decided(self, method: str | None, name: str | None, outcome: str, reason: str, policies: Sequence[str] | None) -> None:
        """One decision (or refusal): an event, and the server span's summary (the last one wins: a denial
        ends the request, so it is always last)."""
        attributes: dict[str, Any] = {DECISION: outcome, REASON: reason}
        if method is not None:
            attributes[MCP_METHOD] = method
            target = NAMED_TARGETS.get(method)
            if target is not None and name is not None:
                attributes[target] = name
        if policies:
            attributes[POLICIES] = list(policies)
        self.events.append(("decision", attributes, _now_ns()))
        self.attributes.update({k: v for k, v in attributes.items() if k in (DECISION, REASON, POLICIES)})

    def upstream_context(self) -> dict[str, str]:
        """Opens the upstream CLIENT span; the headers that make it the upstream's parent."""
        from opentelemetry.trace import SpanKind

        server = self._server_span()
        self.upstream = self.tracing.tracer.start_span(
            "upstream", context=self.tracing._trace.set_span_in_context(server), kind=SpanKind.CLIENT)
        return self.tracing.inject(self.upstream)

    def _server_span(self) -> Any:
        if self.server is None:
            from opentelemetry.trace import SpanKind

            self.server = self.tracing.tracer.start_span(
                self.name, context=self.tracing.remote_parent(self.parent, self.parent_state),
                kind=SpanKind.SERVER, start_time=self.started)
        return self.server

    def finish(self, status: int) -> None:
        """Ends every span: the stages with the times noted, then the server span with its attributes."""
        from opentelemetry.trace import Status, StatusCode

        trace = self.tracing._trace
        server = self._server_span()
        if not server.is_recording():  # not sampled: its children would not be either, so make none
            if self.upstream is not None:
                self.upstream.end()
            server.end()
            return
        parent = trace.set_span_in_context(server)
        ended = _now_ns()
        bounds = [*(start for _, start in self.stages[1:]), ended]
        for (stage, start), end in zip(self.stages, bounds, strict=True):
            if stage == "upstream" and self.upstream is not None:
                if status >= 500:
                    self.upstream.set_status(Status(StatusCode.ERROR))
                self.upstream.end(end_time=end)
                self.upstream = None
            elif stage in STAGE_SPANS:
                self.tracing.tracer.start_span(stage, context=parent, start_time=start).end(end_time=end)
        if self.upstream is not None:  # opened outside the upstream stage: end it all the same
            self.upstream.end(end_time=ended)
        for name, attributes, at in self.events:
            server.add_event(name, attributes, timestamp=at)
        self.attributes["http.response.status_code"] = status
        self.attributes["mcp_gateway.trace_parent_source"] = ("meta" if self.from_meta else "header") if self.parent else "none"
        server.set_attributes(self.attributes)
        if status >= 500:
            server.set_status(Status(StatusCode.ERROR))
        server.end(end_time=ended)
