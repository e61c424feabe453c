"""U5: an ``Mcp-Session-Id`` belongs to the (issuer, subject) that opened it.

The binding is made when the upstream hands out a session id (on the answer to ``initialize``) and is
checked on every later request that carries one. A session id the gateway has not seen is refused like
one of somebody else's: 404, which MCP clients answer by starting a new session (MCP 2025-11-25
transports). Bindings live in memory, so run one gateway per upstream (the sidecar pattern) or route a
session's requests to the same gateway.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from cachetools import TTLCache

from gateway.auth.principal import Principal
from gateway.errors import NotFound, UpstreamError

Owner = tuple[str, str]


def _key(session_id: str) -> bytes:
    # Session ids are bearer-like secrets for the upstream; keep only their hash.
    return hashlib.sha256(session_id.encode()).digest()


class SessionBindings:
    def __init__(self, *, max_sessions: int = 100_000, idle_ttl: float = 24 * 3600, clock: Callable[[], float] = time.monotonic):
        self._owners: TTLCache[bytes, Owner] = TTLCache(maxsize=max_sessions, ttl=idle_ttl, timer=clock)

    def check(self, session_id: str | None, principal: Principal) -> None:
        if session_id is None:
            return
        key = _key(session_id)
        owner = self._owners.get(key)
        if owner != (principal.issuer, principal.subject):
            reason = "session_unknown" if owner is None else "session_of_another_principal"
            raise NotFound(reason, "Mcp-Session-Id is not bound to this caller", message="Session not found")
        self._owners[key] = owner  # refresh the idle timer

    def bind(self, session_id: str, principal: Principal) -> None:
        if not (session_id.isascii() and session_id.isprintable()) or " " in session_id:
            # MCP transports: a session id is visible ASCII. Clients could not send another back (I4 refuses it).
            raise UpstreamError("upstream_bad_session_id", "the upstream's Mcp-Session-Id is not visible ASCII")
        key = _key(session_id)
        if key not in self._owners:
            self._owners[key] = (principal.issuer, principal.subject)

    def forget(self, session_id: str) -> None:
        self._owners.pop(_key(session_id), None)
