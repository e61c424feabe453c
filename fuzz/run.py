"""``make fuzz``: every target of fuzz/harness.py in turn, for its share of ``FUZZ_S`` seconds (default 300).

    FUZZ_S=60 python fuzz/run.py            # all targets, 60 s in total
    FUZZ_S=30 python fuzz/run.py jsonrpc    # one target, 30 s

Each target starts from its committed seed corpus (fuzz/corpus/<target>/, read only) and the inputs earlier
runs found (fuzz/work/<target>/, where libFuzzer writes new ones). A crash, a timeout (R4: one input
taking more than ``FUZZ_TIMEOUT`` seconds, default 5) or running out of memory writes the input to
fuzz/crashes/<target>/ and makes this script exit 1 after the remaining targets have run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "harness.py"
TARGETS = ("bearer", "jwt", "jsonrpc", "sse", "listing", "headers", "config", "dpop", "xfcc")
DICTIONARIES = {"jsonrpc": "json.dict", "listing": "json.dict", "sse": "sse.dict", "config": "yaml.dict"}


def run(target: str, seconds: int) -> tuple[bool, str]:
    work = HERE / "work" / target
    crashes = HERE / "crashes" / target
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    options = [
        f"-max_total_time={seconds}",
        f"-timeout={os.environ.get('FUZZ_TIMEOUT', '5')}",
        "-rss_limit_mb=1024",
        "-max_len=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/",
    ]
    if target in DICTIONARIES:
        options.append(f"-dict={HERE / DICTIONARIES[target]}")
    log = HERE / "work" / f"{target}.log"
    before = set(crashes.iterdir())
    with log.open("w") as out:
        code = subprocess.call([sys.executable, str(HARNESS), target, *options, str(work), str(HERE / "corpus" / target)],
                               stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent)
    text = log.read_text(errors="replace")
    found = sorted(set(crashes.iterdir()) - before)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
    coverage = re.findall(r"cov: (\d+)", text)
    summary = (f"{target:8} {stats.get('number_of_executed_units', '?'):>8} runs  "
               f"cov {coverage[-1] if coverage else '?':>5}  corpus {len(list(work.iterdir())):>4} new  "
               f"peak {stats.get('peak_rss_mb', '?')} MB")
    if code != 0 or found:
        summary += f"  FAILED (exit {code}): " + (", ".join(str(p.relative_to(HERE.parent)) for p in found) or f"see {log}")
    return code == 0 and not found, summary


def main() -> int:
    targets = sys.argv[1:] or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"unknown targets {unknown}; known: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    total = int(os.environ.get("FUZZ_S", "300"))
    share = max(5, total // len(targets))
    print(f"fuzzing {len(targets)} targets for {share} s each (FUZZ_S={total})", flush=True)
    ok = True
    started = time.monotonic()
    for target in targets:
        passed, summary = run(target, share)
        ok &= passed
        print(summary, flush=True)
    print(f"{'no crash' if ok else 'CRASHES FOUND'} in {time.monotonic() - started:.0f} s; logs in fuzz/work/*.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
