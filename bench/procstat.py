"""What a benchmark process (and its children) cost, read from /proc: CPU clock ticks and resident memory.

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (every thread of the process, in clock ticks of
``1 / SC_CLK_TCK`` seconds) summed over the process and all its descendants (workers), so a figure per
request is ``(after - before) / requests``. Nothing is subtracted: the upstream's own CPU is read the
same way and reported beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a scan of /proc by parent pid; cheap at a few hundred pids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4: ppid
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its descendants, in clock ticks."""
    total = 0
    for member in descendants(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat: utime, stime
    return total


def cpu_seconds(pid: int) -> float:
    return cpu_ticks(pid) * CLOCK_TICK_S


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants (pages shared between workers are counted in each)."""
    total = 0
    for member in descendants(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


def process_count(pid: int) -> int:
    return len(descendants(pid))


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, it names one process, never a reused pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None  # field 22 of stat
