"""``make bench``: the gateway against the upstream directly, nginx and a plain aiohttp proxy, in one run (P6).

    python bench/run.py [--quick] [--seconds 5] [--repetitions 3] [--output BENCHMARKS.md]

Starts on 127.0.0.1: the benchmark upstream (bench/upstream.py), nginx (Debian package, plain
``proxy_pass`` with upstream keep-alive; bench/nginx.py), a plain aiohttp proxy (bench/plain_proxy.py),
a static JWKS, and the gateway (``mcp-auth-gateway serve``, default log level, audit on) with Cedar
policies. Then, all in this one run:

- drives every target with ``wrk`` (targets interleaved in every repetition; the median of each figure)
  and reads the CPU the target process (and its children) and the upstream used from /proc, per request;
- the same at one connection (added latency);
- with ``server.workers`` 1 and 2, when the configuration has it;
- 1,000 open SSE streams through the gateway (bench/sse.py): its memory and each event's delay;
- in-process: cold list filtering at 50, 500 and 5,000 tools, and the costs of the request path's steps.

Writes BENCHMARKS.md. Benchmarks are not tests: nothing here passes or fails on a number. ``--quick``
(or ``BENCH_QUICK=1``): one short repetition and fewer streams, for working on this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from nginx import nginx_binary, nginx_command, nginx_version  # noqa: E402
from procstat import CLOCK_TICK_S, cpu_ticks, descendants, process_count, start_time  # noqa: E402

POLICIES = """\
@id("everyone-may-list")
permit (principal, action == Action::"tools/list", resource);

@id("everyone-may-call-tools")
permit (principal, action == Action::"tools/call", resource);

@id("nine-hundreds-are-for-admins")
forbid (principal, action == Action::"tools/call", resource)
when { resource has restricted && resource.restricted }
unless { principal in Group::"admins" };

@id("no-prod-writes")
forbid (principal, action == Action::"tools/call", resource == Tool::"tool_1")
when { context.arguments has database && context.arguments.database == "prod" };
"""

CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "tool_0", "arguments": {"text": "hello"}}}
DISTINCT_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "tool_0", "arguments": {"text": "hello __N__"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}

DIRECT, NGINX, PLAIN, GATEWAY = "upstream directly", "nginx", "plain aiohttp proxy", "mcp-auth-gateway"
SSE_PRINCIPALS = 20  # limits.per_principal.concurrent is 64 by default: 1,000 streams need 16 or more
COLD_SIZES = (50, 500, 5000)
BUDGET_P2 = {500: 3.0, 5000: 25.0}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    body: dict
    connections: int


SCENARIOS = (
    Scenario("call", "A small `tools/call`, the same call repeated (cached token, cached decision: P1)", CALL, 16),
    Scenario("distinct", "A small `tools/call` with different arguments every time (no decision is reused)", DISTINCT_CALL, 16),
    Scenario("list", "`tools/list` of 500 tools (the gateway filters it, Z4; the same list bytes every time)", LIST, 16),
    Scenario("one", "One connection: the repeated `tools/call` at `wrk -c1` (added latency, P3)", CALL, 1),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a benchmark process exited early ({' '.join(map(str, process.args))});"
                             " BENCH_GATEWAY_LOG=FILE keeps the gateway's stderr")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listened on {port}")


class StaticJwks:
    """The issuer's key set, served by the standard library on a thread: it is fetched once per run."""

    def __init__(self, document: dict):
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server interface
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=3600")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------------------------------------------
# wrk and /proc
# ---------------------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int  # non-2xx answers and socket errors
    target_us: float  # CPU of the target process tree per completed request
    upstream_us: float  # CPU of the upstream per completed request, during the same wrk run
    busy: float = 0.0  # requests/s × mean latency: how many of the connections had a request being answered
    connections: int = 0


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    pid: int


def write_wrk_script(path: Path, body: dict, headers: dict[str, str]) -> None:
    """``body`` may contain the string "__N__", replaced by a per-request counter (distinct requests)."""
    text = json.dumps(body)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(text)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if "__N__" in text:
        prefix, suffix = text.split("__N__", 1)
        lines += ["counter = 0", "request = function()", "  counter = counter + 1",
                  f"  return wrk.format(nil, nil, nil, {json.dumps(prefix)} .. counter .. {json.dumps(suffix)})", "end"]
    path.write_text("\n".join(lines) + "\n")


def run_wrk(target: Target, body: dict, *, seconds: int, connections: int, upstream_pid: int, workdir: Path) -> Sample:
    script = workdir / "request.lua"
    write_wrk_script(script, body, target.headers)
    before_target, before_upstream = cpu_ticks(target.pid), cpu_ticks(upstream_pid)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "--latency", "-s", str(script), target.url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    after_target, after_upstream = cpu_ticks(target.pid), cpu_ticks(upstream_pid)
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        failed += sum(int(n) for n in socket_errors.groups())
    if failed:
        print(f"  warning: {target.name}: {failed} failed requests\n{output}", file=sys.stderr)
    elif os.environ.get("BENCH_VERBOSE"):
        print(f"  {target.name}, wrk -c{connections}:\n{output}", file=sys.stderr)
    per_request = CLOCK_TICK_S * 1e6 / max(requests, 1)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    # Little's law: a closed loop of c connections keeps about c requests in flight. Far fewer means some
    # requests hung (answered late or never: wrk counts neither in its latency), so the figures are unfair.
    busy = rps * _ms(re.search(r"^\s+Latency\s+(\S+)", output, re.M).group(1)) / 1000
    if busy < connections / 2:
        print(f"  warning: {target.name}: only about {busy:.1f} of {connections} connections were being answered"
              " (requests hang in the target)", file=sys.stderr)
    return Sample(
        rps=rps,
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1)),
        requests=requests,
        failed=failed,
        target_us=(after_target - before_target) * per_request,
        upstream_us=(after_upstream - before_upstream) * per_request,
        busy=busy,
        connections=connections,
    )


