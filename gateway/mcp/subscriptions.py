"""M3: ``notifications/resources/updated`` reaches a caller only for a resource it may read.

MCP 2026-07-28 ``subscriptions/listen`` opens a stream on which the server sends, among others,
``notifications/resources/updated`` for the URIs the client named in ``resourceSubscriptions`` (2025-11-25
sends them on the GET stream after ``resources/subscribe``). Which URIs a client names is its choice, and
what an upstream sends is the upstream's, so each update is decided as if the caller had asked
``resources/read`` on ``Resource::"<uri>"`` (the authorizer's decision cache makes a repeated URI a
dictionary look-up), and a denied one is dropped.

Read the way the most lenient client reads it (as ``gateway.mcp.listing`` does): a member that folds to
``method`` with a value that folds to ``notifications/resources/updated`` makes a message an update;
an update is passed only with exactly one ``params`` and in it exactly one ``uri``, a string, each spelled
exactly. On a ``subscriptions/listen`` stream (``strict``) every event is read, and one that is not JSON is
dropped (fail closed). Elsewhere only frames that can mention the method are read.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from gateway.errors import UpstreamError
from gateway.mcp.listing import fold
from gateway.mcp.sse import Event, format_event, parse_event

log = logging.getLogger(__name__)

UPDATED = "notifications/resources/updated"
# The method's last word in any letter case, or an escaped ASCII letter that could spell it (``upd\u0061ted``).
_MAY_MENTION = re.compile(rb"updated|\\u00[4-7][0-9a-fA-F]", re.IGNORECASE)


def may_mention(raw: bytes) -> bool:
    """False only for an answer that cannot hold a update this module rewrites (the proxy's pre-check)."""
    return _MAY_MENTION.search(raw) is not None


def _members(obj: dict[str, Any], name: str) -> list[str]:
    return [key for key in obj if fold(key) == name]


def _is_update(message: Any) -> bool:
    return isinstance(message, dict) and any(
        isinstance(message[key], str) and fold(message[key]) == UPDATED for key in _members(message, "method"))


class UpdateFilter:
    """``may_read(uri)``: the caller's ``resources/read`` decision on ``Resource::"<uri>"``."""

    def __init__(self, may_read: Callable[[str], bool], *, strict: bool = False, max_bytes: int = 8 * 1024 * 1024):
        self._may_read = may_read
        self.strict = strict
        self.dropped = 0
        self._max_bytes = max_bytes  # R2: the largest event read (upstream.max_list_bytes, as for lists)

    def passes(self, message: Any) -> bool:
        if not isinstance(message, dict):
            return True
        if not _is_update(message):
            return True
        methods = _members(message, "method")
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        if (methods != ["method"] or _members(message, "params") != ["params"] or not isinstance(uri, str)
                or _members(params, "uri") != ["uri"]):
            log.warning("dropped a malformed %s from the upstream (fail closed)", UPDATED)
            return False
        return self._may_read(uri)

    def _filter(self, document: Any) -> Any:
        """The document without the updates the caller may not see; None when nothing is left. The same
        object only when it holds no update at all: one that passes is written back as read, so that a
        duplicate key (``"uri": "demo://secret", "uri": "demo://open"``, read last-wins here) cannot show
        a first-wins client another URI than the one decided on."""
        if isinstance(document, list):
            kept = [message for message in document if self.passes(message)]
            self.dropped += len(document) - len(kept)
            if not kept:
                return None
            return list(kept) if any(map(_is_update, kept)) else document
        if not self.passes(document):
            self.dropped += 1
            return None
        return dict(document) if _is_update(document) else document

    def filter_event(self, raw: bytes) -> bytes | None:
        if not self.strict and _MAY_MENTION.search(raw) is None:
            return raw
        if len(raw) > self._max_bytes:
            log.error("dropped an upstream event of %d bytes that may be a resource update: over "
                      "upstream.max_list_bytes (%d), so it was not read (fail closed)", len(raw), self._max_bytes)
            return None
        try:
            event = parse_event(raw)
            if not event.data or not event.data.strip():
                return raw  # a comment, a keep-alive or an id only: nothing a client acts on
            document = json.loads(event.data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            log.warning("dropped an upstream event on a subscription stream that is not JSON (fail closed)")
            return None
        kept = self._filter(document)
        if kept is None:
            return None
        return raw if kept is document else format_event(Event(data=json.dumps(kept, allow_nan=False), event=event.event, id=event.id))

    def filter_json_body(self, body: bytes) -> bytes:
        if _MAY_MENTION.search(body) is None:
            return body
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return body  # nothing a client can read as an update either
        kept = self._filter(document)
        if kept is document:
            return body
        if kept is None:
            raise UpstreamError("upstream_denied_update", f"an answer held only {UPDATED} the caller may not see")
        return json.dumps(kept, allow_nan=False).encode()
