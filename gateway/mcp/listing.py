"""Z4: list results filtered to what the caller may use, in JSON bodies and SSE events alike.

A ``ListFilter`` is applied to every answer the gateway relays, POST and GET alike, and recognises a
list result by its shape (``result.tools``, ``result.prompts``, ``result.resources``,
``result.resourceTemplates``), not by which request it seems to answer: ids can repeat across a batch,
and a resumed GET stream (``Last-Event-ID``) replays answers to earlier requests. Every other field,
``nextCursor`` and the rest of the pagination included, passes unchanged, and answers without a list
pass byte for byte. It fails closed: a JSON body it cannot read becomes a 502, an SSE event it cannot
read is dropped, an item without a name is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from gateway.errors import UpstreamError
from gateway.mcp.sse import Event, format_event, parse_event

log = logging.getLogger(__name__)

# result key -> (the list method it answers, the item key naming each item)
LIST_RESULTS = {
    "tools": ("tools/list", "name"),
    "prompts": ("prompts/list", "name"),
    "resources": ("resources/list", "uri"),
    "resourceTemplates": ("resources/templates/list", "uriTemplate"),
}
LIST_METHODS = frozenset(method for method, _ in LIST_RESULTS.values())
# Cheap pre-check: bytes without any of these keys cannot hold a list result, whatever their shape.
_MARKERS = tuple(f'"{key}"'.encode() for key in LIST_RESULTS)

ItemCheck = Callable[[str, str], bool]  # (list method, item name) -> may the caller use it?


class ListFilter:
    """``strict``: the request asked for a list, so every frame is parsed and an unreadable one fails closed.
    Otherwise frames that cannot hold a list key (none of its names, no ``\\u`` escape that could spell
    one) pass without being parsed."""

    def __init__(
        self,
        make_check: Callable[[bytes | None], ItemCheck],
        *,
        strict: bool = False,
        scope: Callable[[], bytes] | None = None,
        memo: MutableMapping[tuple[bytes, bytes], bytes | None] | None = None,
    ):
        self._make_check = make_check  # built on the first list found: most answers hold none
        self._allowed: ItemCheck | None = None
        self._scope_of = scope
        self._scope: bytes | None = None
        self._memo = memo
        self.strict = strict
        self.removed = 0

    def allowed(self, method: str, name: str) -> bool:
        if self._allowed is None:
            self._allowed = self._make_check(self._memo_scope())
        return self._allowed(method, name)

    def _memo_scope(self) -> bytes | None:
        if self._scope is None and self._scope_of is not None:
            self._scope = self._scope_of()
        return self._scope

    def _memoized(self, raw: bytes, compute: Callable[[bytes], bytes | None]) -> bytes | None:
        """Same caller scope and same upstream bytes give the same output: compute it once."""
        scope = self._memo_scope() if self._memo is not None else None
        if scope is None:
            return compute(raw)
        key = (scope, hashlib.sha256(raw).digest())
        if key in self._memo:
            return self._memo[key]
        result = compute(raw)
        self._memo[key] = result
        return result

    def _may_hold_a_list(self, raw: bytes) -> bool:
        return self.strict or b"\\u" in raw or any(marker in raw for marker in _MARKERS)

    def filter_message(self, message: Any) -> Any:
        """The message with every list in its result filtered; the same object when nothing was removed."""
        if not isinstance(message, dict) or "method" in message or not isinstance(message.get("result"), dict):
            return message
        result = message["result"]
        filtered = result
        for key, (method, name_key) in LIST_RESULTS.items():
            items = result.get(key)
            if not isinstance(items, list):
                continue
            kept = [
                item for item in items
                if isinstance(item, dict) and isinstance(item.get(name_key), str) and self.allowed(method, item[name_key])
            ]
            if len(kept) != len(items):
                self.removed += len(items) - len(kept)
                filtered = {**filtered, key: kept}
        return message if filtered is result else {**message, "result": filtered}

    def filter_json_body(self, body: bytes) -> bytes:
        if not self._may_hold_a_list(body):
            return body
        result = self._memoized(body, self._filter_json_body)
        return body if result is None else result

    def _filter_json_body(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise UpstreamError("upstream_unreadable_list", "a response body is not JSON while filtering lists") from exc
        if isinstance(document, list):
            filtered_list = [self.filter_message(m) for m in document]
            changed = any(a is not b for a, b in zip(filtered_list, document, strict=True))
            return json.dumps(filtered_list).encode() if changed else body
        filtered = self.filter_message(document)
        return body if filtered is document else json.dumps(filtered).encode()

    def filter_event(self, raw: bytes) -> bytes | None:
        if not self._may_hold_a_list(raw):
            return raw
        return self._memoized(raw, self._filter_event)

    def _filter_event(self, raw: bytes) -> bytes | None:
        try:
            event = parse_event(raw)
        except UnicodeDecodeError:
            log.warning("dropped an SSE event that is not UTF-8 while filtering lists")
            return None
        if not event.data:
            return raw
        try:
            message = json.loads(event.data)
        except ValueError:
            log.warning("dropped an SSE event whose data is not JSON while filtering lists")
            return None
        filtered = self.filter_message(message)
        if filtered is message:
            return raw
        return format_event(Event(data=json.dumps(filtered), event=event.event, id=event.id))
