"""``make bench``: the gateway against the upstream directly and against a plain reverse proxy, in one run.

Starts on 127.0.0.1: the benchmark upstream (bench/upstream.py), a plain aiohttp proxy (bench/plain_proxy.py),
a static JWKS, and the gateway (``mcp-auth-gateway serve``) with Cedar policies, then drives each with
``wrk`` (several interleaved repetitions per scenario) and measures the per-request costs inside the
gateway (JWT verification, a Cedar decision, filtering a 500-tool list) in-process. Writes BENCHMARKS.md.
Benchmarks are not tests: nothing here passes or fails on a number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a benchmark process exited early ({process.args})")
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


@dataclass
class Measurement:
    target: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, body: dict, headers: dict[str, str], *, seconds: int, connections: int, workdir: Path) -> tuple[float, float, float]:
    """``body`` may contain the string "__N__", replaced by a per-request counter (distinct requests)."""
    script = workdir / "request.lua"
    text = json.dumps(body)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(text)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if "__N__" in text:
        prefix, suffix = text.split("__N__", 1)
        lines += ["counter = 0", "request = function()", "  counter = counter + 1",
                  f"  return wrk.format(nil, nil, nil, {json.dumps(prefix)} .. counter .. {json.dumps(suffix)})", "end"]
    script.write_text("\n".join(lines) + "\n")
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses; is the benchmark set up right?\n{output}")
    return rps, p50, p99


def in_process_costs(config_path: Path, token: str) -> dict[str, float]:
    """Per-request costs inside the gateway, measured directly (microseconds)."""
    import asyncio

    from gateway.auth.jwks import JwksCache
    from gateway.auth.jwt import IssuerRules, parse_jwks, read_jose_header, verify_jwt
    from gateway.authz.cedar import Authorizer, PolicyStore
    from gateway.config import load_config
    from gateway.mcp.jsonrpc import parse_body
    from gateway.mcp.listing import ListFilter

    config = load_config(config_path)
    costs: dict[str, float] = {}

    async def keys():
        cache = JwksCache(config.auth.issuers, config.auth.jwks)
        await cache.start()
        try:
            return await cache.keys(config.auth.issuers[0].issuer)
        finally:
            await cache.close()

    key_set = asyncio.run(keys())
    rules = IssuerRules.build(config.auth.issuers[0], config.server.public_url, 0)
    header = read_jose_header(token)
    key = key_set.select(header["kid"], header["alg"])

    def per_call(fn, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1e6

    principal = verify_jwt(token, key, rules, time.time())
    costs["JWT verification (RS256, signature and claims)"] = per_call(lambda: verify_jwt(token, key, rules, time.time()), 500)
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
    tools_body = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": f"tool_{i}", "inputSchema": {"type": "object"}} for i in range(500)]}}).encode()

    def filter_cold():
        fresh = Authorizer(store, config.authorization, server_name="bench")
        ListFilter(lambda scope: fresh.item_check(principal, scope), strict=True).filter_json_body(tools_body)

    costs["filtering a 500-tool list, no cache"] = per_call(filter_cold, 5)
    warm = Authorizer(store, config.authorization, server_name="bench")
    ListFilter(lambda scope: warm.item_check(principal, scope), strict=True).filter_json_body(tools_body)
    costs["filtering a 500-tool list, decision cache warm"] = per_call(
        lambda: ListFilter(lambda scope: warm.item_check(principal, scope), strict=True).filter_json_body(tools_body), 50)

    def filter_memo():
        ListFilter(lambda scope: warm.item_check(principal, scope), strict=True,
                   scope=lambda: warm.listing_scope(principal), memo=warm.filtered_lists).filter_json_body(tools_body)

    filter_memo()
    costs["filtering a 500-tool list, same list again (filtered-answer cache)"] = per_call(filter_memo, 200)
    return costs


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


def write_report(path: Path, results: list[Measurement], costs: dict[str, float], args: argparse.Namespace, command: str) -> None:
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`bench/run.py`); benchmarks are not tests. Every target runs on this machine",
        "at the same time as wrk, so absolute numbers are low and ratios are what to compare.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- versions: Python {platform.python_version()}, aiohttp {version('aiohttp')}, PyJWT {version('PyJWT')},"
        f" cedarpy {version('cedarpy')}, mcp-auth-gateway {version('mcp-auth-gateway')}, {wrk_version.split(' [')[0]}",
        f"- command: `{command}`",
        f"- load: `wrk -t1 -c{args.connections} -d{args.seconds}s --latency`, {args.repetitions} interleaved repetitions per"
        " target; the table shows the median repetition",
        "- gateway: RS256 JWT (verified once, then served from the verified-token cache), Cedar policies below,"
        " required scope `mcp`, audit events on (stdout, discarded), log level warning",
        "",
    ]
    for scenario, title in (
        ("call", "A small JSON-RPC call (`tools/call`), the same call repeated"),
        ("distinct", "A small `tools/call` with different arguments every time (no decision is reused)"),
        ("list", "`tools/list` of 500 tools (the gateway filters it, Z4)"),
    ):
        rows = [r for r in results if r.scenario == scenario]
        direct = next((r for r in rows if r.target == "upstream directly"), None)
        lines += [f"## {title}", "", "| target | requests/s | p50 ms | p99 ms | throughput vs direct | p50 vs direct |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            ratio = f"{r.rps / direct.rps:.2f}" if direct else "-"
            latency = f"{r.p50_ms / direct.p50_ms:.2f}x" if direct and direct.p50_ms else "-"
            lines.append(f"| {r.target} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {ratio} | {latency} |")
        lines.append("")
    lines += ["## Costs inside the gateway, per request (in-process, one core)", "", "| step | µs |", "|---|---:|"]
    lines += [f"| {name} | {value:,.1f} |" for name, value in costs.items()]
    lines += [
        "",
        "## Reading these numbers",
        "",
        "- The plain aiohttp proxy is the floor for any aiohttp gateway: reading the request, one pooled",
        "  client request upstream, relaying the answer. Everything the gateway costs above it is in the table",
        "  just above, plus the per-request bookkeeping (request id, access line, audit event, metrics).",
        "- A token's signature is checked once; afterwards the verified-token cache answers in a few µs.",
        "- The Cedar decision is the largest single step on the request path: cedarpy parses the request's",
        "  entities and context (JSON) and evaluates every policy. Policies and static entities are parsed once",
        "  per load, never per request (see architecture.md's budget). A decision is a pure function of the",
        "  policy version, the entities and the request, so identical requests reuse it (bounded cache): the",
        "  repeated-call row shows that path, the distinct-arguments row the cost of a fresh decision.",
        "- List filtering without caches costs one Cedar decision per listed item. With the decision cache (per",
        "  principal attributes, policy version and item) a 500-tool list costs look-ups plus a JSON parse and",
        "  rewrite; when the upstream sends the same list bytes again (the usual case), the filtered answer",
        "  itself is reused (per caller attributes, policy version and a hash of the bytes). The first",
        "  `tools/list` after a policy change or for a new principal pays the full price.",
        "- All processes share two cores with wrk, so the ratios understate what a dedicated core would show;",
        "  compare runs made on the same machine.",
        "",
        "The policies used:", "", "```cedar", POLICIES.rstrip(), "```", "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does this)")

    work = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", alg="RS256", use="sig")
    jwks = StaticJwks({"keys": [jwk]})
    processes: list[subprocess.Popen] = []
    try:
        ports = {name: free_port() for name in ("upstream", "plain", "gateway")}
        upstream_url = f"http://127.0.0.1:{ports['upstream']}/mcp"
        public_url = f"http://127.0.0.1:{ports['gateway']}/mcp"
        (work / "policies").mkdir()
        (work / "policies" / "bench.cedar").write_text(POLICIES)
        (work / "entities.json").write_text(json.dumps([
            {"uid": {"type": "Tool", "id": f"tool_{i}"}, "attrs": {"restricted": True}, "parents": []} for i in range(900, 1000)
        ] + [{"uid": {"type": "Tool", "id": f"tool_{i}"}, "attrs": {"restricted": True}, "parents": []} for i in range(400, 500)]))
        config = {
            "server": {"host": "127.0.0.1", "port": ports["gateway"], "public_url": public_url},
            "upstream": {"url": upstream_url},
            "auth": {"issuers": [{"issuer": jwks.url, "jwks_uri": f"{jwks.url}/jwks"}], "required_scopes": ["mcp"]},
            "authorization": {"policies": str(work / "policies"), "entities": str(work / "entities.json")},
            "logging": {"level": "warning"},
        }
        config_path = work / "gateway.yaml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        now = int(time.time())
        token = jwt.encode({"iss": jwks.url, "sub": "bench-user", "aud": public_url, "iat": now, "exp": now + 3600,
                            "scope": "mcp", "client_id": "bench"}, key, algorithm="RS256", headers={"kid": "bench", "typ": "at+jwt"})

        def start(command: list[str], port: int) -> None:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            processes.append(process)
            wait_for(port, process)

        start([sys.executable, str(HERE / "upstream.py"), "--port", str(ports["upstream"]), "--tools", "500"], ports["upstream"])
        start([sys.executable, str(HERE / "plain_proxy.py"), "--port", str(ports["plain"]), "--upstream", upstream_url], ports["plain"])
        start([sys.executable, "-m", "gateway", "serve", "--config", str(config_path)], ports["gateway"])

        base_headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        targets = [
            ("upstream directly", upstream_url, base_headers),
            ("plain aiohttp proxy", f"http://127.0.0.1:{ports['plain']}/mcp", base_headers),
            ("mcp-auth-gateway", public_url, {**base_headers, "Authorization": f"Bearer {token}"}),
        ]
        results: list[Measurement] = []
        for scenario, body in (("call", CALL), ("distinct", DISTINCT_CALL), ("list", LIST)):
            for _, url, headers in targets:  # warm-up: connections, caches, JIT-free but cache-warm
                run_wrk(url, body, headers, seconds=1, connections=args.connections, workdir=work)
            samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in targets}
            for _ in range(args.repetitions):
                for name, url, headers in targets:
                    samples[name].append(run_wrk(url, body, headers, seconds=args.seconds, connections=args.connections, workdir=work))
            for name, _, _ in targets:
                runs = sorted(samples[name])
                rps, p50, p99 = runs[len(runs) // 2]
                results.append(Measurement(name, scenario, rps, p50, p99))
                print(f"{scenario:5} {name:22} {rps:9,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                      f"(runs: {', '.join(f'{r[0]:,.0f}' for r in samples[name])})")
        costs = in_process_costs(config_path, token)
        for name, value in costs.items():
            print(f"{name:50} {value:10,.1f} µs")
        command = "make bench" + ("" if sys.argv[1:] == [] else f" (bench/run.py {' '.join(sys.argv[1:])})")
        write_report(args.output, results, costs, args, command)
        print(f"wrote {args.output}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        jwks.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
