"""Many open SSE streams through one target: its memory, and how long each event takes to come through.

    python bench/sse.py --url http://127.0.0.1:8080/mcp --pid 1234 --streams 1000 --hold 10 [--tokens FILE]

One asyncio process, aiohttp clients. Opens ``--streams`` ``GET`` streams (``Accept: text/event-stream``),
at most ``--connect-concurrency`` being opened at once, each with one of the bearer tokens in ``--tokens``
(a JSON list; round robin, so a per-principal limit is shared by several principals). Once all are open
it reads ``VmRSS`` of ``--pid`` (and its children), then for ``--hold`` seconds notes, for every event,
``arrival - t`` where ``t`` is the upstream's ``time.monotonic_ns()`` in the event (bench/upstream.py)
and arrival is when its bytes reach this process, and the CPU ``--pid`` used meanwhile. Prints one JSON object. ``--deadline`` bounds the
whole run; the streams are closed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import CLOCK_TICK_S, cpu_ticks, rss_bytes  # noqa: E402


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, tokens: list[str]) -> dict:
    result: dict = {"streams": args.streams, "opened": 0, "failed": 0, "errors": [], "timed_out": False}
    result["rss_idle_bytes"] = rss_bytes(args.pid)
    delays: list[float] = []
    measuring = asyncio.Event()
    stop = asyncio.Event()
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(args.connect_concurrency)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    settled = 0

    def done_opening(ok: bool, error: str | None = None) -> None:
        nonlocal settled
        settled += 1
        if ok:
            result["opened"] += 1
        else:
            result["failed"] += 1
            if error and len(result["errors"]) < 5:
                result["errors"].append(error)
        if settled == args.streams:
            all_open.set()

    async def one(index: int) -> None:
        headers = {"Accept": "text/event-stream"}
        if tokens:
            headers["Authorization"] = f"Bearer {tokens[index % len(tokens)]}"
        try:
            async with gate:
                response = await session.get(args.url, headers=headers)
        except (aiohttp.ClientError, OSError) as exc:
            done_opening(False, f"{type(exc).__name__}: {exc}")
            return
        try:
            if response.status != 200 or not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                done_opening(False, f"{response.status} {response.headers.get('Content-Type')}: {(await response.read())[:200]!r}")
                return
            done_opening(True)
            buffer = b""
            async for chunk in response.content.iter_any():
                arrived = time.monotonic_ns()
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                if not measuring.is_set():
                    continue
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:"):
                            sent = json.loads(line[5:])["params"]["data"]["t"]
                            delays.append((arrived - sent) / 1e6)
                if stop.is_set():
                    break
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            if not stop.is_set() and len(result["errors"]) < 5:
                result["errors"].append(f"stream {index}: {type(exc).__name__}: {exc}")
        finally:
            response.close()

    started = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(args.streams)]
    try:
        async with asyncio.timeout(args.deadline):
            await all_open.wait()
            result["open_seconds"] = round(time.monotonic() - started, 2)
            await asyncio.sleep(1.0)  # let every stream see its first event and the target settle
            result["rss_open_bytes"] = rss_bytes(args.pid)
            ticks = cpu_ticks(args.pid)
            measuring.set()
            await asyncio.sleep(args.hold)
            stop.set()
            result["cpu_seconds_hold"] = (cpu_ticks(args.pid) - ticks) * CLOCK_TICK_S
            result["events_hold"] = len(delays)
            result["rss_after_hold_bytes"] = rss_bytes(args.pid)
    except TimeoutError:
        result["timed_out"] = True
    finally:
        stop.set()
        measuring.clear()
        measured = list(delays)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    result["events"] = len(measured)
    result["hold_seconds"] = args.hold
    if measured:
        result["delay_ms"] = {
            "p50": percentile(measured, 0.50), "p99": percentile(measured, 0.99), "max": max(measured),
            "mean": statistics.fmean(measured),
            "over_2ms": sum(1 for d in measured if d > 2.0) / len(measured),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the target process whose VmRSS is read")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds of events measured once all are open")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=Path, help="a JSON list of bearer tokens, used round robin")
    parser.add_argument("--deadline", type=float, default=120.0, help="hard limit on the whole run, seconds")
    args = parser.parse_args()
    tokens = json.loads(args.tokens.read_text()) if args.tokens else []
    limit = raise_fd_limit(args.streams + 256)
    result = asyncio.run(run(args, tokens))
    result["fd_limit"] = limit
    print(json.dumps(result))


if __name__ == "__main__":
    main()
