"""U5, P4: an ``Mcp-Session-Id`` belongs to the (issuer, subject) that opened it, with no shared store.

The client never sees the upstream's session id. When the upstream hands one out (the answer to
``initialize``), the gateway gives the client a *wrapped* id instead::

    g1.<base64url: issued-at, 8 bytes><base64url: the upstream's id>.<base64url: MAC, 16 bytes>

where the MAC is HMAC-SHA256 under the session key over a purpose label (``mcp-session``), the
issued-at time, the upstream's id and the principal (issuer and subject). ``BoundHandles`` is that seal
for any server-minted handle; task ids use it with the label ``mcp-task`` (``gateway.mcp.tasks``), so
neither kind ever passes for the other. On every later request the gateway recomputes the MAC for the caller:
an id made for another principal, tampered with, made under another key, older than ``max_age``, or
ended by a ``DELETE`` seen here is refused like an unknown one, with 404, which MCP clients answer by
starting a new session (MCP 2025-11-25 transports). A good one is unwrapped and the upstream's own id is
forwarded. Any worker or replica holding the same key (``server.session_key_file``) verifies it, so a
session moves between them freely: nothing needs session affinity.

A ``DELETE`` ends the session upstream (which then refuses the upstream id) and is remembered here for
``max_age``, so this gateway refuses the wrapped id at once (replicas learn it from the upstream's 404).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import struct
import time
from collections.abc import Callable
from pathlib import Path

from cachetools import TTLCache

from gateway.auth.principal import Principal
from gateway.errors import NotFound, UpstreamError

log = logging.getLogger(__name__)

PREFIX = "g1."
MAC_BYTES = 16
DEFAULT_MAX_AGE = 24 * 3600.0
MIN_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: one spelling per value. The last character of unpadded base64 carries unused bits, so
    "…Q" and "…R" can decode alike; a session ended by DELETE must not come back under another spelling."""
    if "=" in text:
        raise ValueError("padded")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def load_session_key(path: Path | None) -> bytes:
    """The key from ``server.session_key_file`` (at least 32 bytes), or a fresh one for this process.

    One trailing line end is not part of the key (``openssl rand -base64 48 > key`` writes one); nothing else
    is removed, so a binary key keeps every byte (stripping all whitespace shortened random keys)."""
    if path is None:
        return secrets.token_bytes(32)
    key = path.read_bytes().removesuffix(b"\n").removesuffix(b"\r")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: a session key needs at least {MIN_KEY_BYTES} bytes")
    return key


class BoundHandles:
    """Server-minted handles of one kind (``purpose``), sealed to the principal that received them.

    The purpose label is inside the MAC, so a handle made for one purpose (a session id) never verifies
    as one of another (a task id, ``gateway.mcp.tasks``), though both share the key and the format."""

    def __init__(self, key: bytes | None = None, *, purpose: bytes, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time):
        self._key = key or secrets.token_bytes(32)
        self._purpose = purpose + b"\0"
        self.max_age = max_age
        self._clock = clock

    def sibling(self, purpose: bytes) -> BoundHandles:
        """Handles of another kind under the same key, clock and age limit."""
        return BoundHandles(self._key, purpose=purpose, max_age=self.max_age, clock=self._clock)

    def _mac(self, issued: bytes, upstream_id: bytes, principal: Principal) -> bytes:
        owner = f"{principal.issuer}\0{principal.subject}".encode()
        message = self._purpose + issued + struct.pack(">I", len(upstream_id)) + upstream_id + owner
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]

    def seal(self, upstream_id: str, principal: Principal) -> str:
        issued = struct.pack(">Q", int(self._clock()))
        raw = upstream_id.encode()
        return f"{PREFIX}{_b64(issued + raw)}.{_b64(self._mac(issued, raw, principal))}"

    def open(self, handle: str, principal: Principal) -> str:
        """The upstream's id inside ``handle`` if it was sealed for ``principal`` with this purpose; else
        ``HandleRefused`` (its ``reason``: ``unknown`` or ``expired``)."""
        try:
            if not handle.startswith(PREFIX):
                raise ValueError("not ours")
            body, _, mac = handle[len(PREFIX):].partition(".")
            data, given = _unb64(body), _unb64(mac)
            if len(data) < 9 or len(given) != MAC_BYTES:
                raise ValueError("short")
            issued, raw = data[:8], data[8:]
            if not hmac.compare_digest(given, self._mac(issued, raw, principal)):
                # Tampered, another key, another purpose or another principal's: the MAC cannot tell which.
                raise ValueError("mac")
            upstream_id = raw.decode("utf-8")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise HandleRefused("unknown") from None
        if self._clock() - struct.unpack(">Q", issued)[0] > self.max_age:
            raise HandleRefused("expired")
        return upstream_id


class HandleRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SessionBindings(BoundHandles):
    def __init__(self, key: bytes | None = None, *, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time, max_ended: int = 100_000):
        super().__init__(key, purpose=b"mcp-session", max_age=max_age, clock=clock)
        # Wrapped ids ended by a DELETE through this gateway (digests only: they are bearer-like).
        self._ended: TTLCache[bytes, bool] = TTLCache(maxsize=max_ended, ttl=max_age, timer=clock)

    def wrap(self, upstream_id: str, principal: Principal) -> str:
        """The id the client gets for the upstream's ``upstream_id``."""
        if not (upstream_id.isascii() and upstream_id.isprintable()) or " " in upstream_id:
            # MCP transports: a session id is visible ASCII. Clients could not send another back (I4 refuses it).
            raise UpstreamError("upstream_bad_session_id", "the upstream's Mcp-Session-Id is not visible ASCII")
        return self.seal(upstream_id, principal)

    def unwrap(self, session_id: str, principal: Principal) -> str:
        """The upstream's id inside ``session_id``, if it was made for ``principal``; else 404."""
        try:
            upstream_id = self.open(session_id, principal)
            if hashlib.sha256(session_id.encode()).digest() in self._ended:
                raise HandleRefused("ended")
            if not upstream_id.isascii():
                raise HandleRefused("unknown")
        except HandleRefused as refused:
            raise NotFound(f"session_{refused.reason}", "Mcp-Session-Id is not bound to this caller",
                           message="Session not found") from None
        return upstream_id

    def forget(self, session_id: str) -> None:
        """A DELETE of ``session_id`` succeeded: refuse it from now on."""
        self._ended[hashlib.sha256(session_id.encode()).digest()] = True
