"""R2: a memo bounded in bytes, for computed answers that are worth keeping for a while.

Used for filtered list answers (``Authorizer.filtered_lists``): servers answer ``tools/list`` with the
same bytes again and again, so the same caller scope gets the same filtered bytes from here. A count bound
alone is no memory bound (10,000 entries of 3 MB each is 30 GB), so the memo counts the bytes it holds:

- the whole memo holds at most ``MEMO_BUDGET_BYTES`` (oldest entries leave first, and every entry ages
  out after ``MEMO_TTL_S``);
- one entry larger than ``MEMO_ENTRY_MAX_BYTES`` is never stored (``remembers`` says so beforehand), so one
  big answer cannot flush everything else, and the memo never raises for a large value.

What goes in is the caller's business: ``ListFilter`` stores list answers only, never an answer that
held no list (R2: answers without a list are never retained).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

# 16 MiB in all: a few hundred typical filtered tools/list answers (500 tools is ~200 KB), small beside
# the shipped 256Mi container limit.
MEMO_BUDGET_BYTES = 16 * 1024 * 1024
# An answer over 1 MiB is filtered afresh every time: rare, and keeping it would crowd out the rest.
MEMO_ENTRY_MAX_BYTES = 1024 * 1024
MEMO_TTL_S = 300.0
# What one entry costs besides its value: the key (two 32-byte digests in a tuple), the cache's own
# dictionary slots and expiry link. Counted so that many tiny entries are bounded too.
ENTRY_OVERHEAD_BYTES = 512


def entry_size(value: bytes | None) -> int:
    """The bytes one memo entry is counted as (``None`` values, e.g. a dropped event, cost the overhead)."""
    return ENTRY_OVERHEAD_BYTES + (len(value) if value is not None else 0)


def remembers(value: bytes | None) -> bool:
    """Whether a value this size may be stored at all."""
    return entry_size(value) <= MEMO_ENTRY_MAX_BYTES


class ByteBoundedMemo(TTLCache):
    """A ``TTLCache`` whose ``maxsize`` and ``currsize`` are bytes (``entry_size`` of each value).

    Warning: storing a value over the per-entry cap is silently skipped (it is a memo: a miss only costs
    a recomputation), so ``memo[key] = value`` does not guarantee ``key in memo`` afterwards.
    """

    def __init__(self, budget_bytes: int = MEMO_BUDGET_BYTES, *, entry_max_bytes: int = MEMO_ENTRY_MAX_BYTES,
                 ttl: float = MEMO_TTL_S, timer: Callable[[], float] = time.monotonic):
        super().__init__(maxsize=budget_bytes, ttl=ttl, timer=timer, getsizeof=entry_size)
        self.entry_max_bytes = min(entry_max_bytes, budget_bytes)

    def __setitem__(self, key: Any, value: bytes | None) -> None:
        if entry_size(value) > self.entry_max_bytes:
            self.pop(key, None)  # a stale smaller value under the same key must not outlive this one
            return
        super().__setitem__(key, value)
