"""E2 metrics: served without a token, bounded labels, and never a token, subject or tool name."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import aiohttp
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.observe.metrics import Metrics, merge
from gateway.observe.shared import SharedSlots
from tests.factories import bearer

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def scrape(client) -> tuple[str, dict]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    return text, samples(text)


async def test_e2_metrics_count_outcomes_reasons_and_decisions_without_secrets(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False)
    token = issuer.mint(sub="alice-the-secret-subject")
    await client.post("/mcp", json=INIT, headers=bearer(token))
    await client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "secret_tool"}}, headers=bearer(token))
    await client.post("/mcp", json=INIT)  # no token
    await client.post("/mcp", json=INIT, headers=bearer(issuer.mint(aud="https://elsewhere")))
    text, values = await scrape(client)
    assert values[("mcp_gateway_requests_total", (("outcome", "forwarded"), ("status", "200")))] == 2
    assert values[("mcp_gateway_refusals_total", (("reason", "no_token"), ("stage", "credentials")))] == 1
    assert values[("mcp_gateway_refusals_total", (("reason", "jwt_wrong_audience"), ("stage", "token")))] == 1
    assert values[("mcp_gateway_policy_decisions_total", (("decision", "allow"), ("reason", "allowed")))] == 1
    assert values[("mcp_gateway_jwks_fetches_total", (("issuer", issuer.url),))] == 1
    assert values[("mcp_gateway_policy_version", ())] == 1
    assert ("mcp_gateway_upstream_response_seconds_count", ()) in values
    for secret in (token, "alice-the-secret-subject", "secret_tool"):
        assert secret not in text


async def test_e2_policy_version_metric_follows_reloads(upstream, start_gateway, issuer, policies_dir):
    client = await start_gateway(upstream.url, authenticated=False)
    (policies_dir / "allow-all.cedar").write_text("permit (principal, action, resource);\n// changed\n")
    os.utime(policies_dir / "allow-all.cedar", ns=(1, 10**18))
    assert client.gateway.policies.reload_if_changed()
    _, values = await scrape(client)
    assert values[("mcp_gateway_policy_version", ())] == 2
    assert values[("mcp_gateway_policy_reloads_total", (("result", "applied"),))] == 1


async def test_e2_metric_names_follow_prometheus_conventions(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False)
    text, _ = await scrape(client)
    for family in text_string_to_metric_families(text):
        if family.name.startswith("mcp_gateway"):
            assert re.fullmatch(r"mcp_gateway_[a-z_]+", family.name)
            if family.type == "counter":
                assert not family.name.endswith("_total")  # the client library adds _total to samples


# -- O3: with server.workers, one scrape shows every worker's counters --------------------------------------------

FORWARDED = ("mcp_gateway_requests_total", (("outcome", "forwarded"), ("status", "200")))
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def _one_connection_get(url: str) -> dict:
    async with aiohttp.ClientSession() as http:  # a new connection: the kernel picks the worker
        async with http.get(f"{url}/metrics") as response:
            assert response.status == 200
            return samples(await response.text())


async def _one_connection_post(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/mcp", data=json.dumps(INIT), headers={**JSON, **bearer(token)}) as response:
            await response.read()
            return response.status


def _read_syscalls(pid: int) -> int:
    """Read system calls so far: every request a worker serves makes some (CPU ticks are too coarse)."""
    return int(next(line.split()[1] for line in open(f"/proc/{pid}/io") if line.startswith("syscr:")))


@pytest.mark.parametrize("on_admin_port", [False, True], ids=["main-port", "admin-port"])
async def test_o3_one_scrape_shows_every_workers_counters_and_they_never_go_backwards(serve_gateway, upstream, issuer,
                                                                                      on_admin_port):
    """With admin_port 0 either worker answers a scrape; with the admin port worker 0 does (O1): both show all."""
    gateway = await serve_gateway(upstream.url, server={"workers": 2} if on_admin_port else {"workers": 2, "admin_port": 0})
    metrics_url = gateway.admin_url if on_admin_port else gateway.url
    children = [int(pid) for pid in open(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children").read().split()]
    assert len(children) == 2
    token = issuer.mint()
    before = {pid: _read_syscalls(pid) for pid in children}
    sent, seen = 0, []
    for _ in range(4):
        # 15 new connections a round: the kernel spreads them over both workers.
        statuses = await asyncio.gather(*(_one_connection_post(gateway.url, token) for _ in range(15)))
        assert statuses == [200] * 15
        sent += 15
        for _ in range(4):  # each scrape on its own connection, answered by either worker
            seen.append((await _one_connection_get(metrics_url)).get(FORWARDED, 0))
    served = {pid: _read_syscalls(pid) - before[pid] for pid in children}
    assert all(count > 0 for count in served.values()), served  # both workers answered some requests
    # Other workers' counts reach a scrape within a second (gateway.observe.metrics.SHARE_EVERY_S).
    deadline = time.monotonic() + 5
    while True:
        latest = [(await _one_connection_get(metrics_url)).get(FORWARDED, 0) for _ in range(6)]
        seen += latest
        if latest == [sent] * 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert latest == [sent] * 6, latest  # every scrape, whichever worker answered it, counts every worker's requests
    assert seen == sorted(seen), seen  # never backwards from one scrape to the next
    # What the parts count themselves (StateCollector) is merged too: each worker fetched the issuer's keys.
    values = await _one_connection_get(metrics_url)
    assert values[("mcp_gateway_jwks_fetches_total", (("issuer", issuer.url),))] >= 2
    assert values[("mcp_gateway_policy_version", ())] == 1  # a gauge: the oldest in force, not a sum
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gateway.process.wait(), 15) == 0


def test_o3_counters_merge_by_sum_and_gauges_by_their_rule_over_live_workers():
    one, two = Metrics(), Metrics()
    for metrics, forwarded, streams, version in ((one, 3, 2, 4), (two, 5, 1, 3)):
        for _ in range(forwarded):
            metrics.request_counts("forwarded", 200).inc()
        metrics.upstream_latency.observe(0.02)
        metrics.open_streams.inc(streams)
        metrics.collect_state(_Version(version))
    merged = {(s[0], tuple(sorted(s[1].items()))): s[2] for f in merge([(one.share(), True), (two.share(), True)]) for s in f["samples"]}
    assert merged[FORWARDED] == 8
    assert merged[("mcp_gateway_upstream_response_seconds_count", ())] == 2
    assert merged[("mcp_gateway_upstream_response_seconds_bucket", (("le", "0.025"),))] == 2
    assert merged[("mcp_gateway_upstream_response_seconds_bucket", (("le", "0.01"),))] == 0
    assert merged[("mcp_gateway_open_streams", ())] == 3  # summed
    assert merged[("mcp_gateway_policy_version", ())] == 3  # the oldest in force
    # A worker that ended keeps its counts in the sums; its gauges no longer count.
    ended = {(s[0], tuple(sorted(s[1].items()))): s[2] for f in merge([(one.share(), True), (two.share(), False)]) for s in f["samples"]}
    assert ended[FORWARDED] == 8 and ended[("mcp_gateway_open_streams", ())] == 2 and ended[("mcp_gateway_policy_version", ())] == 4


class _Version(Collector):
    def __init__(self, version: int):
        self.version = version

    def collect(self):
        yield GaugeMetricFamily("mcp_gateway_policy_version", "Version.", value=self.version)


def test_o3_a_worker_restarted_in_its_slot_goes_on_from_its_predecessors_counts():
    slots = SharedSlots(2)
    first = Metrics()
    first.share_through(slots.slot(0))
    for _ in range(7):
        first.request_counts("forwarded", 200).inc()
    first.share()
    # The process that wrote slot 0 is gone; a new one (another pid) takes the slot over.
    _rewrite_pid(slots, 0, 999_999_999)
    second = Metrics()
    second.share_through(slots.slot(0))
    second.request_counts("forwarded", 200).inc()
    values = samples(second.render().decode())
    assert values[FORWARDED] == 8  # 7 before the restart, 1 after: never backwards
    assert slots.slot(1).others()[0][1].pid == os.getpid()  # the new writer's samples are what others read


def _rewrite_pid(slots: SharedSlots, index: int, pid: int) -> None:
    """Make slot ``index`` look written by another process (header field 2 is the writer's pid)."""
    import struct

    start = index * slots.slot_bytes
    generation, _, written_at, length, crc = struct.unpack_from("<QIdII", slots._memory, start)
    struct.pack_into("<QIdII", slots._memory, start, generation, pid, written_at, length, crc)


def test_o3_a_torn_slot_is_never_read_as_a_snapshot():
    slots = SharedSlots(1)
    metrics = Metrics()
    metrics.share_through(slots.slot(0))
    metrics.request_counts("forwarded", 200).inc()
    metrics.share()
    assert slots.read(0) is not None
    slots._memory[60:64] = b"\xff\xff\xff\xff"  # a byte of the payload changed under the CRC
    assert slots.read(0) is None
