"""O3: every worker's metrics in one scrape, through memory the workers of one start share.

``server.workers`` processes each count for themselves; a scrape reaches one of them (``SO_REUSEPORT``).
So before the workers are forked, the parent maps one anonymous shared region (``mmap``, no file: it
works on a read-only root filesystem and vanishes with the process tree) with a slot per worker. Each
worker writes a snapshot of its metrics (the samples of every family, as JSON) into its own slot at
least once a second and before it answers a scrape; the worker that answers reads every slot and merges
them (``gateway.observe.metrics``).

A slot is ``generation (u64) | pid (u32) | written at (f64, wall clock) | length (u32) | CRC-32 (u32)``
and the payload. A write is one copy into the slot; a reader copies the slot and checks length and
CRC, and reads again if it caught a write half done (no lock, nothing to leave held by a dead process).

Never backwards: a worker's counters only grow, it writes them to its slot before it shows them, and a
reader keeps the last good snapshot of each slot for when a slot cannot be read. A worker that starts in
a slot another process wrote before (a restarted worker, given the same index) carries that snapshot's
counters on (``carried``), so the sums go on from where they were.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SLOT_BYTES = 256 * 1024  # a snapshot is a few KiB (labels are bounded vocabularies, gateway.observe.metrics)
_HEADER = struct.Struct("<QIdII")  # generation, pid, written at, payload length, CRC-32 of the payload
_READ_ATTEMPTS = 5

Snapshot = list[dict[str, Any]]  # families: {"name", "type", "help", "samples": [[name, {labels}, value], ...]}


@dataclass(frozen=True, slots=True)
class SlotReading:
    generation: int
    pid: int
    written_at: float
    families: Snapshot


class SharedSlots:
    """The region, mapped before the workers are forked (each inherits the same pages)."""

    def __init__(self, workers: int, *, slot_bytes: int = SLOT_BYTES):
        self.workers = workers
        self.slot_bytes = slot_bytes
        self._memory = mmap.mmap(-1, workers * slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS

    def slot(self, index: int) -> WorkerSlot:
        if not 0 <= index < self.workers:
            raise ValueError(f"no slot {index} of {self.workers}")
        return WorkerSlot(self, index)

    def write(self, index: int, generation: int, families: Snapshot) -> bool:
        """False (nothing written) when the snapshot does not fit the slot."""
        payload = json.dumps(families, separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > self.slot_bytes:
            return False
        start = index * self.slot_bytes
        header = _HEADER.pack(generation, os.getpid(), time.time(), len(payload), zlib.crc32(payload))
        self._memory[start:start + _HEADER.size + len(payload)] = header + payload
        return True

    def read(self, index: int) -> SlotReading | None:
        """The slot's snapshot; None when it was never written or cannot be read whole."""
        start = index * self.slot_bytes
        for attempt in range(_READ_ATTEMPTS):
            generation, pid, written_at, length, crc = _HEADER.unpack_from(self._memory, start)
            if generation == 0:
                return None
            length = min(length, self.slot_bytes - _HEADER.size)
            payload = self._memory[start + _HEADER.size:start + _HEADER.size + length]
            if zlib.crc32(payload) == crc:
                try:
                    return SlotReading(generation, pid, written_at, json.loads(payload))
                except ValueError:
                    pass
            time.sleep(0.0005 * (attempt + 1))  # a write was under way: it is one copy, so it ends soon
        return None

    def close(self) -> None:
        self._memory.close()


class WorkerSlot:
    """One worker's place in the region: what it writes, and what a process before it left there."""

    def __init__(self, slots: SharedSlots, index: int):
        self.slots = slots
        self.index = index
        previous = slots.read(index)
        self._generation = previous.generation if previous is not None else 0
        # A restarted worker goes on from its predecessor's counters (never backwards).
        self.carried: Snapshot = previous.families if previous is not None and previous.pid != os.getpid() else []
        self._too_large = False

    def write(self, families: Snapshot) -> None:
        self._generation += 1
        if not self.slots.write(self.index, self._generation, families):
            if not self._too_large:
                self._too_large = True
                log.error("metrics snapshot of worker %d is over %d bytes; other workers' scrapes show its "
                          "last one that fitted", self.index, self.slots.slot_bytes)

    def others(self) -> list[tuple[int, SlotReading | None]]:
        return [(index, self.slots.read(index)) for index in range(self.slots.workers) if index != self.index]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
