"""E4: one structured audit event per decision, as a JSON line on stdout or in ``audit.file``.

Fields: time, request_id, issuer, subject, client_id, method, target (tool, prompt or resource), outcome,
reason, policies (the ids of the policies that decided), policy_version, latency_ms. Never a token: the
target (a resource URI may carry one) is redacted like log fields.

P1: every event is kept, none is sampled; what is saved is the cost of writing them one by one. An event is
formatted once, by hand, into a buffer; the buffer is written and flushed ``AUDIT_FLUSH_S`` after its first
event (or as soon as it holds ``AUDIT_BUFFER_BYTES``), and by ``close`` at shut-down (E3: the SIGTERM path
runs the gateway's cleanup, which closes the audit log), so no event is lost at exit. Without a running
event loop to flush later (a script, a test), an event is written at once.

Warning: a write that fails keeps the buffered events and puts the log in a failing state, in which each
new event is written at once; when that fails too, ``record`` raises and the request being audited is
refused (500) without its event, as when every event was written on its own. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import select
import stat
import sys
import time
from json.encoder import encode_basestring_ascii as _json_string
from typing import IO, Any

from gateway.config import AuditConfig
from gateway.observe.logs import json_scalar, redact

log = logging.getLogger(__name__)

# Well inside "flushed within a second": a crash loses at most this much, and 5 writes a second cost nothing.
AUDIT_FLUSH_S = 0.2
AUDIT_BUFFER_BYTES = 256 * 1024  # a busy second's worth is written without waiting for the timer
_ENCODER = json.JSONEncoder(default=str)
_KEYS: dict[str, str] = {}  # ', "name": ' per field name (a handful, from the endpoint's calls)


def _json_value(value: Any) -> str:
    """``value`` as ``json.dumps(value, default=str)`` writes it; the common kinds without the encoder."""
    text = json_scalar(value)
    if text is not None:
        return text
    if type(value) in (tuple, list) and all(type(item) is str for item in value):
        return "[" + ", ".join(map(_json_string, value)) + "]"
    return _ENCODER.encode(value)


class AuditLog:
    def __init__(self, config: AuditConfig, stream: IO[str] | None = None, *, flush_after: float = AUDIT_FLUSH_S):
        self.enabled = config.enabled
        self.flush_after = flush_after
        self._stream = stream
        self._path = config.file
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second: tuple[int, str] = (-1, "")
        self._closed = False
        self._failure: Exception | None = None
        self._owned = False  # a file this log opened (and so closes)
        self._piece: int | None = None  # the largest write that reaches the output whole, if there is one

    def _out(self) -> IO[str]:
        if self._stream is None:
            self._stream = open(self._path, "a", encoding="utf-8") if self._path else sys.stdout  # noqa: SIM115
            self._owned = self._path is not None
            try:
                regular = stat.S_ISREG(os.fstat(self._stream.fileno()).st_mode)
            except (OSError, ValueError, io.UnsupportedOperation):
                regular = True  # not a file at all (a test's StringIO): nobody else writes to it
            # A pipe (stdout in a container) is shared by the workers (server.workers): only writes of at
            # most PIPE_BUF bytes reach it whole, so a batch goes in pieces of whole lines that size. A
            # file opened for appending takes every write whole.
            self._piece = None if regular else select.PIPE_BUF
        return self._stream

    def _time(self, now: float) -> str:
        second = int(now)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)))
        return f"{self._second[1]}.{int(now % 1 * 1000):03d}Z"

    def record(self, **fields: Any) -> None:
        if not self.enabled:
            return
        parts = ['{"time": "', self._time(time.time()), '", "type": "audit"']
        append = parts.append
        for key, value in fields.items():
            kind = type(value)
            if kind is str:
                # The target is the one free-form value a client chooses: a resource URI may carry
                # ?access_token=... (I9).
                text = _json_string(redact(value) if key == "target" else value)
            elif value is None:
                continue
            elif kind is int or kind is float and math.isfinite(value):
                text = repr(value)
            else:
                text = _json_value(value)
            name = _KEYS.get(key)
            if name is None:
                name = _KEYS[key] = f", {_json_string(key)}: "
            append(name)
            append(text)
        append("}\n")
        line = "".join(parts)
        self._lines.append(line)
        self._size += len(line)
        if self._failure is not None or self._closed or self._size >= AUDIT_BUFFER_BYTES:
            self._write_now(line)
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # nobody to flush later: now
                self.flush()
                return
            self._timer = loop.call_later(self.flush_after, self.flush)

    def _write_now(self, line: str) -> None:
        if self.flush():
            return
        # The write failed: this event's request is refused (500) rather than let through unaudited, so its
        # event goes; the events before it (of requests already answered) stay buffered for the next write.
        if self._lines and self._lines[-1] is line:
            self._lines.pop()
            self._size -= len(line)
        raise OSError(f"audit log not writable: {self._failure}") from self._failure

    def flush(self) -> bool:
        """Write and flush what is buffered; False (events kept) when the write failed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return True
        written = 0  # lines written (and flushed) so far
        try:
            out = self._out()
            for end in self._pieces():
                out.write("".join(self._lines[written:end]))
                out.flush()
                written = end
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            if self._failure is None:
                log.error("audit log write failed (%s); events are kept and requests refused until it works", exc)
            self._failure = exc
            del self._lines[:written]
            self._size = sum(map(len, self._lines))
            return False
        if self._failure is not None:
            log.warning("audit log writable again")
            self._failure = None
        self._lines.clear()
        self._size = 0
        return True

    def _pieces(self) -> list[int]:
        """Where each write ends (a line count): one write for a file, pieces of at most PIPE_BUF bytes for a
        pipe (the lines are ASCII: json escapes the rest, so characters are bytes)."""
        if self._piece is None:
            return [len(self._lines)]
        ends, size = [], 0
        for index, line in enumerate(self._lines):
            if size and size + len(line) > self._piece:
                ends.append(index)
                size = 0
            size += len(line)
        ends.append(len(self._lines))
        return ends

    def close(self) -> None:
        """Flush everything (E3, E4); later events, if any, are written at once."""
        self._closed = True
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
            self._stream, self._owned = None, False
