"""Z4: list results filtered to what the caller may use, in JSON bodies and SSE events alike.

``ListFilter`` is made per request that lists something. It rewrites only the JSON-RPC responses whose
``id`` answers one of that request's list calls, keeps every other field (``nextCursor`` and the rest of
the pagination pass unchanged), and fails closed: a JSON body it cannot read becomes a 502, an SSE event
it cannot read is dropped, an item without a name is dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import UpstreamError
from gateway.mcp.sse import Event, format_event, parse_event

log = logging.getLogger(__name__)

# list method -> (result key, item key naming the item)
LIST_RESULTS = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}

ItemCheck = Callable[[str, str], bool]  # (list method, item name) -> may the caller use it?


class ListFilter:
    def __init__(self, list_calls: Mapping[Any, str], allowed: ItemCheck):
        self.list_calls = dict(list_calls)  # JSON-RPC id -> list method
        self.allowed = allowed
        self.removed = 0

    def filter_message(self, message: Any) -> Any:
        if not isinstance(message, dict) or "method" in message:
            return message  # requests and notifications from the server pass
        method = self.list_calls.get(message.get("id")) if isinstance(message.get("id"), (str, int)) else None
        result = message.get("result")
        if method is None or not isinstance(result, dict):
            return message
        key, name_key = LIST_RESULTS[method]
        items = result.get(key)
        if not isinstance(items, list):
            return message
        kept = [
            item for item in items
            if isinstance(item, dict) and isinstance(item.get(name_key), str) and self.allowed(method, item[name_key])
        ]
        self.removed += len(items) - len(kept)
        return {**message, "result": {**result, key: kept}}

    def filter_json_body(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise UpstreamError("upstream_unreadable_list", "a list response body is not JSON") from exc
        if isinstance(document, list):
            return json.dumps([self.filter_message(m) for m in document]).encode()
        return json.dumps(self.filter_message(document)).encode()

    def filter_event(self, raw: bytes) -> bytes | None:
        try:
            event = parse_event(raw)
        except UnicodeDecodeError:
            log.warning("dropped an SSE event that is not UTF-8 while filtering a list")
            return None
        if not event.data:
            return raw  # comments, retry hints, keep-alives
        try:
            message = json.loads(event.data)
        except ValueError:
            log.warning("dropped an SSE event whose data is not JSON while filtering a list")
            return None
        filtered = self.filter_message(message)
        if filtered is message:
            return raw
        return format_event(Event(data=json.dumps(filtered), event=event.event, id=event.id))
