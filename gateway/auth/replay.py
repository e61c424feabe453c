"""S1, S2: the DPoP replay window: a proof's ``jti`` is accepted once while its ``iat`` would be accepted.

Two stores behind one seam, ``ReplayWindow.first_use(key, ttl)``:

- ``MemoryReplayWindow`` (the default): this process only. At most ``auth.dpop.jti_cache_size`` entries;
  when every entry is still inside its window the next proof is refused with 503 (never accepted: an
  evicted jti could be replayed). Entries are hashes of (key thumbprint, jti), 32 bytes each. One
  principal (``owner``) holds at most a tenth of them (``OWNER_SHARE``, at least 100); beyond, its proofs get 429 with
  Retry-After and everyone else's still fit (R3: one valid token holder sending fresh proofs as fast as it
  can filled the window, and then every DPoP caller of the process got 503).
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
from typing import Any, Protocol

from gateway.errors import TooManyRequests, VerifierUnavailable

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # to Redis, per process
OWNER_SHARE = 10  # a principal may hold 1/OWNER_SHARE of the memory window,
OWNER_MINIMUM = 100  # and at least this many entries (all of a smaller window)


class ReplayWindow(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def first_use(self, key: bytes, ttl: float, owner: bytes = b"") -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds; False for a replay. ``owner``: who
        the entry is for (a principal's key), so that no one caller can take the whole window."""
        ...


def _unavailable(reason: str, detail: str) -> VerifierUnavailable:
    error = VerifierUnavailable(reason, detail)
    error.retry_after = 1
    return error


class MemoryReplayWindow:
    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.per_owner = max(max_entries // OWNER_SHARE, min(max_entries, OWNER_MINIMUM))
        self.clock = clock
        # key -> (expiry, owner), in insertion order; one ttl → expiry order
        self._expiries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._owned: dict[bytes, int] = {}  # owner -> live entries (only owners that have some)

    def __len__(self) -> int:
        return len(self._expiries)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def first_use(self, key: bytes, ttl: float, owner: bytes = b"") -> bool:
        now = self.clock()
        while self._expiries:
            oldest, (expiry, holder) = next(iter(self._expiries.items()))
            if expiry > now:
                break
            del self._expiries[oldest]
            self._owned[holder] -= 1
            if not self._owned[holder]:
                del self._owned[holder]
        if key in self._expiries:
            return False
        if len(self._expiries) >= self.max_entries:
            raise _unavailable("dpop_replay_window_full", f"{len(self._expiries)} proofs inside their window "
                                                          "(auth.dpop.jti_cache_size; state.redis_url holds more)")
        if self._owned.get(owner, 0) >= self.per_owner:
            raise TooManyRequests("dpop_replay_share_used", f"this principal has {self.per_owner} proofs inside their "
                                  f"window, its share of auth.dpop.jti_cache_size")
        self._expiries[key] = (now + ttl, owner)
        self._owned[owner] = self._owned.get(owner, 0) + 1
        return True


class RedisReplayWindow:
    def __init__(self, url: str, *, timeout: float, prefix: str):
        self._url = url
        self.timeout = timeout
        self.prefix = prefix.encode()
        self._client: Any = None
        self._pool: Any = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        # No retries inside the client: one bounded attempt, and the answer is 503 when it fails. A request
        # that finds all MAX_CONNECTIONS busy waits for one (within state.timeout): the plain pool raised
        # MaxConnectionsError at once, so a burst of 200 concurrent valid proofs got 137 answers of 503.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, max_connections=MAX_CONNECTIONS, timeout=self.timeout, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, retry_on_timeout=False, retry=None, health_check_interval=30)
        self._pool, self._client = pool, aioredis.Redis(connection_pool=pool)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            await self._pool.disconnect()  # a pool given to Redis() is the giver's to close
            self._client = None

    async def first_use(self, key: bytes, ttl: float, owner: bytes = b"") -> bool:
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
