"""``make soak`` (R7): a bounded soak of the real gateway under mixed, hostile load with injected faults.

    SOAK_S=600 python bench/soak.py [--seconds N] [--output RELIABILITY.md] [--keep]

Starts on 127.0.0.1, and stops again: the test identity provider (``tests.factories.TestIssuer``: metadata,
JWKS and introspection, the last two on listeners of their own), the MCP upstream as its own process
(``bench/soak_upstream.py``: tools/call, a 500-tool tools/list, SSE streams) and the gateway as a real
``python -m gateway serve --config FILE`` process with Cedar policies. Then:

1. calibrates: the bulk of the mix (small ``tools/call`` from several principals, opaque-token calls and
   500-tool lists, in the soak's shares: ``soak_load.CALIBRATION_MIX``) closed-loop (16 clients) for 10 s;
   the soak runs open-loop at 70 % of that rate;
2. runs the mix of ``soak_load.KINDS`` for ``SOAK_S`` seconds: valid calls (several JWT principals, fresh
   JWTs, opaque tokens), 500-tool lists, long SSE streams, hostile requests and slow clients;
3. injects faults on a schedule scaled to ``SOAK_S``: the JWKS refusing then hanging, and back with a
   rotated key; introspection failing then refusing; the upstream killed mid-stream and restarted; a
   broken policy edit, then a good one; a SIGTERM under load at the end;
4. classifies every request against the faults active while it ran, samples the gateway's RSS from
   ``/proc``, and writes RELIABILITY.md with a PASS/FAIL line per criterion. Exits 1 when one fails.

The soak reports what the gateway did; it never works around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from soak_load import (  # noqa: E402
    CALIBRATION_MIX, KIND_INDEX, KINDS, LOST, CalibrationFailed, Load, Timeline, Window, classify, closed_loop,
)
from soak_parts import (  # noqa: E402
    CLOCK_TICKS, FORBIDDEN_TOOL, LATER_FORBIDDEN_TOOL, LOOPBACK, POLICIES_BROKEN, POLICIES_GOOD, POLICIES_START, ROOT,
    GatewaySettings, Part, SoakIssuer, free_port, gateway_config, machine, scrape_metrics, write_atomically, write_json,
)

CALIBRATION_S = 10.0
CALIBRATION_CLIENTS = 16
CALIBRATION_WINDOWS = 5
LOAD_FRACTION = 0.70
STREAM_EVENTS, STREAM_INTERVAL = 12, 0.5  # a long stream lasts 6 s: shorter than shutdown_grace, so SIGTERM must let it finish
RSS_EVERY = 2.0
SETTLE_S = 5.0  # latency "outside fault windows" also leaves out this long after each window
RSS_GROWTH_LIMIT = 0.10
OTHER_WORK_MARGIN = 0.25  # of a core: more than this much extra load from elsewhere voids the 70 % calibration

# When each fault begins and ends, as fractions of SOAK_S (600 s: the JWKS is down for a minute).
SCHEDULE = {
    "warm_up_end": 0.15,
    "jwks_refusing": 0.15, "jwks_hanging": 0.20, "jwks_back": 0.25,
    "introspection_failing": 0.33, "introspection_refusing": 0.365, "introspection_back": 0.40,
    "upstream_kill": 0.48, "upstream_restart": 0.53,
    "policy_broken": 0.62, "policy_good": 0.72,
    "sigterm": 1.0,
}
KEPT_OPEN = {"stream_post": 3, "stream_get": 2, "slow_headers_stall": 3, "slow_headers_trickle": 2, "slow_body": 2, "idle_keepalive": 1}
FIXED_RATES = {  # per second, whatever the capacity
    "call_fresh_jwt": 3, "call_rotated_key": 1, "call_slow": 10, "call_opaque_new": 2, "call_session": 2, "call_later_forbidden": 2,
    "forbidden_tool": 3, "batch_with_forbidden": 1, "forged_signature": 1, "expired_token": 1, "wrong_audience": 1,
    "alg_none": 1, "garbage_token": 1, "no_token": 1, "token_in_query": 1, "two_authorization": 1, "malformed_json": 1,
    "fold_duplicate": 2, "deep_nesting": 1, "oversize_body": 1, "oversize_chunked": 1, "batch_too_large": 1,
    "bad_method_name": 1, "duplicate_session_header": 1, "wrong_content_type": 1, "session_of_another": 1,
}


def mix(total: float) -> dict[str, float]:
    """The open-loop rates: fixed rates for the special kinds, shares of ``total`` for lists and opaque
    tokens, and the rest small JWT calls."""
    rates = dict(FIXED_RATES)
    shares = {kind: share / 100 for kind, share in CALIBRATION_MIX}  # the shares the capacity was measured in
    rates["list"] = max(2.0, shares["list"] * total)
    rates["call_opaque"] = max(2.0, shares["call_opaque"] * total)
    rates["call"] = max(10.0, total - sum(rates.values()))
    return rates


@dataclass
class Run:
    seconds: float
    settings: GatewaySettings
    work: Path
    gateway_tree: Path = ROOT
    started_at: str = ""
    capacity: float = 0.0
    calibration_windows: list[float] = field(default_factory=list)  # calls/s in each 2 s piece
    calibration_cpu: float = 0.0  # share of one core: the gateway, the upstream, this process (the clients)
    calibration_upstream_cpu: float = 0.0
    calibration_driver_cpu: float = 0.0
    calibration_other_cpu: float = 0.0  # everything else on the machine meanwhile
    soak_driver_cpu: float = 0.0
    load_average_end: str = ""
    target: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)
    rss: list[tuple[float, int]] = field(default_factory=list)
    # (t, CPU seconds used so far by: the gateway, the upstream (all its lives), this process, the whole machine; machine capacity)
    cpu: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    metrics_end: dict[str, float] = field(default_factory=dict)
    policy: dict[str, object] = field(default_factory=dict)
    streams_at_kill: int = 0
    sigterm: dict[str, object] = field(default_factory=dict)
    gateway_died: str = ""
    upstream_restart_s: float = 0.0


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


async def soak(run: Run) -> Load:
    settings = run.settings
    idp = SoakIssuer()
    await idp.start(jwks_max_age=int(settings.jwks_cache))
    ports = {"upstream": free_port(), "gateway": free_port()}
    policies = run.work / "policies"
    policies.mkdir()
    policy_file = policies / "main.cedar"
    write_atomically(policy_file, POLICIES_START)
    config_path = run.work / "gateway.yaml"
    write_json(config_path, gateway_config(port=ports["gateway"], upstream_port=ports["upstream"], issuer_url=idp.issuer.url,
                                           policies=policies, audit_file=run.work / "audit.jsonl", settings=settings))
    upstream = Part("upstream", [sys.executable, str(HERE / "soak_upstream.py"), "--port", str(ports["upstream"]), "--tools", "500",
                                 "--stream-events", str(STREAM_EVENTS), "--stream-interval", str(STREAM_INTERVAL)],
                    ports["upstream"], run.work / "upstream.log")
    gateway = Part("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)], ports["gateway"],
                   run.work / "gateway.log", stdout_path=run.work / "gateway.stdout", cwd=run.gateway_tree)
    base_url = f"http://{LOOPBACK}:{ports['gateway']}"
    load = Load(base_url=base_url, public_url=f"{base_url}/mcp", idp=idp, settings=settings,
                stream_events=STREAM_EVENTS, stream_interval=STREAM_INTERVAL, duration=run.seconds)
    try:
        upstream.start()
        gateway.start()
        await load.open()
        probe = load.sessions["hostile"]
        for _ in range(200):  # /readyz: policies loaded and the issuer's keys fetched (E2)
            try:
                async with probe.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the gateway never became ready; see " + str(gateway.log_path))
        await load.open_session()

        # 1. calibrate
        await closed_loop(load, 2.0, CALIBRATION_CLIENTS)  # warm the connections and caches (every call body and principal)
        cpu_before, upstream_before, driver_before = gateway.cpu_seconds() or 0.0, upstream.cpu_seconds() or 0.0, driver_cpu()
        machine_before = machine_cpu()[0]
        count, elapsed = 0, 0.0
        for _ in range(CALIBRATION_WINDOWS):  # in pieces, so the report can show how steady the machine was
            piece, took = await closed_loop(load, CALIBRATION_S / CALIBRATION_WINDOWS, CALIBRATION_CLIENTS)
            run.calibration_windows.append(piece / took)
            count, elapsed = count + piece, elapsed + took
        run.calibration_cpu = ((gateway.cpu_seconds() or 0.0) - cpu_before) / elapsed
        run.calibration_upstream_cpu = ((upstream.cpu_seconds() or 0.0) - upstream_before) / elapsed
        run.calibration_driver_cpu = (driver_cpu() - driver_before) / elapsed
        run.calibration_other_cpu = max(0.0, (machine_cpu()[0] - machine_before) / elapsed - run.calibration_cpu
                                        - run.calibration_upstream_cpu - run.calibration_driver_cpu)
        run.capacity = count / elapsed
        run.target = LOAD_FRACTION * run.capacity
        run.rates = mix(run.target)
        print(f"calibration: {run.capacity:,.0f} requests/s of the mix at {CALIBRATION_CLIENTS} clients (CPU, share of one core: gateway "
              f"{run.calibration_cpu:.0%}, upstream {run.calibration_upstream_cpu:.0%}, clients {run.calibration_driver_cpu:.0%}); "
              f"soak at {sum(run.rates.values()):,.0f} requests/s", flush=True)
        await asyncio.sleep(1.0)

        # 2-3. the soak itself
        load.t0 = load.loop.time()
        driver_start = driver_cpu()
        run.started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        sigterm_sent = asyncio.Event()
        stop_launching = asyncio.Event()
        workers = [
            asyncio.create_task(load.open_loop(run.rates, until=stop_launching.is_set), name="open-loop"),
            *(asyncio.create_task(load.keep_open(kind, count), name=kind) for kind, count in KEPT_OPEN.items()),
            asyncio.create_task(sample(run, gateway, upstream, load, sigterm_sent), name="rss"),
        ]
        try:
            # Requests keep coming for a second after the SIGTERM (they should find nothing listening), then stop;
            # the drain below lets every request already sent finish.
            stopper = asyncio.create_task(stop_after_sigterm(sigterm_sent, stop_launching, load))
            await faults(run, load, idp, upstream, gateway, policy_file, sigterm_sent)
            await stopper
        finally:
            stop_launching.set()
            load.stopping = True
        run.soak_driver_cpu = (driver_cpu() - driver_start) / max(1.0, load.clock())
        run.load_average_end = Path("/proc/loadavg").read_text().split()[0]
        run.sigterm["not_finished_at_end"] = await load.drain(timeout=settings.shutdown_grace + 30)
        # The kept-open lanes end with their current connection (the gateway is gone, so at once); whatever
        # still runs after this is cancelled and recorded as a timeout.
        _, running = await asyncio.wait(workers, timeout=15.0)
        for worker in running:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return load
    finally:
        load.stopping = True
        await load.close()
        gateway.stop()
        upstream.stop()
        await idp.close()


async def stop_after_sigterm(sigterm_sent: asyncio.Event, stop_launching: asyncio.Event, load: Load) -> None:
    await sigterm_sent.wait()
    await asyncio.sleep(1.0)
    stop_launching.set()
    load.stopping = True


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def at(load: Load, run: Run, point: str) -> float:
    delay = SCHEDULE[point] * run.seconds - load.clock()
    if delay > 0:
        await asyncio.sleep(delay)
    return load.clock()


async def faults(run: Run, load: Load, idp: SoakIssuer, upstream: Part, gateway: Part, policy_file: Path,
                 sigterm_sent: asyncio.Event) -> None:
    t = run.timeline
    settings = run.settings
    metrics_session = load.sessions["hostile"]
    t.rotation_converge = settings.jwks_cooldown + settings.jwks_cache + 3.0

    # JWKS: refusing connections, then accepting and never answering, then back with one more key.
    now = await at(load, run, "jwks_refusing")
    jwks = Window("jwks_down", now, grace=1.0)
    t.windows.append(jwks)
    await idp.jwks.set("refusing")
    jwks.phases.append((now, "refusing"))
    t.note(now, "JWKS endpoint stops listening (connection refused; the gateway's pooled connections closed)")
    now = await at(load, run, "jwks_hanging")
    await idp.jwks.set("hanging")
    jwks.phases.append((now, "hanging"))
    t.note(now, "JWKS endpoint accepts connections and never answers")
    now = await at(load, run, "jwks_back")
    idp.issuer.keys.append(load.rotation_key)  # a key rotation while it was down
    await idp.jwks.set("up")
    jwks.end = t.key_published = load.clock()
    t.note(jwks.end, f"JWKS endpoint back, now also publishing key {load.rotation_key.kid!r}")

    # Introspection: answering 500, then refusing connections, then back.
    now = await at(load, run, "introspection_failing")
    introspection = Window("introspection_down", now, grace=1.0)
    t.windows.append(introspection)
    await idp.introspection.set("failing")
    t.note(now, "introspection endpoint answers HTTP 500")
    now = await at(load, run, "introspection_refusing")
    await idp.introspection.set("refusing")
    t.note(now, "introspection endpoint stops listening")
    await at(load, run, "introspection_back")
    await idp.introspection.set("up")
    introspection.end = load.clock()
    t.note(introspection.end, "introspection endpoint back")

    # The upstream: SIGKILL with streams open, then started again on the same port.
    now = await at(load, run, "upstream_kill")
    run.streams_at_kill = load.in_flight_by_kind["stream_post"] + load.in_flight_by_kind["stream_get"]
    upstream_window = Window("upstream_down", now, grace=2.0)
    t.windows.append(upstream_window)
    upstream.kill()
    t.note(now, f"upstream killed (SIGKILL) with {run.streams_at_kill} SSE streams open through the gateway")
    now = await at(load, run, "upstream_restart")
    started = time.monotonic()
    upstream.spawn()
    await asyncio.to_thread(upstream.wait_listening)
    run.upstream_restart_s = time.monotonic() - started
    upstream_window.end = load.clock()
    t.note(upstream_window.end, f"upstream started again (listening after {run.upstream_restart_s:.1f}s)")

    # Policies: a syntax error (refused, version 1 stays), then a good edit (picked up).
    now = await at(load, run, "policy_broken")
    before = await scrape_metrics(metrics_session, load.base_url)
    write_atomically(policy_file, POLICIES_BROKEN)
    broken = Window("policy_broken", now, grace=1.0)
    t.windows.append(broken)
    t.note(now, "policy file replaced by one with a syntax error")
    refused_at, after = await wait_for_metric(load, metrics_session, lambda m: m.get('mcp_gateway_policy_reloads_total{result="refused"}', 0)
                                              > before.get('mcp_gateway_policy_reloads_total{result="refused"}', 0), 15.0)
    broken.end = refused_at if refused_at is not None else load.clock()
    run.policy.update(broken_refused_after=None if refused_at is None else refused_at - now,
                      version_before=before.get("mcp_gateway_policy_version"), version_after_broken=after.get("mcp_gateway_policy_version"))
    t.note(broken.end, "broken edit refused" if refused_at is not None else "broken edit NOT seen as refused within 15 s")

    now = await at(load, run, "policy_good")
    write_atomically(policy_file, POLICIES_GOOD)
    t.good_written = now
    good = Window("policy_good", now, grace=1.0)
    t.windows.append(good)
    t.note(now, f"policy file replaced by a good edit that also forbids {LATER_FORBIDDEN_TOOL}")
    old_version = after.get("mcp_gateway_policy_version", 1.0)
    applied_at, after = await wait_for_metric(load, metrics_session, lambda m: m.get("mcp_gateway_policy_version", 0) > old_version, 15.0)
    t.good_applied = applied_at
    good.end = applied_at if applied_at is not None else load.clock()
    run.policy.update(good_applied_after=None if applied_at is None else applied_at - now,
                      version_after_good=after.get("mcp_gateway_policy_version"),
                      reloads_applied=after.get('mcp_gateway_policy_reloads_total{result="applied"}'),
                      reloads_refused=after.get('mcp_gateway_policy_reloads_total{result="refused"}'))
    t.note(good.end, "good edit applied" if applied_at is not None else "good edit NOT applied within 15 s")

    # SIGTERM under load.
    await at(load, run, "sigterm")
    run.metrics_end = await scrape_metrics(metrics_session, load.base_url)
    if not gateway.alive():
        run.gateway_died = f"the gateway had exited (code {gateway.process.returncode}) before the SIGTERM"
        return
    in_flight = dict(+load.in_flight_by_kind)
    t.sigterm = load.clock()
    sent = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    sigterm_sent.set()
    t.note(t.sigterm, f"SIGTERM to the gateway with {sum(in_flight.values())} requests in flight")
    try:
        code = await asyncio.to_thread(gateway.process.wait, settings.shutdown_grace + 20)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: report it, then kill
        code = None
        gateway.process.kill()
    run.sigterm.update(in_flight=in_flight, exit_code=code, exit_after=time.monotonic() - sent)
    t.note(load.clock(), f"gateway exited with {code} after {time.monotonic() - sent:.2f}s")


async def wait_for_metric(load: Load, session: aiohttp.ClientSession, condition, limit: float) -> tuple[float | None, dict]:
    deadline = load.clock() + limit
    metrics: dict[str, float] = {}
    while load.clock() < deadline:
        metrics = await scrape_metrics(session, load.base_url)
        if metrics and condition(metrics):
            return load.clock(), metrics
        await asyncio.sleep(0.2)
    return None, metrics


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy, and its capacity so far (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # up to steal; guest is in user
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS


async def sample(run: Run, gateway: Part, upstream: Part, load: Load, sigterm_sent: asyncio.Event) -> None:
    upstream_pid, upstream_offset, upstream_last = None, 0.0, 0.0
    while not sigterm_sent.is_set():
        if not gateway.alive():
            run.gateway_died = run.gateway_died or f"the gateway exited (code {gateway.process.returncode}) at t={load.clock():.1f}s"
            return
        rss, cpu = gateway.rss_kib(), gateway.cpu_seconds()
        if rss is not None:
            run.rss.append((load.clock(), rss))
        up = upstream.cpu_seconds() if upstream.alive() else None
        if up is not None:
            if upstream.pid != upstream_pid:  # started again: its CPU counts from zero
                upstream_pid, upstream_offset = upstream.pid, upstream_offset + upstream_last
            upstream_last = up
        if cpu is not None:
            busy, capacity = machine_cpu()
            run.cpu.append((load.clock(), cpu, upstream_offset + upstream_last, driver_cpu(), busy, capacity))
        try:
            await asyncio.wait_for(sigterm_sent.wait(), RSS_EVERY)
        except TimeoutError:
            pass


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))]


def cpu_between(samples: list[tuple], start: float, stop: float) -> tuple[float, float]:
    """Shares of one core between two times: the gateway's, and the machine's minus the soak's own processes."""
    inside = [s for s in samples if start - 1.0 <= s[0] <= stop + 1.0]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return float("nan"), float("nan")
    first, last = inside[0], inside[-1]
    span = last[0] - first[0]
    gateway, upstream, driver, busy = (last[i] - first[i] for i in (1, 2, 3, 4))
    return gateway / span, max(0.0, busy - gateway - upstream - driver) / span