def median_sample(samples: list[Sample]) -> Sample:
    """The median of each figure on its own (with 3 repetitions: the middle value of each)."""
    def med(name: str) -> float:
        return statistics.median(getattr(s, name) for s in samples)

    return Sample(rps=med("rps"), p50_ms=med("p50_ms"), p99_ms=med("p99_ms"), requests=int(med("requests")),
                  failed=sum(s.failed for s in samples), target_us=med("target_us"), upstream_us=med("upstream_us"),
                  busy=med("busy"), connections=samples[0].connections)


def measure_targets(targets: list[Target], body: dict, *, connections: int, seconds: int, repetitions: int,
                    upstream_pid: int, workdir: Path, label: str) -> tuple[dict[str, Sample], dict[str, list[Sample]]]:
    for target in targets:  # warm-up: connections, caches
        run_wrk(target, body, seconds=1, connections=connections, upstream_pid=upstream_pid, workdir=workdir)
    samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for _ in range(repetitions):
        for target in targets:  # interleaved: every repetition sees every target under the same conditions
            samples[target.name].append(run_wrk(target, body, seconds=seconds, connections=connections,
                                                upstream_pid=upstream_pid, workdir=workdir))
    medians = {name: median_sample(runs) for name, runs in samples.items()}
    for name, m in medians.items():
        print(f"{label:8} {name:24} cpu {m.target_us:7.1f} µs/req (upstream {m.upstream_us:5.1f})  {m.rps:8,.0f} req/s  "
              f"p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  (cpu runs: {', '.join(f'{s.target_us:.1f}' for s in samples[name])})",
              flush=True)
    return medians, samples


# ---------------------------------------------------------------------------------------------------
# In-process: cold lists and the request path's steps
# ---------------------------------------------------------------------------------------------------

def tools_body(count: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": f"tool_{i}", "description": "A benchmark tool.", "inputSchema": {"type": "object"}} for i in range(count)]}}).encode()


class InProcess:
    """The gateway's own parts, built from the bench configuration, for measuring single steps."""

    def __init__(self, config_path: Path, key, issuer: str, audience: str):
        from gateway.auth.jwt import IssuerRules, parse_jwks
        from gateway.config import load_config

        self.config = load_config(config_path)
        self.key, self.issuer, self.audience = key, issuer, audience
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid="bench", alg="RS256", use="sig")
        self.signing_key = parse_jwks({"keys": [jwk]}, self.config.auth.issuers[0].algorithms).select("bench", "RS256")
        self.rules = IssuerRules.build(self.config.auth.issuers[0], self.config.server.public_url, 0)

    def principal(self, subject: str):
        """A verified Principal, made from a token the way the gateway makes one (its JWT path)."""
        from gateway.auth.jwt import verify_jwt

        token = mint(self.key, self.issuer, self.audience, subject)
        return verify_jwt(token, self.signing_key, self.rules, time.time()), token


def cold_list_costs(parts: InProcess, runs: dict[int, int]) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """CPU and wall ms for a fresh Authorizer (empty caches) to filter a tools/list of N tools for a principal
    it has not seen, built the way the endpoint builds its list filter (gateway/forwarding.py). CPU is this
    process's (every thread), so other work on the machine inflates the wall time but hardly the CPU."""
    from gateway.authz.cedar import Authorizer, PolicyStore
    from gateway.mcp.listing import ListFilter

    config = parts.config
    store = PolicyStore(config.authorization)
    # One list filtered first and thrown away: "cold" is about the gateway's caches, not Python's first call.
    warm_up = Authorizer(store, config.authorization, server_name="bench")
    warm_principal = parts.principal("bench-cold-warm-up")[0]
    ListFilter(lambda scope: warm_up.item_check(warm_principal, scope), strict=True,
               scope=lambda: warm_up.listing_scope(warm_principal)).filter_json_body(tools_body(50))
    results: dict[int, list[float]] = {}
    walls: dict[int, list[float]] = {}
    for size, count in runs.items():
        body = tools_body(size)
        results[size], walls[size] = [], []
        for run in range(count):
            principal = parts.principal(f"bench-cold-{size}-{run}")[0]
            authorizer = Authorizer(store, config.authorization, server_name="bench")
            list_filter = ListFilter(
                lambda scope, a=authorizer, p=principal: a.item_check(p, scope),
                strict=True,
                scope=lambda a=authorizer, p=principal: a.listing_scope(p),
                memo=authorizer.filtered_lists,
                observe_tools=authorizer.catalogue.learn,
            )
            cpu, wall = time.process_time(), time.perf_counter()
            list_filter.filter_json_body(body)
            results[size].append((time.process_time() - cpu) * 1000)
            walls[size].append((time.perf_counter() - wall) * 1000)
        print(f"cold list {size:5} tools: {statistics.median(results[size]):9.2f} ms CPU, {statistics.median(walls[size]):9.2f} ms wall"
              f" (CPU runs: {', '.join(f'{v:.2f}' for v in results[size])})", flush=True)
    return results, walls


