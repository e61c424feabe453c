"""S1, S2: the DPoP replay window: a proof's ``jti`` is accepted once while its ``iat`` would be accepted.

Two stores behind one seam, ``ReplayWindow.first_use(key, ttl)``:

- ``MemoryReplayWindow`` (the default): this process only. At most ``auth.dpop.jti_cache_size`` entries;
  when every entry is still inside its window the next proof is refused with 503 (never accepted: an
  evicted jti could be replayed). Entries are hashes of (key thumbprint, jti), 32 bytes each.
- ``RedisReplayWindow`` (``state.redis_url``): ``SET key 1 NX EX ttl``, so replicas sharing one Redis
  refuse a proof replayed from one to another. Redis unreachable, slow beyond ``state.timeout`` or
  answering anything unexpected → 503 with Retry-After: a replay check that cannot be made never passes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.errors import VerifierUnavailable

log = logging.getLogger(__name__)


class ReplayWindow(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def first_use(self, key: bytes, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds; False for a replay."""
        ...


def _unavailable(reason: str, detail: str) -> VerifierUnavailable:
    error = VerifierUnavailable(reason, detail)
    error.retry_after = 1
    return error


class MemoryReplayWindow:
    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.clock = clock
        self._expiries: OrderedDict[bytes, float] = OrderedDict()  # in insertion order; one ttl → expiry order

    def __len__(self) -> int:
        return len(self._expiries)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def first_use(self, key: bytes, ttl: float) -> bool:
        now = self.clock()
        while self._expiries:
            oldest, expiry = next(iter(self._expiries.items()))
            if expiry > now:
                break
            del self._expiries[oldest]
        expiry = self._expiries.get(key)
        if expiry is not None and expiry > now:
            return False
        if len(self._expiries) >= self.max_entries:
            raise _unavailable("dpop_replay_window_full", f"{len(self._expiries)} proofs inside their window "
                                                          "(auth.dpop.jti_cache_size; state.redis_url holds more)")
        self._expiries[key] = now + ttl
        return True


class RedisReplayWindow:
    def __init__(self, url: str, *, timeout: float, prefix: str):
        self._url = url
        self.timeout = timeout
        self.prefix = prefix.encode()
        self._client = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        # No retries inside the client: one bounded attempt, and the answer is 503 when it fails.
        self._client = aioredis.Redis.from_url(
            self._url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry_on_timeout=False, retry=None, max_connections=64, health_check_interval=30)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def first_use(self, key: bytes, ttl: float) -> bool:
        import redis

        if self._client is None:
            raise _unavailable("replay_store_unavailable", "RedisReplayWindow.start() was not awaited")
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._client.set(self.prefix + key.hex().encode(), b"1", nx=True, ex=max(1, math.ceil(ttl)))
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise _unavailable("replay_store_unavailable", f"Redis: {type(exc).__name__}") from None
        if answer is True:
            return True
        if answer is None:
            return False
        raise _unavailable("replay_store_unavailable", f"Redis answered SET NX with {type(answer).__name__}")
