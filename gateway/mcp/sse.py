"""Server-Sent Events framing (WHATWG HTML §9.2): splitting a byte stream into events and reading them.

Only what the gateway needs: pass events through one by one, and look inside an event's ``data`` when a
list result has to be filtered (Z4). Events are kept as raw bytes so untouched ones go out byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at a blank line; lines end in CRLF, LF or CR.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(r"\r\n|\r|\n")


class EventSplitter:
    """Feeds on chunks, yields complete raw events (each with its terminating blank line)."""

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024):
        self._buffer = b""
        self._max = max_event_bytes
        self._started = False

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip())

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        if not self._started and len(self._buffer) >= 3:
            self._started = True
            if self._buffer.startswith(b"\xef\xbb\xbf"):  # WHATWG: a leading BOM is not part of the stream
                self._buffer = self._buffer[3:]
        events = []
        start = 0
        for match in _EVENT_END.finditer(self._buffer):
            events.append(self._buffer[start:match.end()])
            start = match.end()
        self._buffer = self._buffer[start:]
        if len(self._buffer) > self._max:
            raise ValueError(f"an event grew beyond {self._max} bytes")
        return events


@dataclass(frozen=True, slots=True)
class Event:
    data: str | None  # None: no data lines at all (an event that only moves Last-Event-ID)
    event: str | None = None
    id: str | None = None


def parse_event(raw: bytes) -> Event:
    """The fields of one raw event. ``data`` lines are joined with newlines, as browsers do."""
    data: list[str] = []
    event = event_id = None
    for line in _LINE_END.split(raw.decode("utf-8")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    return Event(data="\n".join(data), event=event, id=event_id)


def format_event(event: Event) -> bytes:
    lines = []
    if event.event is not None:
        lines.append(f"event: {event.event}")
    if event.id is not None:
        lines.append(f"id: {event.id}")
    if event.data is not None:
        lines.extend(f"data: {line}" for line in event.data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")