def gateway_source(tree: Path) -> str:
    """Which code the gateway ran: the commit, and whether the working tree differed from it."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return str(tree)
    if tree != ROOT:
        return f"{tree} (a copy; this repository is at commit {commit or '?'})"
    return f"commit {commit or '?'}" + (" with uncommitted changes under gateway/" if dirty.strip() else "")


def rss_where(run: Run, warm_point: float, t: Timeline) -> str:
    """Where the growth after warm-up happened: inside the fault windows (and SETTLE_S after each), or outside."""
    samples = [(when, kib) for when, kib in run.rss if when >= warm_point and (t.sigterm is None or when < t.sigterm)]
    during = outside = 0
    for (t0, k0), (t1, k1) in zip(samples, samples[1:]):
        if any(w.touches(t0, t1 + SETTLE_S) for w in t.windows):
            during += k1 - k0
        else:
            outside += k1 - k0
    return (f"Of the change after warm-up, {during / 1024:+.1f} MiB came while a fault was active (or within {SETTLE_S:g} s after it) "
            f"and {outside / 1024:+.1f} MiB outside the faults (where a steady leak would show; growth during faults includes "
            "the backlogs they cause: Python keeps the memory a peak of requests in flight needed, to use again).")


def rss_at(samples: list[tuple[float, int]], when: float, *, before: bool) -> int | None:
    """The last RSS sample at or before ``when`` (``before``), or the first at or after it."""
    if before:
        found = [kib for t, kib in samples if t <= when]
        return found[-1] if found else None
    found = [kib for t, kib in samples if t >= when]
    return found[0] if found else None


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:,.1f}"


def gateway_log_facts(path: Path, wanted_ids: set[str]) -> dict:
    """Tracebacks, error lines by message, and the access lines of the request ids asked about."""
    tracebacks, errors, seen = 0, Counter(), {}
    lines = 0
    with path.open(errors="replace") as log:
        for line in log:
            lines += 1
            if "Traceback (most recent call last)" in line:
                tracebacks += 1
            if '"level": "error"' in line or '"level":"error"' in line or '"ERROR"' in line:
                try:
                    errors[json.loads(line).get("message", line)[:120]] += 1
                except ValueError:
                    errors[line[:120]] += 1
            if wanted_ids and '"request_id"' in line:
                for request_id in wanted_ids:
                    if request_id in line:
                        seen.setdefault(request_id, []).append(line.strip()[:300])
    return {"lines": lines, "tracebacks": tracebacks, "errors": errors, "seen": seen}


def write_report(run: Run, load: Load, output: Path, command: str) -> bool:
    records, t = load.records, run.timeline
    result = classify(records, t)
    names = records.outcome_names
    soak_rows = range(len(records))

    # latency of valid calls (200s), from when each was due: overall and outside every fault window
    overall, outside, lag, queueing = [], [], [], []
    for row in soak_rows:
        kind = KINDS[records.kind[row]]
        if kind.group in ("valid", "hostile"):
            lag.append(records.sent[row] - records.due[row])
            if records.wire[row] == records.wire[row]:
                queueing.append(records.wire[row] - records.sent[row])
        if not kind.latency or names[records.outcome[row]] != "200":
            continue
        start, end = records.sent[row], records.end[row]
        if t.sigterm is not None and end >= t.sigterm:
            continue
        latency = end - records.due[row]
        overall.append(latency)
        if not any(w.touches(start, end + SETTLE_S) for w in t.windows):  # neither in a fault nor just after one
            outside.append(latency)

    open_loop = sum(1 for row in soak_rows if KINDS[records.kind[row]].group in ("valid", "hostile")
                    and (t.sigterm is None or records.sent[row] < t.sigterm))
    soak_span = (t.sigterm or run.seconds)
    achieved = open_loop / soak_span if soak_span else 0.0
    planned = sum(run.rates.values())

    warm_point = SCHEDULE["warm_up_end"] * run.seconds
    warm = [kib for when, kib in run.rss if warm_point - 0.06 * run.seconds <= when <= warm_point] or \
           [kib for when, kib in run.rss if when <= warm_point][-1:]
    end_samples = [kib for when, kib in run.rss if when >= 0.95 * run.seconds and (t.sigterm is None or when < t.sigterm)] or run.rss[-1:]
    end_samples = [s if isinstance(s, int) else s[1] for s in end_samples]
    rss_warm = statistics.median(warm) if warm else float("nan")
    rss_end = statistics.median(end_samples) if end_samples else float("nan")
    growth = rss_end / rss_warm - 1 if warm and end_samples else float("nan")
    cpu_share, other_share = cpu_between(run.cpu, 0.0, soak_span)
    # The 70 % holds only while the machine stays as it was calibrated: count the stretches where other work
    # took clearly more CPU than it did then.
    stretch = soak_span / 20
    busy_stretches = [(i * stretch, (i + 1) * stretch, other) for i in range(20)
                      for _, other in [cpu_between(run.cpu, i * stretch, (i + 1) * stretch)]
                      if other == other and other > run.calibration_other_cpu + OTHER_WORK_MARGIN]
    steady = other_share == other_share and len(busy_stretches) <= 2

    lost_ids = {records.request_ids.get(row, "") for row in result.lost} - {""}
    log = gateway_log_facts(run.work / "gateway.log", lost_ids)
    sig = run.sigterm
    exit_ok = sig.get("exit_code") == 0 and (sig.get("exit_after") or 99) <= run.settings.shutdown_grace + 2
    policy_ok = (run.policy.get("broken_refused_after") is not None and run.policy.get("version_after_broken") == run.policy.get("version_before")
                 and run.policy.get("good_applied_after") is not None)

    criteria = [
        ("Unexpected outcomes: 0", not result.unexpected and not run.gateway_died,
         f"{len(result.unexpected)} of {len(records):,} requests" + (f"; {run.gateway_died}" if run.gateway_died else "")),
        ("Lost in-flight requests at SIGTERM: 0", not result.lost and t.sigterm is not None, f"{len(result.lost)} lost"),
        (f"SIGTERM: exit code 0 within shutdown_grace ({run.settings.shutdown_grace:g}s) + 2 s", exit_ok,
         f"exit code {sig.get('exit_code')}, after {sig.get('exit_after', float('nan')):.2f}s"),
        (f"RSS growth from warm-up to end ≤ {RSS_GROWTH_LIMIT:.0%}", growth == growth and growth <= RSS_GROWTH_LIMIT,
         f"{rss_warm / 1024:.1f} MiB → {rss_end / 1024:.1f} MiB ({growth:+.1%})"),
        ("Broken policy edit refused (version kept), good edit applied", policy_ok,
         f"refused after {_s(run.policy.get('broken_refused_after'))}, applied after {_s(run.policy.get('good_applied_after'))}; "
         f"version {run.policy.get('version_before')} → {run.policy.get('version_after_broken')} → {run.policy.get('version_after_good')}"),
        ("No traceback in the gateway log (R5)", log["tracebacks"] == 0, f"{log['tracebacks']} traceback(s) in {log['lines']:,} lines"),
        ("Load held: open-loop rate ≥ 90 % of the target, nothing skipped by the generator",
         achieved >= 0.9 * planned and not load.skipped, f"{achieved:,.0f} of {planned:,.0f} requests/s; skipped {sum(load.skipped.values())}"),
        (f"Machine as calibrated: other work's CPU more than {OTHER_WORK_MARGIN:.0%} of a core above the calibration's in at most 2 of 20 stretches",
         steady, f"{run.calibration_other_cpu:.0%} during calibration, {other_share:.0%} on average during the soak; "
         f"{len(busy_stretches)} stretch(es) above " + (", ".join(f"{a:.0f}–{b:.0f} s ({o:.0%})" for a, b, o in busy_stretches[:6]) or "-")),
    ]
    passed = all(ok for _, ok, _ in criteria)
    verdict = ""
    if not steady:
        verdict = (f" This run does not measure the gateway fairly: in {len(busy_stretches)} of 20 stretches other work on the machine "
                   f"took more than {run.calibration_other_cpu + OTHER_WORK_MARGIN:.0%} of a core (it took {run.calibration_other_cpu:.0%} "
                   f"while the capacity was measured), so the load there was more than {LOAD_FRACTION:.0%} of what the gateway could get. "
                   "Read the over-time table for the stretches that were not disturbed; run it again on a quieter machine.")

    out: list[str] = [
        "# Reliability: the soak (R7)", "",
        f"Written by `make soak` (`bench/soak.py`). {'**PASS**' if passed else '**FAIL**'}: "
        f"{sum(ok for _, ok, _ in criteria)} of {len(criteria)} criteria met.{verdict}", "",
        f"- date: {run.started_at}; soak `SOAK_S={run.seconds:g}` s (plus start-up, {CALIBRATION_S:g} s calibration and shutdown)",
        f"- machine: {machine()}, {platform.system()} {platform.release()}; every part shares it with the load generator",
        f"- versions: Python {platform.python_version()}, aiohttp {version('aiohttp')}, cedarpy {version('cedarpy')}, "
        f"mcp-auth-gateway {version('mcp-auth-gateway')} from {gateway_source(run.gateway_tree)}",
        f"- command: `{command}`",
        f"- capacity: {run.capacity:,.0f} requests/s of the mix ({calibration_mix()}), closed loop with {CALIBRATION_CLIENTS} clients for {CALIBRATION_S:g} s "
        f"({', '.join(f'{v:,.0f}' for v in run.calibration_windows)} in its {CALIBRATION_WINDOWS} pieces); "
        f"CPU meanwhile, as shares of one core: gateway {run.calibration_cpu:.0%}, upstream {run.calibration_upstream_cpu:.0%}, "
        f"the soak's clients {run.calibration_driver_cpu:.0%}, other work {run.calibration_other_cpu:.0%} (two cores in all, shared with whatever else runs here: load average "
        f"{run.load_average_end} at the end)",
        f"- load: open loop at {LOAD_FRACTION:.0%} of that: {planned:,.0f} requests/s planned, {achieved:,.0f}/s sent "
        f"(client lag p99 {ms(percentile(lag, 99))} ms, wait for a pooled connection p99 {ms(percentile(queueing, 99))} ms, at most {load.max_in_flight} in flight); CPU over the soak: gateway "
        f"{cpu_share:.0%} of one core ({cpu_share / achieved * 1e6 if achieved else float('nan'):,.0f} µs per request of the mix, against "
        f"{run.calibration_cpu / run.capacity * 1e6 if run.capacity else float('nan'):,.0f} µs per request in the calibration), "
        f"the soak's clients {run.soak_driver_cpu:.0%}, other work on the machine {other_share:.0%}; plus {sum(KEPT_OPEN.values())} long-lived connections kept open (streams and slow clients)",
        f"- gateway: `python -m gateway serve`, {run.settings.log_level} JSON logs and audit events to files; "
        f"header_timeout {run.settings.header_timeout:g}s, body_timeout {run.settings.body_timeout:g}s, "
        f"keepalive_timeout {run.settings.keepalive_timeout:g}s, shutdown_grace {run.settings.shutdown_grace:g}s, "
        f"max_body_bytes {run.settings.max_body_bytes}, JWKS cache {run.settings.jwks_cache:g}s and cool-down {run.settings.jwks_cooldown:g}s "
        f"(so keys are refetched while the JWKS is down), introspection cache {run.settings.introspection_cache_ttl:g}s; other limits at their defaults",
        "",
        "## Criteria", "", "| criterion | result | measured |", "|---|---|---|",
    ]
    out += [f"| {name} | {'PASS' if ok else 'FAIL'} | {measured} |" for name, ok, measured in criteria]

    slow_slices = []
    width = soak_span / 20
    for index in range(20):
        start, stop = index * width, (index + 1) * width
        values = [records.end[r] - records.due[r] for r in soak_rows if start <= records.due[r] < stop
                  and KINDS[records.kind[r]].latency and names[records.outcome[r]] == "200"]
        if values and percentile(values, 99) > 1.0:
            slow_slices.append((start, stop, percentile(values, 99), cpu_between(run.cpu, start, stop)))
    out += ["", "## The machine", "",
            f"Other work on this machine (not the soak's processes) used {other_share:.0%} of one core on average over the soak; "
            f"the gateway used {cpu_share:.0%}. Two cores in all."]
    if slow_slices:
        out.append("Stretches where valid calls had p99 above 1 s, with the CPU at the time (gateway / other work): "
                   + "; ".join(f"{a:.0f}–{b:.0f} s: p99 {p99:.1f} s, {g:.0%} / {o:.0%}" for a, b, p99, (g, o) in slow_slices) + ".")
    out += ["", "## Latency of valid calls (`200`), from when each request was due", "",
            "| | calls | p50 ms | p99 ms | p99.9 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for label, values in (("whole soak", overall), (f"outside fault windows (and {SETTLE_S:g} s after each)", outside)):
        out.append(f"| {label} | {len(values):,} | {ms(percentile(values, 50))} | {ms(percentile(values, 99))} | "
                   f"{ms(percentile(values, 99.9))} | {ms(max(values) if values else float('nan'))} |")
    out += ["", "Over time: valid calls by when they were due; client lag is how late the clients sent (their own delay); CPU in",
            "shares of one core: the gateway's, and everything on the machine that is not part of the soak (other work shares",
            "these two cores).", "",
            "| t (s) | valid calls | p50 ms | p99 ms | max ms | client lag p99 ms | gateway CPU | other CPU | faults |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    slices = 20
    width = soak_span / slices
    buckets: list[list[float]] = [[] for _ in range(slices)]
    lags: list[list[float]] = [[] for _ in range(slices)]
    for row in soak_rows:
        kind = KINDS[records.kind[row]]
        index = int(records.due[row] // width) if width else 0
        if not 0 <= index < slices:
            continue
        if kind.group in ("valid", "hostile"):
            lags[index].append(records.sent[row] - records.due[row])
        if kind.latency and names[records.outcome[row]] == "200":
            buckets[index].append(records.end[row] - records.due[row])
    for index in range(slices):
        start, stop = index * width, (index + 1) * width
        active = ", ".join(sorted({w.kind for w in t.windows if w.touches(start, stop)})) or "-"
        values = buckets[index]
        gateway_cpu, other_cpu = cpu_between(run.cpu, start, stop)
        out.append(f"| {start:.0f}–{stop:.0f} | {len(values):,} | {ms(percentile(values, 50))} | {ms(percentile(values, 99))} | "
                   f"{ms(max(values) if values else float('nan'))} | {ms(percentile(lags[index], 99))} | {gateway_cpu:.0%} | {other_cpu:.0%} | {active} |")
    if len(load.relay_delays):
        delays = list(load.relay_delays)
        out += ["", f"SSE events relayed (upstream write → client read): {len(delays):,} events, p50 {ms(percentile(delays, 50))} ms, "
                f"p99 {ms(percentile(delays, 99))} ms, max {ms(max(delays))} ms."]

    out += ["", "## Requests by kind and outcome", "",
            "Outcomes are HTTP statuses, or what the client saw without one (`conn_refused`, `disconnected`), or a check of the",
            "answer (`list_v1`: 499 tools; `list_v2`: 498; `stream_truncated`: a stream that ended without its result;",
            "`cut_in_time`: the gateway closed the slow connection at its timeout).", "",
            "| kind | what | requests | outcomes | unexpected |", "|---|---|---:|---|---:|"]
    for kind in KINDS:
        counts = result.by_kind.get(kind.name, Counter())
        bad = sum(result.unexpected_by_kind.get(kind.name, Counter()).values())
        outcomes = ", ".join(f"{name} ×{n:,}" for name, n in counts.most_common())
        out.append(f"| {kind.name} | {kind.what} | {sum(counts.values()):,} | {outcomes or '-'} | {bad} |")

    out += ["", "## Unexpected outcomes", ""]
    if not result.unexpected:
        out.append("None.")
    else:
        out.append(f"{len(result.unexpected)} requests; by kind: " + "; ".join(
            f"{k}: " + ", ".join(f"{o} ×{n}" for o, n in c.most_common()) for k, c in result.unexpected_by_kind.items()) + ".")
        out += ["", "| t (s) | kind | outcome | faults touching | detail | request id |", "|---:|---|---|---|---|---|"]
        shown = Counter()
        for row in result.unexpected:
            kind, outcome = KINDS[records.kind[row]].name, names[records.outcome[row]]
            if shown[(kind, outcome)] >= 3:
                continue
            shown[(kind, outcome)] += 1
            touching = ", ".join(sorted(t.situation(records.sent[row], records.end[row], records.wire[row])[0])) or "-"
            detail = next((d for s, d, _ in records.details.get((records.kind[row], outcome), []) if abs(s - records.sent[row]) < 1e-6), "")
            out.append(f"| {records.sent[row]:.2f} | {kind} | {outcome} | {touching} | {_cell(detail)} | {records.request_ids.get(row, '')} |")

    out += ["", "## Faults, and what clients saw", "", "| t (s) | event |", "|---:|---|"]
    out += [f"| {when:.1f} | {text} |" for when, text in sorted(t.events)]
    for window in t.windows:
        seen: dict[str, Counter] = {}
        for row in soak_rows:
            if window.touches(records.sent[row], records.end[row]) and (t.sigterm is None or records.sent[row] < t.sigterm):
                seen.setdefault(KINDS[records.kind[row]].name, Counter())[names[records.outcome[row]]] += 1
        end = f"{window.end:.1f}" if window.end is not None else "?"
        out += ["", f"### {window.kind}: {window.start:.1f}–{end} s (+{window.grace:g} s recovery)", ""]
        out += fault_story(window, seen, load, run)
        before = rss_at(run.rss, window.start - 0.01, before=True)
        after = rss_at(run.rss, (window.end or window.start) + SETTLE_S, before=False)
        if before and after:
            out.append(f"Gateway RSS {before / 1024:.1f} MiB just before, {after / 1024:.1f} MiB {SETTLE_S:g} s after ({(after - before) / 1024:+.1f} MiB).")
        interesting = [k for k, c in seen.items() if set(c) - KINDS[KIND_INDEX[k]].normal or k in FOCUS.get(window.kind, ())]
        if interesting:
            out += ["", "| kind | outcomes of requests overlapping the window |", "|---|---|"]
            out += [f"| {k} | {', '.join(f'{o} ×{n:,}' for o, n in seen[k].most_common())} |" for k in interesting]

    out += ["", "## Slow clients", "", "Time until the gateway closed the connection (for slow_body: until its answer).", "",
            "| kind | connections | outcomes | seconds: p50 / max |",
            "|---|---:|---|---|"]
    for kind in (k for k in KINDS if k.group == "slow"):
        rows = [r for r in soak_rows if KINDS[records.kind[r]].name == kind.name]
        spans = [records.end[r] - records.sent[r] for r in rows]
        counts = result.by_kind.get(kind.name, Counter())
        out.append(f"| {kind.name} | {len(rows):,} | {', '.join(f'{o} ×{n}' for o, n in counts.most_common())} | "
                   f"{percentile(spans, 50):.2f} / {max(spans) if spans else float('nan'):.2f} |")

    out += ["", "## Memory (gateway RSS from /proc, every 2 s)", "",
            f"After warm-up (median of samples up to t={warm_point:.0f}s): {rss_warm / 1024:.1f} MiB; at the end (median of the last 5 % before SIGTERM): "
            f"{rss_end / 1024:.1f} MiB; growth {growth:+.1%}; highest sample {max((k for _, k in run.rss), default=0) / 1024:.1f} MiB.",
            rss_where(run, warm_point, t)]
    out += ["", "| t (s) | RSS MiB |", "|---:|---:|"]
    step = max(1, len(run.rss) // 12)
    out += [f"| {when:.0f} | {kib / 1024:.1f} |" for when, kib in run.rss[::step]]

    out += ["", "## SIGTERM under load", ""]
    if t.sigterm is None:
        out.append(f"Not reached: {run.gateway_died or 'the soak stopped early'}.")
    else:
        def written_before(r: int) -> bool:
            return records.wire[r] == records.wire[r] and records.wire[r] < t.sigterm

        across = [r for r in soak_rows if written_before(r) and records.end[r] >= t.sigterm]
        queued = [r for r in soak_rows if records.sent[r] < t.sigterm <= records.end[r] and not written_before(r)]
        outcome_counts = Counter(names[records.outcome[r]] for r in across)
        out += [f"- sent at t={t.sigterm:.1f}s with {sum(sig.get('in_flight', {}).values())} requests started by the clients and not yet answered: "
                + ", ".join(f"{k} ×{n}" for k, n in sorted(sig.get("in_flight", {}).items())),
                f"- of those, written to the gateway before the signal (in flight): {len(across)}; outcomes "
                + (", ".join(f"{o} ×{n}" for o, n in outcome_counts.most_common()) or "-"),
                f"- still queued in the clients (no connection free yet) when the signal came: {len(queued)}; outcomes "
                + (", ".join(f"{o} ×{n:,}" for o, n in Counter(names[records.outcome[r]] for r in queued).most_common()) or "-"),
                f"- lost (written before the signal, no definite answer: {', '.join(sorted(LOST))}): {len(result.lost)}"
                + (f"; of those, {sum(1 for r in result.lost if records.request_ids.get(r, '') not in log['seen'])} never reached the gateway's"
                   " application (no log line with their request id: still unread in the connection when it was closed)" if result.lost else ""),
                f"- the process exited with code {sig.get('exit_code')} after {sig.get('exit_after', float('nan')):.2f}s "
                f"(shutdown_grace {run.settings.shutdown_grace:g}s); requests still unanswered when the soak ended: {sig.get('not_finished_at_end')}"]
        after = Counter(names[records.outcome[r]] for r in soak_rows if records.sent[r] >= t.sigterm)
        out.append("- requests started after the signal: " + (", ".join(f"{o} ×{n:,}" for o, n in after.most_common()) or "none"))
        for row in result.lost[:10]:
            request_id = records.request_ids.get(row, "")
            lines = log["seen"].get(request_id, [])
            out.append(f"  - lost: {KINDS[records.kind[row]].name} written {t.sigterm - records.wire[row]:.3f}s before the signal, "
                       f"{names[records.outcome[row]]}; gateway log for {request_id}: {_cell(' / '.join(lines)) if lines else 'no line (never read)'}")

    out += ["", "## Gateway log", "", f"{log['lines']:,} lines, {log['tracebacks']} traceback(s). Error lines by message:", ""]
    out += [f"- {n:,} × {_cell(message)}" for message, n in log["errors"].most_common(10)] or ["- none"]
    refusals = {k: v for k, v in run.metrics_end.items() if k.startswith("mcp_gateway_refusals_total")}
    if refusals:
        out += ["", "Refusals counted by the gateway (`mcp_gateway_refusals_total`, at the end, before SIGTERM):", ""]
        out += [f"- `{k.removeprefix('mcp_gateway_refusals_total')}` {v:,.0f}" for k, v in sorted(refusals.items(), key=lambda kv: -kv[1])[:25]]
    for key in ("mcp_gateway_jwks_fetches_total", "mcp_gateway_introspection_calls_total", "mcp_gateway_introspection_cache_hits_total"):
        found = {k: v for k, v in run.metrics_end.items() if k.startswith(key)}
        for k, v in found.items():
            out.append(f"- `{k}` {v:,.0f}")

    out += ["", "## How it ran", "",
            "- Parts, all on 127.0.0.1 and all stopped by the soak: the identity provider (`tests/factories.py` `TestIssuer`; metadata,",
            "  JWKS and introspection each on its own listener), the upstream (`bench/soak_upstream.py`, its own process) and the",
            "  gateway (`python -m gateway serve --config FILE`). The gateway finds the JWKS and the introspection endpoint in the",
            "  issuer's metadata.",
            "- Open loop: every kind of request is sent at its own fixed rate whatever earlier requests are doing; latency is",
            "  counted from when a request was due, so a stalled gateway cannot hide its stall by slowing the clients down.",
            "- A request's outcome is judged against the faults that overlapped it (each fault's window plus a short recovery).",
            "  A request that ran entirely inside a fault must show that fault's outcome where there is only one right answer",
            "  (an opaque token nobody could introspect: 503).",
            f"- Fault schedule, as fractions of SOAK_S: {', '.join(f'{k} {v:g}' for k, v in SCHEDULE.items())}.",
            f"- Rates (requests/s): {', '.join(f'{k} {v:,.0f}' for k, v in sorted(run.rates.items(), key=lambda kv: -kv[1]))}.",
            f"- Kept open: {', '.join(f'{k} ×{v}' for k, v in KEPT_OPEN.items())}.",
            "", "Policies at the start:", "", "```cedar", POLICIES_START.rstrip(), "```", "",
            "The broken edit (refused):", "", "```cedar", POLICIES_BROKEN.rstrip(), "```", "",
            "The good edit (applied):", "", "```cedar", POLICIES_GOOD.rstrip(), "```", ""]
    output.write_text("\n".join(out))
    return passed


FOCUS = {  # kinds always shown for a fault, whatever they saw
    "jwks_down": ("call", "call_fresh_jwt", "call_rotated_key"),
    "introspection_down": ("call_opaque", "call_opaque_new", "garbage_token", "call"),
    "upstream_down": ("call", "list", "stream_post", "stream_get", "forbidden_tool"),
    "policy_broken": ("forbidden_tool", "call_later_forbidden", "list"),
    "policy_good": ("forbidden_tool", "call_later_forbidden", "list"),
}


def fault_story(window: Window, seen: dict[str, Counter], load: Load, run: Run) -> list[str]:
    """One or two sentences of what this fault proved, from the records."""
    records, names, t = load.records, load.records.outcome_names, run.timeline
    lines = []
    if window.kind == "jwks_down":
        rows = [r for r in range(len(records)) if KINDS[records.kind[r]].name == "call_fresh_jwt" and window.touches(records.sent[r], records.end[r])]
        ok = [r for r in rows if names[records.outcome[r]] == "200"]
        lines.append(f"JWTs minted during the outage, signed by a cached key: {len(ok)} of {len(rows)} got 200.")
        bounds = [*window.phases, (window.end or float("inf"), "")]
        for (start, phase), (stop, _) in zip(bounds, bounds[1:]):
            fresh = [records.end[r] - records.due[r] for r in ok if start <= records.due[r] < stop]
            cached = [records.end[r] - records.due[r] for r in range(len(records)) if KINDS[records.kind[r]].name == "call"
                      and start <= records.due[r] < stop and names[records.outcome[r]] == "200"]
            lines.append(f"While the JWKS was {phase} ({start:.1f}–{stop:.1f} s): fresh JWTs p50 {ms(percentile(fresh, 50))} ms, "
                         f"max {ms(max(fresh) if fresh else float('nan'))} ms ({len(fresh)} calls); cached tokens at the same time "
                         f"p50 {ms(percentile(cached, 50))} ms, p99 {ms(percentile(cached, 99))} ms.")
        first = min((records.end[r] for r in range(len(records)) if KINDS[records.kind[r]].name == "call_rotated_key"
                     and names[records.outcome[r]] == "200"), default=None)
        if first is not None and t.key_published is not None:
            lines.append(f"The rotated key was first accepted (answer received) {first - t.key_published:.1f} s after the JWKS came back.")
        else:
            lines.append("The rotated key was never accepted.")
    elif window.kind == "introspection_down":
        cached = seen.get("call_opaque", Counter())
        fresh = seen.get("call_opaque_new", Counter())
        lines.append(f"Opaque tokens already cached: {cached.get('200', 0)} × 200, {cached.get('503', 0)} × 503; never seen: "
                     f"{fresh.get('503', 0)} × 503, {fresh.get('200', 0)} × 200 (only near the edges), {sum(fresh.values()) - fresh.get('503', 0) - fresh.get('200', 0)} other.")
    elif window.kind == "upstream_down":
        streams = seen.get("stream_post", Counter()) + seen.get("stream_get", Counter())
        lines.append(f"{run.streams_at_kill} SSE streams were open at the kill; streams overlapping the outage: "
                     + ", ".join(f"{o} ×{n}" for o, n in streams.most_common()) + ".")
        end = window.end or 0
        first = min((records.sent[r] for r in range(len(records)) if KINDS[records.kind[r]].name == "call" and records.sent[r] >= end
                     and names[records.outcome[r]] == "200"), default=None)
        if first is not None:
            lines.append(f"First 200 for a call sent after the restart: {first - end:.2f} s after the upstream listened again.")
    elif window.kind == "policy_broken":
        lines.append(f"Refused after {_s(run.policy.get('broken_refused_after'))}; policy version {run.policy.get('version_before')} stayed "
                     f"({run.policy.get('version_after_broken')}); {FORBIDDEN_TOOL} stayed forbidden: {dict(seen.get('forbidden_tool', {}))}.")
    elif window.kind == "policy_good":
        lines.append(f"Applied after {_s(run.policy.get('good_applied_after'))} (version {run.policy.get('version_after_good')}); "
                     f"{LATER_FORBIDDEN_TOOL} around the change: {dict(seen.get('call_later_forbidden', {}))}.")
    return lines


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


def calibration_mix() -> str:
    what = {"call": "small `tools/call`", "call_opaque": "opaque-token calls", "list": "500-tool `tools/list`"}
    return ", ".join(f"{share} % {what[kind]}" for kind, share in sorted(CALIBRATION_MIX, key=lambda item: -item[1]))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def write_calibration_failure(run: Run, failure: str, output: Path, command: str) -> None:
    """No soak without a capacity: say what happened, with the gateway's own words."""
    log = run.work / "gateway.log"
    facts = gateway_log_facts(log, set()) if log.exists() else {"lines": 0, "tracebacks": 0, "errors": Counter()}
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
    lines = [
        "# Reliability: the soak (R7)", "",
        "Written by `make soak` (`bench/soak.py`). **FAIL**: the soak did not start, because the gateway stopped answering",
        "during calibration.", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `SOAK_S={run.seconds:g}`; command: `{command}`",
        f"- machine: {machine()}, {platform.system()} {platform.release()}",
        f"- gateway: mcp-auth-gateway {version('mcp-auth-gateway')} from {gateway_source(run.gateway_tree)}",
        f"- calibration: {failure}",
        f"- gateway log: {facts['lines']:,} lines, {facts['tracebacks']} traceback(s); error lines: "
        + ("; ".join(f"{n} × {_cell(m)}" for m, n in facts["errors"].most_common(5)) or "none"),
        "", "The last lines of the gateway's log:", "", "```", *(_cell(line) for line in tail), "```", "",
        "| criterion | result | measured |", "|---|---|---|",
        f"| The gateway answers the mix under load (calibration) | FAIL | {failure} |", "",
    ]
    output.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", "600")))
    parser.add_argument("--output", type=Path, default=ROOT / "RELIABILITY.md")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, configuration) even when the soak passes")
    parser.add_argument("--gateway-tree", type=Path, default=ROOT, metavar="DIR",
                        help="run the gateway package found in DIR (another checkout, e.g. `git archive HEAD | tar -x -C DIR`); "
                        "default: this repository")
    args = parser.parse_args()
    if args.seconds < 30:
        raise SystemExit("SOAK_S must be at least 30 (the fault windows are fractions of it)")
    work = Path(tempfile.mkdtemp(prefix="mcp-soak-"))
    run = Run(seconds=args.seconds, settings=GatewaySettings(), work=work, gateway_tree=args.gateway_tree.resolve())
    command = f"make soak SOAK_S={args.seconds:g}"
    if run.gateway_tree != ROOT:
        command = f"SOAK_S={args.seconds:g} python bench/soak.py --gateway-tree {args.gateway_tree}"
    passed = False
    try:
        try:
            load = asyncio.run(soak(run))
        except CalibrationFailed as failure:
            write_calibration_failure(run, str(failure), args.output, command)
            print(f"calibration failed: {failure}\nwrote {args.output}")
            return 1
        passed = write_report(run, load, args.output, command)
        print(args.output.read_text().split("## Latency", 1)[0])
        print(f"wrote {args.output}")
    finally:
        if passed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and configuration kept in {work}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
