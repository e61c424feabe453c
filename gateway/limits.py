"""R3: each principal's fair share of the upstream.

``PrincipalLimiter`` owns, per principal (its issuer and Cedar id, I7), how many requests and streams it
has in flight and, when ``limits.per_principal.rate`` is set, a token bucket of ``burst`` requests refilled
at ``rate`` per second. ``acquire`` either hands out a ``Slot`` or raises ``TooManyRequests`` (429 with
``Retry-After``); the endpoint holds the slot for the whole request, a streamed answer included, and
releases it on every path. Finding 4 of the bounds review: without this, 1,024 held streams from one
principal took every pooled upstream connection and every other caller hung until ``response_timeout``.

Memory stays bounded however many valid principals an attacker has:

- an in-flight count exists only while it is above zero, so there are at most as many as requests in
  flight (``server.max_connections`` bounds those);
- a bucket is forgotten once it would be full again (``burst / rate`` seconds after its last use: a fresh
  bucket is then the same thing), and at most ``max_tracked`` are kept. Past that the least recently used
  bucket is dropped, which only refills that principal early: to gain from it, an attacker needs
  ``max_tracked`` principals active within one refill period, and each of them is still limited.

Keys are 16-byte digests, so an entry's size does not depend on how long a subject is. The clock is a
parameter, so rates are testable without sleeping.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from gateway.auth.principal import Principal
from gateway.config import PrincipalLimitsConfig
from gateway.errors import TooManyRequests

# How many token buckets are remembered at most (16-byte key and a small record each: a few MiB).
MAX_TRACKED = 16_384


def principal_key(principal: Principal) -> bytes:
    """I7: the same ``sub`` from two issuers is two principals, so two shares."""
    return hashlib.blake2b(f"{principal.issuer}\0{principal.entity_id}".encode(), digest_size=16).digest()


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class Slot:
    """One admitted request. ``release`` gives its place back; a second call does nothing."""

    __slots__ = ("_limiter", "_key")

    def __init__(self, limiter: PrincipalLimiter, key: bytes):
        self._limiter: PrincipalLimiter | None = limiter
        self._key = key

    def release(self) -> None:
        if self._limiter is not None:
            self._limiter._release(self._key)
            self._limiter = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class PrincipalLimiter:
    def __init__(
        self,
        config: PrincipalLimitsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ):
        self.concurrent = config.concurrent
        self.rate = config.rate
        self.burst = float(config.burst) if config.burst > 0 else max(1.0, config.rate)
        self.clock = clock
        self._in_flight: dict[bytes, int] = {}
        # A bucket left alone for burst/rate seconds is full again, so it may as well be forgotten.
        self._buckets: TTLCache[bytes, _Bucket] | None = (
            TTLCache(maxsize=max_tracked, ttl=self.burst / self.rate, timer=clock) if self.rate > 0 else None
        )

    def acquire(self, principal: Principal) -> Slot:
        """A slot for one request of ``principal``, or ``TooManyRequests`` when it is over its share.

        A refused request takes nothing: neither a slot nor a token from the bucket.
        """
        key = principal_key(principal)
        held = self._in_flight.get(key, 0)
        if held >= self.concurrent:
            # When a slot frees is up to the principal's own requests; a second is a fair guess.
            raise TooManyRequests("principal_concurrency", f"{held} requests in flight (limits.per_principal.concurrent)")
        if self._buckets is not None:
            self._take_token(self._buckets, key)
        self._in_flight[key] = held + 1
        return Slot(self, key)

    def _take_token(self, buckets: TTLCache[bytes, _Bucket], key: bytes) -> None:
        now = self.clock()
        bucket = buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise TooManyRequests("principal_rate", f"over {self.rate:g} requests/s (limits.per_principal.rate)",
                                  retry_after=math.ceil(wait))
        bucket.tokens -= 1
        buckets[key] = bucket  # (re)starts its time to be forgotten

    def _release(self, key: bytes) -> None:
        held = self._in_flight.get(key, 0) - 1
        if held > 0:
            self._in_flight[key] = held
        else:
            self._in_flight.pop(key, None)

    def in_flight(self, principal: Principal) -> int:
        return self._in_flight.get(principal_key(principal), 0)

    @property
    def tracked(self) -> int:
        """Entries kept now (in-flight counts and buckets), for tests and metrics: the memory bound."""
        if self._buckets is not None:
            self._buckets.expire()
        return len(self._in_flight) + (len(self._buckets) if self._buckets is not None else 0)
