"""E2, O3: Prometheus metrics, every one declared here (Envoy's stats.h habit).

Labels are bounded vocabularies only: outcome, HTTP status, reason codes, configured issuers. Never a
token, a subject, a tool name or anything else a client controls. The auth and policy modules do not
import prometheus: ``StateCollector`` reads their counters when ``/metrics`` is scraped.

P1: the request path counts into plain Python numbers (``CounterFamily``, ``GaugeFamily``,
``HistogramFamily``: an addition, no lock, no file; the gateway counts on its event loop only), which
``prometheus_client`` renders at scrape time; any collector in ``Metrics.registry`` is rendered with them.

O3: with ``server.workers`` > 1, every worker shares its samples through ``gateway.observe.shared`` and
the worker a scrape reaches shows them all, merged: counters and histograms summed over every worker that
ran since the start (a worker that ended keeps its share); gauges over the workers alive, each by its
``GAUGE_MERGE`` rule (an open stream count adds up; the policy version in force is the oldest any worker
has). Other workers' samples are at most ``SHARE_EVERY_S`` old; a worker's own are current.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.observe.shared import Snapshot, WorkerSlot, alive

log = logging.getLogger(__name__)

PREFIX = "mcp_gateway"
SHARE_EVERY_S = 1.0  # how often a worker writes its samples for the others (and before each scrape it answers)
GAUGE_STALE_S = 10.0  # a worker that wrote nothing for this long shows no gauges (its counters stay)
# How one gauge of several workers becomes one sample (default: the sum).
GAUGE_MERGE: dict[str, Callable[[float, float], float]] = {
    f"{PREFIX}_jwks_age_seconds": max,  # the oldest keys any worker has
    f"{PREFIX}_jwks_keys": min,  # alerts on 0 for any worker
    f"{PREFIX}_policy_version": min,  # the oldest version in force; equal everywhere once reloads converge
    f"{PREFIX}_policy_count": min,
}


class Value:
    """One labelled child: a number the event loop adds to."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeValue(Value):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Family(Collector):
    """A metric with labels, as ``prometheus_client`` spells it: ``family.labels(*values).inc()``."""

    kind = "counter"
    child = Value

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), *, registry: CollectorRegistry):
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Value] = {}
        if not self.labelnames:
            self._children[()] = self.child()
        registry.register(self)

    def labels(self, *values: object) -> Any:
        key = tuple(map(str, values))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.child()
        return child

    def inc(self, amount: float = 1) -> None:
        self._children[()].inc(amount)

    def sample_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        sample = self.sample_name()
        for values, child in list(self._children.items()):
            metric.add_sample(sample, dict(zip(self.labelnames, values)), child.value)
        yield metric

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, self.kind)


class CounterFamily(_Family):
    pass


class GaugeFamily(_Family):
    kind = "gauge"
    child = GaugeValue

    def dec(self, amount: float = 1) -> None:
        self._children[()].dec(amount)  # type: ignore[attr-defined]

    def set(self, value: float) -> None:
        self._children[()].set(value)  # type: ignore[attr-defined]