def step_costs(parts: InProcess) -> dict[str, float]:
    """Per-request costs of single steps inside the gateway, measured directly (microseconds)."""
    from gateway.auth.jwt import verify_jwt
    from gateway.authz.cedar import Authorizer, PolicyStore
    from gateway.mcp.jsonrpc import parse_body
    from gateway.mcp.listing import ListFilter

    principal, token = parts.principal("bench-user")
    signing_key, rules, config = parts.signing_key, parts.rules, parts.config
    costs: dict[str, float] = {}

    def per_call(fn, n: int) -> float:
        start = time.process_time()  # CPU, not wall: other work on the machine hardly changes it
        for _ in range(n):
            fn()
        return (time.process_time() - start) / n * 1e6

    costs["JWT verification (RS256, signature and claims)"] = per_call(lambda: verify_jwt(token, signing_key, rules, time.time()), 500)
    verified = {hashlib.sha256(token.encode()).digest(): principal}
    costs["verified-token cache hit (SHA-256 and lookup)"] = per_call(
        lambda: verified.get(hashlib.sha256(token.encode()).digest()), 20000)
    body = json.dumps(CALL).encode()
    costs["strict JSON-RPC parse of a tools/call"] = per_call(lambda: parse_body(body, "application/json"), 5000)
    store = PolicyStore(config.authorization)
    authorizer = Authorizer(store, config.authorization, server_name="bench")
    fresh_messages = iter([
        parse_body(json.dumps({**CALL, "params": {"name": "tool_0", "arguments": {"text": f"t{i}"}}}).encode(), "application/json").messages[0]
        for i in range(2000)
    ])
    costs["Cedar decision, fresh (new arguments)"] = per_call(lambda: authorizer.decide(principal, next(fresh_messages)), 2000)
    message = parse_body(body, "application/json").messages[0]
    costs["Cedar decision, repeated request (decision cache)"] = per_call(lambda: authorizer.decide(principal, message), 2000)
    from gateway.authz.listing_decisions import analyse

    costs["policy analysis for grouped list decisions (once per policy load)"] = per_call(lambda: analyse(store.current), 200)
    listed = tools_body(500)
    warm = Authorizer(store, config.authorization, server_name="bench")
    ListFilter(lambda scope: warm.item_check(principal, scope), strict=True).filter_json_body(listed)
    costs["filtering a 500-tool list, decision cache warm"] = per_call(
        lambda: ListFilter(lambda scope: warm.item_check(principal, scope), strict=True).filter_json_body(listed), 50)

    def filter_memo():
        ListFilter(lambda scope: warm.item_check(principal, scope), strict=True,
                   scope=lambda: warm.listing_scope(principal), memo=warm.filtered_lists).filter_json_body(listed)

    filter_memo()
    costs["filtering a 500-tool list, same list again (filtered-answer cache)"] = per_call(filter_memo, 200)
    for name, value in costs.items():
        print(f"{name:70} {value:10,.1f} µs", flush=True)
    return costs


# ---------------------------------------------------------------------------------------------------
# SSE streams
# ---------------------------------------------------------------------------------------------------

def sse_run(target: Target, *, streams: int, hold: float, tokens_file: Path | None) -> dict:
    deadline = 60 + hold + streams / 20
    command = [sys.executable, str(HERE / "sse.py"), "--url", target.url, "--pid", str(target.pid),
               "--streams", str(streams), "--hold", str(hold), "--deadline", str(deadline)]
    if tokens_file is not None:
        command += ["--tokens", str(tokens_file)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=deadline + 30)
    except subprocess.TimeoutExpired:
        return {"error": f"the SSE client did not finish within {deadline + 30:.0f} s"}
    if done.returncode != 0:
        return {"error": f"the SSE client failed: {done.stderr.strip()[-600:]}"}
    result = json.loads(done.stdout)
    delay = result.get("delay_ms") or {}
    print(f"sse      {target.name:24} {result['opened']}/{streams} open in {result.get('open_seconds', '?')} s, "
          f"rss {result['rss_idle_bytes'] / 2**20:.1f} -> {result.get('rss_open_bytes', 0) / 2**20:.1f} MiB, "
          f"{result['events']} events, delay p50 {delay.get('p50', float('nan')):.2f} p99 {delay.get('p99', float('nan')):.2f} "
          f"max {delay.get('max', float('nan')):.2f} ms" + (f"  errors: {result['errors']}" if result["errors"] else ""), flush=True)
    return result


