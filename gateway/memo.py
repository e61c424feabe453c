"""R2: memos bounded in bytes, for computed answers that are worth keeping for a while.

A count bound alone is no memory bound (10,000 entries of 3 MB each is 30 GB), so a ``ByteBudgetCache``
counts the bytes it holds, key and value, as ``sizeof(key, value)`` says:

- the whole cache holds at most ``budget_bytes`` (the oldest entries leave first, and every entry ages out
  ``ttl`` seconds after it was stored);
- one entry larger than ``entry_max_bytes`` is never stored, so one big answer cannot flush everything
  else, and the cache never raises for a large value (it is a memo: a miss only costs a recomputation).

Used for Cedar decisions and listing decisions (``gateway.authz.cedar``, each with its own budget) and,
as ``ByteBoundedMemo``, for filtered list answers (``Authorizer.filtered_lists``): servers answer
``tools/list`` with the same bytes again and again, so the same caller scope gets the same filtered
bytes from here. What goes in is the caller's business: ``ListFilter`` stores list answers only, never an
answer that held no list (R2: answers without a list are never retained).

Entries are kept in the order they were stored (storing again moves an entry to the end), which is also
the order in which they expire, so expiry and eviction both take from the front: each costs O(1), and a
look-up never reorders anything (P1: a hit on the hot path is one dictionary look-up and a clock read).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Filtered list answers: 16 MiB in all, a few hundred typical answers (500 tools is ~200 KB), small beside
# the shipped 256Mi container limit.
MEMO_BUDGET_BYTES = 16 * 1024 * 1024
# An answer over 1 MiB is filtered afresh every time: rare, and keeping it would crowd out the rest.
MEMO_ENTRY_MAX_BYTES = 1024 * 1024
MEMO_TTL_S = 300.0
# What one entry costs besides the bytes of its value: the key (two 32-byte digests in a tuple), the
# cache's own dictionary slot and record. Counted so that many tiny entries are bounded too.
ENTRY_OVERHEAD_BYTES = 512

_MISSING: Any = object()


class ByteBudgetCache(MutableMapping[K, V]):
    """A TTL cache whose bound is bytes: ``currsize`` (the sum of ``sizeof(key, value)`` over the entries)
    never exceeds ``maxsize``. Not thread-safe (the gateway uses it from its event loop only).

    Warning: storing an entry over ``entry_max_bytes`` is silently skipped (and drops an older value under
    that key), so ``cache[key] = value`` does not guarantee ``key in cache`` afterwards.
    """

    def __init__(self, budget_bytes: int, *, sizeof: Callable[[K, V], int], entry_max_bytes: int | None = None,
                 ttl: float = MEMO_TTL_S, timer: Callable[[], float] = time.monotonic):
        self.maxsize = budget_bytes
        self.entry_max_bytes = budget_bytes if entry_max_bytes is None else min(entry_max_bytes, budget_bytes)
        self.currsize = 0
        self.ttl = ttl
        self.timer = timer
        self._sizeof = sizeof
        self._entries: OrderedDict[K, tuple[V, float, int]] = OrderedDict()  # key -> (value, expires, size)

    def get(self, key: K, default: Any = None) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry[1] <= self.timer():
            self._drop(key)
            return default
        return entry[0]

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __setitem__(self, key: K, value: V) -> None:
        size = self._sizeof(key, value)
        if key in self._entries:
            self._drop(key)
        if size > self.entry_max_bytes:
            return
        now = self.timer()
        self.expire(now)
        while self._entries and self.currsize + size > self.maxsize:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (value, now + self.ttl, size)
        self.currsize += size

    def __delitem__(self, key: K) -> None:
        if key not in self._entries:
            raise KeyError(key)
        self._drop(key)

    def _drop(self, key: K) -> None:
        self.currsize -= self._entries.pop(key)[2]

    def expire(self, now: float | None = None) -> None:
        """Drop the entries whose time is up (they are at the front)."""
        now = self.timer() if now is None else now
        entries = self._entries
        while entries:
            key, (_, expires, _) = next(iter(entries.items()))
            if expires > now:
                break
            self._drop(key)

    def clear(self) -> None:
        self._entries = OrderedDict()  # O(1) here; the old entries are freed as one
        self.currsize = 0

    def __iter__(self) -> Iterator[K]:
        self.expire()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.expire()
        return len(self._entries)


def entry_size(value: bytes | None) -> int:
    """The bytes one memo entry is counted as (``None`` values, e.g. a dropped event, cost the overhead)."""
    return ENTRY_OVERHEAD_BYTES + (len(value) if value is not None else 0)


def remembers(value: bytes | None) -> bool:
    """Whether a value this size may be stored at all."""
    return entry_size(value) <= MEMO_ENTRY_MAX_BYTES


class ByteBoundedMemo(ByteBudgetCache[Any, "bytes | None"]):
    """Filtered list answers: ``maxsize`` and ``currsize`` are bytes (``entry_size`` of each value)."""

    def __init__(self, budget_bytes: int = MEMO_BUDGET_BYTES, *, entry_max_bytes: int = MEMO_ENTRY_MAX_BYTES,
                 ttl: float = MEMO_TTL_S, timer: Callable[[], float] = time.monotonic):
        super().__init__(budget_bytes, sizeof=lambda _key, value: entry_size(value), entry_max_bytes=entry_max_bytes,
                         ttl=ttl, timer=timer)