class HistogramFamily(Collector):
    """An unlabelled histogram: ``observe(seconds)`` finds its bucket by bisection and adds one."""

    def __init__(self, name: str, documentation: str, *, buckets: Iterable[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self._bounds = [*sorted(float(b) for b in buckets), float("inf")]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "histogram")
        total = 0
        for bound, count in zip(self._bounds, list(self._counts)):
            total += count
            metric.add_sample(f"{self.name}_bucket", {"le": floatToGoString(bound)}, total)
        metric.add_sample(f"{self.name}_count", {}, total)
        metric.add_sample(f"{self.name}_sum", {}, self._sum)
        yield metric

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "histogram")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = CounterFamily(f"{PREFIX}_requests", "Requests to the MCP endpoint, by outcome and HTTP status.",
                                      ["outcome", "status"], registry=r)
        self.refusals = CounterFamily(f"{PREFIX}_refusals", "Refused requests by stage and stable reason code.",
                                      ["stage", "reason"], registry=r)
        self.decisions = CounterFamily(f"{PREFIX}_policy_decisions", "Cedar decisions on the request path.",
                                       ["decision", "reason"], registry=r)
        self.upstream_latency = HistogramFamily(f"{PREFIX}_upstream_response_seconds",
                                                "Time until the upstream's response headers arrived.", registry=r,
                                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.upstream_errors = CounterFamily(f"{PREFIX}_upstream_errors", "Upstream failures by reason.", ["reason"], registry=r)
        self.open_streams = GaugeFamily(f"{PREFIX}_open_streams", "Streamed (SSE) responses being relayed now.", registry=r)
        # The request path counts through these (P1); the common answers are bound (and shown, at 0) from the start.
        self.request_counts = Children(self.requests, ("forwarded", 200))
        self.decision_counts = Children(self.decisions, ("allow", "allowed"))
        self.refusal_counts = Children(self.refusals)
        self.upstream_error_counts = Children(self.upstream_errors)
        self._slot: WorkerSlot | None = None

    def collect_state(self, collector: Collector) -> None:
        self.registry.register(collector)

    # -- O3: several workers -------------------------------------------------------------------------------------

    def share_through(self, slot: WorkerSlot) -> None:
        """From now on this worker's samples go to ``slot`` and scrapes show every worker's (O3)."""
        self._slot = slot
        self.share()

    def share(self) -> Snapshot:
        """This worker's samples (with what a predecessor in its slot counted), written to its slot."""
        own = snapshot(self.registry)
        if self._slot is None:
            return own
        if self._slot.carried:
            own = merge([(self._slot.carried, False), (own, True)])
        self._slot.write(own)
        return own

    async def keep_shared(self, every: float = SHARE_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                self.share()
            except Exception:  # never let the sharer die: scrapes would show this worker's old samples
                log.exception("could not share this worker's metrics")

    def samples(self) -> Snapshot:
        """What a scrape shows: this worker's samples, merged with every other worker's when shared."""
        own = self.share()
        if self._slot is None:
            return own
        now = time.time()
        parts = [(own, True)]
        for _, reading in self._slot.others():
            if reading is not None:
                parts.append((reading.families, alive(reading.pid) and now - reading.written_at < GAUGE_STALE_S))
        return merge(parts)

    def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Rendered(self.samples()))
        return generate_latest(registry)


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every family of ``registry`` as plain data (``_created`` samples left out: they mean nothing summed)."""
    families = []
    for metric in registry.collect():
        samples = [[s.name, dict(s.labels), s.value] for s in metric.samples
                   if not (s.name.endswith("_created") and metric.type in ("counter", "histogram", "summary"))]
        families.append({"name": metric.name, "type": metric.type, "help": metric.documentation, "samples": samples})
    return families


def merge(parts: list[tuple[Snapshot, bool]]) -> Snapshot:
    """One snapshot of several workers' (each with whether its gauges count: the worker is alive)."""
    merged: dict[str, dict[str, Any]] = {}
    for families, live in parts:
        for family in families:
            kind = family["type"]
            if kind == "gauge" and not live:
                continue
            entry = merged.setdefault(family["name"], {**family, "samples": {}})
            combine = GAUGE_MERGE.get(family["name"], _add) if kind == "gauge" else _add
            samples: dict[tuple[Any, ...], list[Any]] = entry["samples"]
            for name, labels, value in family["samples"]:
                key = (name, tuple(sorted(labels.items())))
                known = samples.get(key)
                if known is None:
                    samples[key] = [name, labels, value]
                else:
                    known[2] = combine(known[2], value)
    return [{**entry, "samples": list(entry["samples"].values())} for entry in merged.values()]


def _add(a: float, b: float) -> float:
    return a + b


class _Rendered(Collector):
    def __init__(self, families: Snapshot):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family["name"], family["help"], family["type"])
            for name, labels, value in family["samples"]:
                metric.add_sample(name, labels, value)
            yield metric


class Children:
    """A labelled metric's children, looked up once per distinct label values (P1: ``labels()`` turns every
    value into text on every call). ``children(*values)``: the child for ``values``, given as they come (a
    status as an int); each becomes its label text once. Labels are bounded vocabularies (module
    docstring); past ``limit`` distinct ones this stops remembering, never counting."""

    __slots__ = ("_metric", "_children", "_limit")

    def __init__(self, metric: _Family, *common: tuple[object, ...], limit: int = 1024):
        self._metric = metric
        self._children: dict[tuple[object, ...], Value] = {}
        self._limit = limit
        for values in common:
            self(*values)

    def __call__(self, *values: object) -> Value:
        child = self._children.get(values)
        if child is None:
            child = self._metric.labels(*values)
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
