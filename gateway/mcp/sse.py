"""Server-Sent Events framing (WHATWG HTML §9.2): splitting a byte stream into events and reading them.

Only what the gateway needs: pass events through one by one, and look inside an event's ``data`` when a
list result has to be filtered (Z4). Events are kept as raw bytes so untouched ones go out byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at a blank line; lines end in CRLF, LF or CR. A CR at the very end of what has arrived
# counts as a line end at once (an event is never held back waiting for the next byte, U4).
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(r"\r\n|\r|\n")
# The longest terminator (CRLF CRLF) is 4 bytes, so a terminator ending in a new chunk starts at most 3
# bytes before it: that much of the pending event is scanned again, and nothing older ever is.
_LOOK_BEHIND = 3
_BOM = b"\xef\xbb\xbf"
MAX_EVENT_BYTES = 16 * 1024 * 1024


class EventSplitter:
    """Feeds on chunks, yields complete raw events (each with its terminating blank line).

    Linear in the bytes fed (R4): the event in progress is kept as a list of chunks, and each chunk is
    scanned once, with a look-behind of 3 bytes for a terminator split across chunks. An event growing
    beyond ``max_event_bytes`` raises ``ValueError``.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self._pieces: list[bytes] = []  # the event in progress, in arrival order
        self._size = 0
        self._tail = b""  # its last bytes (at most _LOOK_BEHIND)
        self._max = max_event_bytes
        self._head: bytes | None = b""  # the stream's first bytes until the BOM question is settled

    @property
    def pending(self) -> bool:
        """Whether bytes other than whitespace wait for the end of their event."""
        return any(piece.strip() for piece in self._pieces) or bool(self._head and self._head.strip())

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._head is not None:
            # WHATWG: a leading BOM is not part of the stream. Wait until 3 bytes have come (or fewer
            # that cannot begin one); no BOM byte is CR or LF, so nothing is held back that could end an event.
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head[len(_BOM):] if head.startswith(_BOM) else head
        if not chunk:
            return []
        window = self._tail + chunk
        offset = len(self._tail)
        events: list[bytes] = []
        start = 0  # in window: where the event in progress begins, once its older pieces are out
        for match in _EVENT_END.finditer(window):
            end = match.end()
            if self._pieces:
                # The first event found carries the older pieces (they end with the look-behind bytes).
                self._pieces.append(chunk[:end - offset])
                events.append(b"".join(self._pieces))
                self._pieces = []
                self._size = 0
            else:
                events.append(window[start:end])
            start = end
        rest = window[max(start, offset):]
        if rest:
            self._pieces.append(rest)
            self._size += len(rest)
        # Only bytes of the event in progress may be looked at again: never the end of one already out.
        self._tail = rest[-_LOOK_BEHIND:] if start else window[-_LOOK_BEHIND:]
        if self._size > self._max:
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