def combine_sse(runs: list[dict]) -> dict:
    """The median of each figure over the repetitions (as for wrk); counts are summed, errors kept."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    # Memory: before the first repetition's streams (later ones start from what the first left: Python keeps
    # freed memory), and the largest reading with streams open in any repetition (what P5 bounds).
    combined = {"rss_idle_bytes": good[0]["rss_idle_bytes"], "hold_seconds": good[0]["hold_seconds"]}
    for key in ("rss_open_bytes", "rss_after_hold_bytes"):
        values = [r[key] for r in good if r.get(key)]
        combined[key] = max(values) if values else None
    combined["opened"] = min(r["opened"] for r in good)
    combined["failed"] = sum(r["failed"] for r in good)
    combined["events"] = sum(r["events"] for r in good)
    combined["errors"] = [e for r in runs for e in r.get("errors", [r.get("error")] if "error" in r else [])][:5]
    delays = [r["delay_ms"] for r in good if r.get("delay_ms")]
    if delays:
        combined["delay_ms"] = {key: statistics.median(d[key] for d in delays) for key in delays[0]}
        combined["p99_runs"] = [d["p99"] for d in delays]
    per_event = [r["cpu_seconds_hold"] * 1e6 / r["events_hold"] for r in good if r.get("events_hold")]
    if per_event:
        combined["cpu_us_per_event"] = statistics.median(per_event)
    combined["repetitions"] = len(good)
    return combined


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------

def pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}"


def verdict(value: float | None, budget: float) -> str:
    if value is None:
        return "not measured"
    if value <= budget:
        return "met"
    return f"not met ({value / budget:.2f}× the budget)" if budget else "not met"


def mb(value: int | None) -> str:
    return f"{value / 1e6:,.1f}" if value else "-"


@dataclass
class Report:
    args: argparse.Namespace
    command: str
    versions: str
    scenarios: dict[str, dict[str, Sample]] = field(default_factory=dict)
    repetitions: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    workers: dict[int, Sample] | str | None = None
    workers_processes: dict[int, int] = field(default_factory=dict)
    sse: dict[str, dict] = field(default_factory=dict)
    sse_note: str = ""
    cold: dict[int, list[float]] | str | None = None
    steps: dict[str, float] | str | None = None
    notes: list[str] = field(default_factory=list)
    minutes: float = 0.0
    cold_wall: dict[int, list[float]] = field(default_factory=dict)
    source: str = ""


def stalled(sample: Sample) -> bool:
    return sample.connections > 1 and sample.busy < sample.connections / 2


def cpu_table(rows: dict[str, Sample]) -> list[str]:
    direct = rows.get(DIRECT)
    lines = ["| target | CPU µs/request (target process) | upstream's CPU µs/request | requests/s | p50 ms | p99 ms | requests/s vs direct |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        ratio = f"{s.rps / direct.rps:.2f}" if direct and direct.rps else "-"
        failed = f" ({s.failed:,} failed or timed out)" if s.failed else ""
        if stalled(s):
            failed += f" (stalled: ~{s.busy:.1f} of {s.connections} connections answered)"
        lines.append(f"| {name}{failed} | {s.target_us:,.1f} | {s.upstream_us:,.1f} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {ratio} |")
    return lines


def write_report(path: Path, report: Report) -> None:
    args = report.args
    call = report.scenarios.get("call", {})
    one = report.scenarios.get("one", {})
    p1 = call[GATEWAY].target_us / call[PLAIN].target_us if GATEWAY in call and PLAIN in call and call[PLAIN].target_us else None
    p3 = one[GATEWAY].p50_ms - one[DIRECT].p50_ms if GATEWAY in one and DIRECT in one else None
    cold = report.cold if isinstance(report.cold, dict) else {}
    gateway_sse = report.sse.get(GATEWAY, {})
    sse_rss = max(gateway_sse.get("rss_open_bytes") or 0, gateway_sse.get("rss_after_hold_bytes") or 0) or None
    sse_p99 = (gateway_sse.get("delay_ms") or {}).get("p99")
    streams_open = gateway_sse.get("opened")

    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`bench/run.py`), every figure below from one run; benchmarks are not tests.",
        "Every process (wrk, the upstream, each proxy) shares this machine's cores, so requests/s are low and",
        "noisy; the CPU µs per request of each process is the figure to compare (see *Reading these numbers*).",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- versions: {report.versions}",
        f"- command: `{report.command}` ({report.minutes:.1f} minutes)",
        f"- gateway source: {report.source}",
        f"- load: `wrk -t1 -c16 -d{args.seconds}s --timeout 2s --latency` (one-connection rows: `-c1`), after a 1 s warm-up per"
        f" target; {args.repetitions} repetition(s), targets interleaved in each; each figure is the median of the"
        " repetitions",
        "- CPU: `utime + stime` of the target process and its children from `/proc/<pid>/stat`, before and after"
        " each wrk run, divided by the requests wrk completed; nothing subtracted",
        "- nginx: one process (`master_process off`), `proxy_pass` to `upstream { keepalive 64; }`,"
        " `proxy_http_version 1.1`, `Connection \"\"`, `proxy_buffering off`, access log off",
        "- gateway: `mcp-auth-gateway serve`, default log level (info; access lines on stderr to /dev/null), audit"
        " on (JSON lines on stdout to /dev/null), RS256 JWT verified once then served from the verified-token"
        " cache, required scope `mcp`, the Cedar policies at the end",
        "",
        "## Budgets (spec P1-P5)",
        "",
        "| budget | measured | |",
        "|---|---:|---|",
        f"| P1: gateway CPU per repeated `tools/call` ≤ 0.8× the plain aiohttp proxy's | "
        + (f"{p1:.2f}× ({call[GATEWAY].target_us:,.0f} vs {call[PLAIN].target_us:,.0f} µs)" if p1 else "-")
        + (f"; at one connection {one[GATEWAY].target_us / one[PLAIN].target_us:.2f}×" if GATEWAY in one and PLAIN in one and one[PLAIN].target_us else "")
        + (" (gateway requests stalled at 16 connections, see the notes)" if GATEWAY in call and stalled(call[GATEWAY]) else "")
        + f" | {verdict(p1, 0.8)} |",
    ]
    for size, budget in BUDGET_P2.items():
        value = statistics.median(cold[size]) if cold.get(size) else None
        lines.append(f"| P2: cold `tools/list` of {size:,} tools ≤ {budget:g} ms | "
                     + (f"{value:,.1f} ms" if value is not None else "-") + f" | {verdict(value, budget)} |")
    lines.append("| P3: added p50 at one connection ≤ 0.25 ms | " + (f"{p3:.3f} ms" if p3 is not None else "-")
                 + f" | {verdict(p3, 0.25)} |")
    if isinstance(report.workers, dict) and len(report.workers) == 2:
        w1, w2 = report.workers.get(1), report.workers.get(2)
        ratio = w2.target_us / w1.target_us if w1 and w2 and w1.target_us else None
        processes = report.workers_processes.get(2)
        lines.append("| P4: CPU per request flat from 1 to 2 workers | " + (f"{ratio:.2f}× ({processes} processes at 2)" if ratio else "-") + " | see below |")
    else:
        lines.append("| P4: CPU per request flat from 1 to 2 workers | - | not available yet |")
    lines.append(f"| P5: {streams_open or 0:,} open SSE streams ≤ 150 MB gateway RSS | " + (f"{sse_rss / 1e6:,.1f} MB" if sse_rss else "-")
                 + " | " + (verdict(sse_rss / 1e6, 150) if sse_rss and streams_open == 1000 else
                           ("not measured at 1,000 streams" if sse_rss else "not measured")) + " |")
    delay = gateway_sse.get("delay_ms") or {}
    lines.append("| P5: each event forwarded within 2 ms (judged on the p99 delay, upstream to client) | "
                 + (f"p99 {sse_p99:.2f} ms (max {delay['max']:.2f}, {delay['over_2ms'] * 100:.1f} % over 2 ms)" if sse_p99 is not None else "-")
                 + (f"; upstream directly p99 {direct_p99:.2f} ms" if (direct_p99 := (report.sse.get(DIRECT, {}).get("delay_ms") or {}).get("p99")) is not None else "")
                 + f" | {verdict(sse_p99, 2.0)} |")
    lines.append("")

    for scenario in SCENARIOS:
        rows = report.scenarios.get(scenario.key)
        if not rows:
            continue
        lines += [f"## {scenario.title}", ""]
        if scenario.key == "one":
            direct = rows.get(DIRECT)
            lines += ["| target | p50 ms | added p50 vs direct, ms | p99 ms | requests/s | CPU µs/request (target process) | upstream's CPU µs/request |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for name, s in rows.items():
                added = f"{s.p50_ms - direct.p50_ms:+.3f}" if direct and name != DIRECT else "-"
                lines.append(f"| {name} | {s.p50_ms:.3f} | {added} | {s.p99_ms:.3f} | {s.rps:,.0f} | {s.target_us:,.1f} | {s.upstream_us:,.1f} |")
            if GATEWAY in rows and PLAIN in rows and rows[PLAIN].target_us:
                lines += ["", f"Gateway CPU per request / plain aiohttp proxy's at one connection: **{rows[GATEWAY].target_us / rows[PLAIN].target_us:.2f}×**"]
        else:
            lines += cpu_table(rows)
            if GATEWAY in rows and PLAIN in rows and rows[PLAIN].target_us:
                lines += ["", f"Gateway CPU per request / plain aiohttp proxy's: **{rows[GATEWAY].target_us / rows[PLAIN].target_us:.2f}×**"
                          + (" (P1 budget: ≤ 0.80×)" if scenario.key == "call" else "")
                          + (f"; / nginx's: {rows[GATEWAY].target_us / rows[NGINX].target_us:.1f}×" if NGINX in rows and rows[NGINX].target_us else "")]
        runs = report.repetitions.get(scenario.key, {})
        if runs and args.repetitions > 1:
            lines += ["", "CPU µs/request in each repetition: " + "; ".join(
                f"{name} {', '.join(f'{s.target_us:,.1f}' for s in samples)}" for name, samples in runs.items())]
        lines.append("")

    lines += ["## Workers (`server.workers`, P4): the repeated `tools/call`", ""]
    if isinstance(report.workers, dict) and report.workers:
        lines += ["| workers | processes seen | CPU µs/request (all processes) | upstream's CPU µs/request | requests/s | p50 ms | p99 ms |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for n, s in sorted(report.workers.items()):
            mark = f" (stalled: ~{s.busy:.1f} of {s.connections} connections answered)" if stalled(s) else ""
            mark += f" ({s.failed:,} failed or timed out)" if s.failed else ""
            lines.append(f"| {n}{mark} | {report.workers_processes.get(n, '?')} | {s.target_us:,.1f} | {s.upstream_us:,.1f} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} |")
        lines += ["", "Each a separate gateway process tree with the same configuration but `server.workers`, measured"
                  " interleaved like the targets above (started with the others at the beginning of the run, idle until their turn). \"processes seen\" counts the gateway's process tree in /proc"
                  " during the run (a supervisor and its workers). CPU per request is the budget figure: it should stay"
                  " flat with N. Throughput with 2 workers depends on how much of the 2 cores wrk and the upstream leave."]
    else:
        lines.append(report.workers if isinstance(report.workers, str) else "not available yet")
    lines.append("")

    lines += ["## Cold list filtering (P2), in-process", ""]
    if cold:
        lines += ["| tools listed | median CPU ms | runs, CPU ms | median wall ms | budget |", "|---:|---:|---|---:|---|"]
        for size, values in cold.items():
            budget = f"≤ {BUDGET_P2[size]:g} ms: {verdict(statistics.median(values), BUDGET_P2[size])}" if size in BUDGET_P2 else "-"
            wall = report.cold_wall.get(size)
            lines.append(f"| {size:,} | {statistics.median(values):,.2f} | {', '.join(f'{v:,.1f}' for v in values)} | "
                         + (f"{statistics.median(wall):,.2f}" if wall else "-") + f" | {budget} |")
        lines += ["", "A fresh `Authorizer` (empty decision, list and filtered-answer caches) and a principal it has not",
                  "seen, for every run, after one list filtered and thrown away (Python's first calls); the list filter",
                  "built as the endpoint builds it; `filter_json_body` on the upstream's answer (parse, the decisions,",
                  "rewrite, the tool catalogue learning the list). CPU time of the benchmark process (all threads) is the",
                  "budget figure: with nothing else running it is the wall time, and on this shared machine it is the",
                  "part that other work cannot inflate. The analysis of the policy set that list grouping needs",
                  "(`gateway.authz.listing_decisions.analyse`) is made once per policy load, in the thrown-away list",
                  "here; the first list after a policy load pays it once more (the steps table below gives its cost)."]
    else:
        lines.append(f"not measured: {report.cold}")
    lines.append("")

    lines += ["## SSE streams (P5): memory and forwarding delay", ""]
    if report.sse:
        lines += ["| target | streams open | RSS before, MB | RSS with the streams open, MB | per stream, KB | events measured | delay p50 ms | p99 ms | max ms | events over 2 ms | CPU µs per event |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in report.sse.items():
            if "error" in r:
                lines.append(f"| {name} | {r['error']} | | | | | | | | | |")
                continue
            d = r.get("delay_ms") or {}
            rss = max(r.get("rss_open_bytes") or 0, r.get("rss_after_hold_bytes") or 0)
            per = (rss - r["rss_idle_bytes"]) / r["opened"] / 1e3 if r.get("opened") and rss else None
            failed = f" ({r['failed']} failed)" if r.get("failed") else ""
            lines.append(f"| {name} | {r['opened']:,}{failed} | {mb(r['rss_idle_bytes'])} | {mb(rss)} | "
                         + (f"{per:,.1f}" if per is not None else "-") + f" | {r['events']:,} | "
                         + " | ".join(f"{d[k]:.2f}" if k in d else "-" for k in ("p50", "p99", "max"))
                         + (f" | {d['over_2ms'] * 100:.1f} % |" if "over_2ms" in d else " | - |")
                         + (f" {r['cpu_us_per_event']:,.1f} |" if r.get("cpu_us_per_event") else " - |"))
        lines += ["", report.sse_note]
    else:
        lines.append("not measured")
    lines.append("")

    lines += ["## Costs inside the gateway, per request (in-process, CPU time, one core)", ""]
    if isinstance(report.steps, dict):
        lines += ["| step | µs |", "|---|---:|"]
        lines += [f"| {name} | {value:,.1f} |" for name, value in report.steps.items()]
    else:
        lines.append(f"not measured: {report.steps}")
    lines += [
        "",
        "## Reading these numbers",
        "",
        "- **CPU µs per request, per process** is the budget figure (P1, P4). It is the kernel's accounting of",
        "  each process, so it depends far less than requests/s on how the two cores are shared at the moment:",
        "  a process that needs 300 µs of CPU per request needs about that however busy the machine is. It covers",
        "  everything the process did during the run (HTTP parsing, the event loop, logging, audit, garbage",
        "  collection), divided by the requests wrk completed. It does depend on concurrency: with 16",
        "  connections one turn of the event loop serves several requests, at one connection each request pays",
        "  a whole turn and its wake-ups, so the `-c1` rows are higher. The kernel counts in clock ticks of",
        f"  {CLOCK_TICK_S * 1000:g} ms, so a short run of a cheap process (nginx) is coarse; a full run has hundreds of",
        "  ticks per figure.",
        "- **The upstream's CPU per request** is the same aiohttp server for every target, so its column is about",
        "  the same in every row; in the *upstream directly* row it is the target itself. A proxy's figure is",
        "  its own process only: the upstream's share is never included and nothing is subtracted.",
        "- **nginx is the floor** for any reverse proxy: HTTP parsing and relaying in C with keep-alive on both",
        "  sides. The **plain aiohttp proxy** (bench/plain_proxy.py: read, one pooled client request, relay, no",
        "  checks) is the floor for a Python proxy built on aiohttp; P1 asks the gateway, with every check, the",
        "  access log and the audit event, to cost at most 0.8× of it.",
        "- **requests/s and p50/p99 under load** are noisy here: wrk, the upstream and the target share two cores",
        "  (with other work on the machine), so a proxy's throughput is capped by how much CPU the upstream and",
        "  wrk leave it. Compare ratios within one run, never across machines.",
        "- **One connection** (`-c1`) measures latency rather than throughput: a request at a time, so the added",
        "  p50 over the upstream directly is what one hop through the target adds (P3).",
        "- **Cold list filtering** is what the first `tools/list` after a policy change, or from a principal the",
        "  gateway has not seen, costs inside the gateway; later lists come from the caches (the steps table).",
        "- **SSE**: standalone `GET` streams held open by the upstream, each sending an event a second, spread",
        "  evenly over the second. RSS is the target's resident memory (all its processes) with the streams open;",
        "  the delay is from the upstream's timestamp to the client reading the bytes, on loopback, with the",
        "  client's own scheduling included (the *upstream directly* row shows that part). A p99 over a few",
        "  thousand events is sensitive to any stall on this shared machine: one 30 ms pause of any process in",
        "  the path delays every event due meanwhile, whichever target is being measured, so compare the",
        "  repetitions.",
        "- The in-process step costs (CPU time of the benchmark process) are single steps on one core without the server around them; they explain",
        "  where the gateway's CPU goes but do not add up to it (the event loop, aiohttp and logging are not in",
        "  them).",
        "",
    ]
    failures = sorted({name for rows in report.scenarios.values() for name, sample in rows.items() if sample.failed}
                      | ({f"gateway with {n} worker(s)" for n, sample in report.workers.items() if sample.failed}
                         if isinstance(report.workers, dict) else set()))
    if failures:
        report.notes.append(
            "Some requests to " + ", ".join(failures) + " failed (a non-2xx answer or a socket error) or timed out"
            " (no answer within wrk's `--timeout 2s`); the rows say how many. Such a target's requests/s, latency"
            " and CPU per request cover only the requests that completed, and the run is not a fair measurement of it.")
    hung = sorted({name for rows in report.scenarios.values() for name, sample in rows.items() if stalled(sample)}
                  | ({f"gateway with {n} worker(s)" for n, sample in report.workers.items() if stalled(sample)}
                     if isinstance(report.workers, dict) else set()))
    if hung:
        report.notes.append(
            "Requests hung in " + ", ".join(hung) + ": with 16 connections a closed loop keeps about 16 requests in"
            " flight (requests/s × mean latency), but far fewer were being answered (the rows marked *stalled*); the"
            " rest waited for the whole run, and wrk's latency leaves them out. Those rows' requests/s and"
            " latencies are not a fair measurement; CPU per request covers the requests that completed.")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    lines += ["The policies used:", "", "```cedar", POLICIES.rstrip(), "```", ""]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------

def mint(key, issuer: str, audience: str, subject: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + 3600,
                       "scope": "mcp", "client_id": "bench"}, key, algorithm="RS256", headers={"kid": "bench", "typ": "at+jwt"})


def config_fields() -> set[str]:
    from gateway.config import ServerConfig

    return {f.name for f in dataclasses.fields(ServerConfig)}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by every process started here


def in_process_modules() -> None:
    """Import what the in-process measurements use (see main)."""
    import gateway.auth.jwt  # noqa: F401
    import gateway.authz.cedar  # noqa: F401
    import gateway.config  # noqa: F401
    import gateway.mcp.jsonrpc  # noqa: F401
    import gateway.mcp.listing  # noqa: F401


def source_state() -> str:
    """Which gateway code was measured: the commit, and whether gateway/ had uncommitted changes."""
    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    changed = [line for line in git("status", "--porcelain", "--", "gateway").splitlines() if line.strip()]
    return f"commit {commit}" + (f", with uncommitted changes to {len(changed)} file(s) under gateway/" if changed else "")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 25 s; and whatever it started (workers) that outlives it."""
    if process.poll() is not None:
        return
    tree = [(pid, start_time(pid)) for pid in descendants(process.pid) if pid != process.pid]
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=25)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid, started in tree:
        if started is not None and start_time(pid) == started:  # still that process: a worker left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                        help="1 s runs, 1 repetition, 200 SSE streams (also BENCH_QUICK=1); for development")
    parser.add_argument("--seconds", type=int, help="duration of each wrk run (default 5, quick 1)")
    parser.add_argument("--repetitions", type=int, help="interleaved repetitions (default 3, quick 1)")
    parser.add_argument("--sse-streams", type=int, help="SSE streams opened (default 1000, quick 200)")
    parser.add_argument("--sse-hold", type=float, help="seconds of SSE events measured per repetition (default 5, quick 3)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    args.seconds = args.seconds or (1 if args.quick else 5)
    args.repetitions = args.repetitions or (1 if args.quick else 3)
    args.sse_streams = args.sse_streams or (200 if args.quick else 1000)
    args.sse_hold = args.sse_hold or (3.0 if args.quick else 5.0)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does this)")
    nginx = nginx_binary()
    raise_fd_limit()
    # A SIGTERM (a timeout around make) unwinds like Ctrl-C: every process started here is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", alg="RS256", use="sig")
    jwks = StaticJwks({"keys": [jwk]})
    processes: list[subprocess.Popen] = []
    gateway_log = os.environ.get("BENCH_GATEWAY_LOG")  # a file for the gateway's stderr, when debugging this script
    try:
        ports = {name: free_port() for name in ("upstream", "nginx", "plain", "gateway")}
        upstream_url = f"http://127.0.0.1:{ports['upstream']}/mcp"
        public_url = f"http://127.0.0.1:{ports['gateway']}/mcp"
        (work / "policies").mkdir()
        (work / "policies" / "bench.cedar").write_text(POLICIES)
        (work / "entities.json").write_text(json.dumps([
            {"uid": {"type": "Tool", "id": f"tool_{i}"}, "attrs": {"restricted": True}, "parents": []} for i in range(900, 1000)
        ] + [{"uid": {"type": "Tool", "id": f"tool_{i}"}, "attrs": {"restricted": True}, "parents": []} for i in range(400, 500)]))

        def gateway_config(port: int, workers: int | None = None) -> Path:
            server: dict = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}/mcp"}
            if "admin_port" in config_fields():
                server["admin_port"] = 0  # one port per gateway, as before O1 (several run side by side)
            if workers is not None:
                server["workers"] = workers
                if "session_key_file" in config_fields():
                    (work / "session.key").write_text(secrets.token_hex(32))
                    server["session_key_file"] = str(work / "session.key")
            config = {
                "server": server,
                "upstream": {"url": upstream_url},
                "auth": {"issuers": [{"issuer": jwks.url, "jwks_uri": f"{jwks.url}/jwks"}], "required_scopes": ["mcp"]},
                "authorization": {"policies": str(work / "policies"), "entities": str(work / "entities.json")},
                # logging and audit: the defaults (level info, audit on to stdout), as P1 asks
            }
            path = work / f"gateway-{port}.yaml"
            path.write_text(json.dumps(config))  # JSON is YAML
            return path

        config_path = gateway_config(ports["gateway"])


        def start(command: list[str], port: int, *, log: str | None = None) -> subprocess.Popen:
            stderr = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
            processes.append(process)
            wait_for(port, process)
            return process

        upstream = start([sys.executable, str(HERE / "upstream.py"), "--port", str(ports["upstream"]), "--tools", "500",
                          "--sse-max", "300"], ports["upstream"])
        nginx_process = None
        if nginx:
            nginx_process = start(nginx_command(nginx, work / "nginx", port=ports["nginx"], upstream_port=ports["upstream"]), ports["nginx"])
        plain = start([sys.executable, str(HERE / "plain_proxy.py"), "--port", str(ports["plain"]), "--upstream", upstream_url], ports["plain"])
        gateway = start([sys.executable, "-m", "gateway", "serve", "--config", str(config_path)], ports["gateway"], log=gateway_log)
        # Every gateway process starts now, and the gateway modules measured in-process are imported now, so
        # the whole run measures one version of the code even while gateway/ is being edited.
        workers_pool: list[tuple[int, subprocess.Popen, Target]] = []
        workers_problem = None
        if "workers" in config_fields():
            try:
                for n in (1, 2):
                    port = free_port()
                    path = gateway_config(port, workers=n)
                    process = start([sys.executable, "-m", "gateway", "serve", "--config", str(path)], port, log=gateway_log)
                    url = f"http://127.0.0.1:{port}/mcp"
                    workers_pool.append((n, process, Target(f"workers {n}", url, {
                        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                        "Authorization": f"Bearer {mint(key, jwks.url, url, 'bench-user')}"}, process.pid)))
            except SystemExit as exc:
                workers_problem = f"could not start the gateway with `server.workers`: {exc}"
                for _, process, _ in workers_pool:
                    stop(process)
                workers_pool = []
        in_process_modules()

        token = mint(key, jwks.url, public_url, "bench-user")
        base_headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        targets = [Target(DIRECT, upstream_url, base_headers, upstream.pid)]
        if nginx_process is not None:
            targets.append(Target(NGINX, f"http://127.0.0.1:{ports['nginx']}/mcp", base_headers, nginx_process.pid))
        targets += [
            Target(PLAIN, f"http://127.0.0.1:{ports['plain']}/mcp", base_headers, plain.pid),
            Target(GATEWAY, public_url, {**base_headers, "Authorization": f"Bearer {token}"}, gateway.pid),
        ]

        versions = [f"Python {platform.python_version()}"]
        versions += [f"{name} {v}" for name in ("aiohttp", "PyJWT", "cedarpy", "uvloop", "httptools", "mcp-auth-gateway")
                     if (v := pkg_version(name))]
        versions.append(subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0].split(" [")[0])
        if nginx:
            versions.append(nginx_version(nginx) + " (Debian package)")
        command = "make bench" if not sys.argv[1:] else f"python bench/run.py {' '.join(sys.argv[1:])}"
        if args.quick and "--quick" not in sys.argv[1:]:
            command = "BENCH_QUICK=1 " + command
        report = Report(args=args, command=command, versions=", ".join(versions), source=source_state())
        report.workers = workers_problem
        if nginx is None:
            report.notes.append("nginx is not installed, so it has no row (make bench installs it: apt-get install nginx).")

        for scenario in SCENARIOS:
            report.scenarios[scenario.key], report.repetitions[scenario.key] = measure_targets(
                targets, scenario.body, connections=scenario.connections, seconds=args.seconds,
                repetitions=args.repetitions, upstream_pid=upstream.pid, workdir=work, label=scenario.key)

        # P4: the gateway with server.workers 1 and 2, when the configuration knows the key.
        if workers_pool:
            try:
                time.sleep(1.0)  # every worker up, not only the first to listen
                for n, process, target in workers_pool:
                    report.workers_processes[n] = process_count(process.pid)
                medians, runs = measure_targets([t for _, _, t in workers_pool], CALL, connections=16, seconds=args.seconds,
                                                repetitions=args.repetitions, upstream_pid=upstream.pid, workdir=work, label="workers")
                report.workers = {n: medians[t.name] for n, _, t in workers_pool}
            except (SystemExit, subprocess.SubprocessError, OSError) as exc:
                report.workers = f"could not be measured: {exc}"
                traceback.print_exc()
            for _, process, _ in workers_pool:
                stop(process)
        elif report.workers is None:
            report.workers = "not available yet (gateway/config.py has no `server.workers`)"
        print(f"workers: {report.workers if isinstance(report.workers, str) else report.workers_processes} processes", flush=True)

        # P5: many open SSE streams through the gateway (20 principals, so the per-principal limit of 64 holds).
        tokens_file = work / "sse-tokens.json"
        tokens_file.write_text(json.dumps([mint(key, jwks.url, public_url, f"bench-sse-{i}") for i in range(SSE_PRINCIPALS)]))
        sse_runs: dict[str, list[dict]] = {}
        for _ in range(args.repetitions):
            for target in targets:
                if target.name == PLAIN:
                    continue  # it reads each answer whole: no streaming
                sse_runs.setdefault(target.name, []).append(sse_run(
                    target, streams=args.sse_streams, hold=args.sse_hold, tokens_file=tokens_file if target.name == GATEWAY else None))
                time.sleep(1.0)  # the streams' connections closed before the next target
        report.sse = {name: combine_sse(runs) for name, runs in sse_runs.items()}
        report.sse_note = (
            f"{args.sse_streams:,} `GET` streams per target from one asyncio client process (aiohttp, at most 50 being"
            f" opened at once), {SSE_PRINCIPALS} principals round robin through the gateway (the default"
            " `limits.per_principal.concurrent` of 64 unchanged), one event a second per stream spread over the"
            f" second, {args.sse_hold:g} s of events measured after all were open; {args.repetitions} repetition(s),"
            " targets interleaved, the median of each figure (the events column is the total)."
            " p99 delay in each repetition: " + "; ".join(
                f"{name} {', '.join(f'{v:.2f}' for v in r.get('p99_runs', []))} ms" for name, r in report.sse.items()) + "."
            " RSS: `VmRSS` of the target (and its children) before the first repetition's streams, and the largest"
            " reading with streams open in any repetition; per stream is the difference over the streams."
            " Before"
            " the streams the gateway had served all the wrk runs above. CPU µs per event: the target's CPU during"
            " the measured seconds over the events measured (the upkeep of the open streams included)."
            " The plain aiohttp proxy has no row:"
            " it reads every answer whole."
        )

        # In-process: nothing else is busy now.
        try:
            parts = InProcess(config_path, key, jwks.url, public_url)
        except Exception as exc:  # noqa: BLE001 - a changed internal API must not lose the run
            traceback.print_exc()
            report.cold = report.steps = f"{type(exc).__name__}: {exc}"
        else:
            try:
                report.cold, report.cold_wall = cold_list_costs(parts, {50: 1 if args.quick else 7, 500: 1 if args.quick else 5, 5000: 1 if args.quick else 3})
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                report.cold = f"{type(exc).__name__}: {exc}"
            try:
                report.steps = step_costs(parts)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                report.steps = f"{type(exc).__name__}: {exc}"

        report.minutes = (time.monotonic() - started) / 60
        write_report(args.output, report)
        print(f"wrote {args.output} in {time.monotonic() - started:.0f} s")
    finally:
        for process in processes:
            stop(process)
        jwks.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
