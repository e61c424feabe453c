"""E2: Prometheus metrics, every one declared here (Envoy's stats.h habit).

Labels are bounded vocabularies only: outcome, HTTP status, reason codes, configured issuers. Never a
token, a subject, a tool name or anything else a client controls. The auth and policy modules do not
import prometheus: ``StateCollector`` reads their counters when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "mcp_gateway"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Requests to the MCP endpoint, by outcome and HTTP status.",
                                ["outcome", "status"], registry=r)
        self.refusals = Counter(f"{PREFIX}_refusals", "Refused requests by stage and stable reason code.",
                                ["stage", "reason"], registry=r)
        self.decisions = Counter(f"{PREFIX}_policy_decisions", "Cedar decisions on the request path.",
                                 ["decision", "reason"], registry=r)
        self.upstream_latency = Histogram(f"{PREFIX}_upstream_response_seconds",
                                          "Time until the upstream's response headers arrived.", registry=r,
                                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.upstream_errors = Counter(f"{PREFIX}_upstream_errors", "Upstream failures by reason.", ["reason"], registry=r)
        self.open_streams = Gauge(f"{PREFIX}_open_streams", "Streamed (SSE) responses being relayed now.", registry=r)
        # The request path counts through these (P1); the common answers are bound (and shown, at 0) from the start.
        self.request_counts = Children(self.requests, ("forwarded", 200))
        self.decision_counts = Children(self.decisions, ("allow", "allowed"))
        self.refusal_counts = Children(self.refusals)
        self.upstream_error_counts = Children(self.upstream_errors)

    def collect_state(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Children:
    """A labelled metric's children, looked up once per distinct label values (P1: ``labels()`` checks and
    locks on every call). ``children(*values)``: the child for ``values``, given as they come (a status as
    an int); each becomes its label text once. Labels are bounded vocabularies (module docstring); past
    ``limit`` distinct ones this stops remembering, never counting."""

    __slots__ = ("_metric", "_children", "_limit")

    def __init__(self, metric: Counter, *common: tuple[object, ...], limit: int = 1024):
        self._metric = metric
        self._children: dict[tuple[object, ...], Counter] = {}
        self._limit = limit
        for values in common:
            self(*values)

    def __call__(self, *values: object) -> Counter:
        child = self._children.get(values)
        if child is None:
            child = self._metric.labels(*map(str, values))
            if len(self._children) < self._limit:
                self._children[values] = child
        return child


class StateCollector(Collector):
    """Reads counters kept by the parts themselves (key cache, introspection, policy store) at scrape time."""

    def __init__(self, *, jwks, introspector, policies, authorizer=None, clock: Callable[[], float] = time.monotonic):
        self.jwks = jwks
        self.introspector = introspector
        self.policies = policies
        self.authorizer = authorizer
        self.clock = clock

    def collect(self) -> Iterable:
        fetches = CounterMetricFamily(f"{PREFIX}_jwks_fetches", "JWKS fetch attempts per issuer.", labels=["issuer"])
        age = GaugeMetricFamily(f"{PREFIX}_jwks_age_seconds", "Seconds since the issuer's keys were last fetched successfully.", labels=["issuer"])
        keys = GaugeMetricFamily(f"{PREFIX}_jwks_keys", "Usable signing keys cached per issuer.", labels=["issuer"])
        for issuer, state in self.jwks.states().items():
            fetches.add_metric([issuer], state.fetches)
            if state.fetched_at is not None:
                age.add_metric([issuer], self.clock() - state.fetched_at)
            keys.add_metric([issuer], len(state.keys.keys) if state.keys else 0)
        yield from (fetches, age, keys)
        if self.introspector is not None:
            yield CounterMetricFamily(f"{PREFIX}_introspection_calls", "Calls to the introspection endpoint.", value=self.introspector.calls)
            yield CounterMetricFamily(f"{PREFIX}_introspection_cache_hits", "Introspection answers served from the cache.", value=self.introspector.cache_hits)
            yield CounterMetricFamily(f"{PREFIX}_introspection_busy", "Introspections refused because auth.introspection.max_concurrent calls were in flight (R6).", value=self.introspector.busy_refusals)
        yield GaugeMetricFamily(f"{PREFIX}_policy_version", "Version of the Cedar policy set in force (1 at start, +1 per reload).", value=self.policies.current.version)
        yield GaugeMetricFamily(f"{PREFIX}_policy_count", "Cedar policies in force.", value=self.policies.current.policy_count)
        reloads = CounterMetricFamily(f"{PREFIX}_policy_reloads", "Policy reloads by result.", labels=["result"])
        reloads.add_metric(["applied"], self.policies.reloads)
        reloads.add_metric(["refused"], self.policies.failed_reloads)
        yield reloads
        if self.authorizer is not None:
            yield from self._authoring(self.authorizer)

    @staticmethod
    def _authoring(authorizer) -> Iterable:
        """A2 and A5: tool definition changes, and where the candidate policies disagree."""
        catalogue = authorizer.catalogue
        yield CounterMetricFamily(f"{PREFIX}_tool_definition_changes", "Tool definitions listed differently from "
                                  "the accepted (pinned) one (A2).", value=catalogue.changes_seen)
        candidate = authorizer.candidate
        if candidate is None:
            return
        disagreements = CounterMetricFamily(f"{PREFIX}_candidate_disagreements", "Decisions (list items included) "
                                            "where authorization.candidate_policies decided otherwise, by method (A5).",
                                            labels=["method"])
        for method, count in sorted(authorizer.disagreements.items()):
            disagreements.add_metric([method], count)
        yield disagreements
        yield GaugeMetricFamily(f"{PREFIX}_candidate_policy_version", "Version of the candidate policy set "
                                "(0: none loaded).", value=candidate.store.current.version if candidate.store.current else 0)
        reloads = CounterMetricFamily(f"{PREFIX}_candidate_policy_reloads", "Candidate policy loads by result.", labels=["result"])
        reloads.add_metric(["applied"], candidate.store.reloads)
        reloads.add_metric(["refused"], candidate.store.failed_reloads)
        yield reloads


def metrics_handler(metrics: Metrics):
    async def serve_metrics(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return serve_metrics
