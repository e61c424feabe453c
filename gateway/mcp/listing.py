"""Z4, I8: list results filtered to what the caller may use, in JSON bodies and SSE events alike.

A ``ListFilter`` is applied to every answer the gateway relays, POST and GET alike, and recognises a
list result by its shape (``result.tools``, ``result.prompts``, ``result.resources``,
``result.resourceTemplates``), not by which request it seems to answer: ids can repeat across a batch,
and a resumed GET stream (``Last-Event-ID``) replays answers to earlier requests. A body or an event may
hold one message or a batch (a JSON array); every element is filtered. Every other field, ``nextCursor``
and the rest of the pagination included, passes unchanged.

The filter reads an answer the way the most lenient client would, because the client, not the gateway,
decides what the caller sees (ToolHive #5257):

- keys are matched ignoring case, with Unicode folding (``"Tools"``, ``"RESULT"``, ``"toolſ"``): Go's
  ``encoding/json`` and .NET's case-insensitive option read those as the list;
- an answer that mentions a list key is always sent as the gateway's own serialization of what it read,
  never as the upstream's bytes: a duplicate key (``{"tools": [all], "tools": [allowed]}``) is read
  last-wins by Python and first-wins by other parsers, and only re-serializing makes them agree;
- a list key whose value is not a list, an item that is not an object, has no string name or two
  spellings of its name key, are dropped (fail closed).

Answers that cannot mention a list key (``mentions_a_list_key``) pass byte for byte, unparsed, unless a
list was asked for (``strict``), when every frame is read and one the filter cannot read fails closed: a
JSON body becomes a 502, an SSE event is dropped. The proxy uses the same pre-check to decide which JSON
answers it may stream without reading them whole, and which it must hold (R2, ``gateway.upstream.proxy``).

Filtered answers are memoized (R2): only answers in which a list result was actually found, of at most
``MEMO_ENTRY_MAX_BYTES`` in and out, under a memo that bounds its bytes (``gateway.memo``). An answer that
held no list is never kept, whatever it mentioned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Container, MutableMapping
from typing import Any

from gateway.errors import UpstreamError
from gateway.memo import MEMO_ENTRY_MAX_BYTES, remembers
from gateway.mcp.lists import LIST_RESULTS
from gateway.mcp.sse import Event, format_event, parse_event

log = logging.getLogger(__name__)


ItemCheck = Callable[[str, str], bool]  # (list method, item name) -> may the caller use it?
# An ItemCheck may also have ``check_many(list method, names) -> the allowed names``: the filter then asks
# once per list (P2: Authorizer.item_check decides alike items together), else once per item.


def fold(key: str) -> str:
    """A key as case-insensitive decoders compare it: ``Tools``, ``TOOLS`` and ``toolſ`` (U+017F, which
    Go's Unicode folding and .NET's upper-casing equate with ``s``) all fold to ``tools``."""
    return key.lower() if key.isascii() else key.upper().lower()


# folded result key -> (the list method it answers, the item key naming each item, that key folded)
_FOLDED = {fold(key): (method, name_key, fold(name_key)) for key, (method, name_key) in LIST_RESULTS.items()}
_RESULT = "result"

# The pre-check. A list key in raw JSON is a quoted string that reads, after folding, as one of
# LIST_RESULTS; its bytes are that name in some ASCII letter case, unless an escape of a letter
# (``\u0074ools``), a non-ASCII letter that folds to ASCII (of these names' letters only ``s`` has one,
# U+017F ``ſ``) or a UTF-16/32 body (NUL bytes; Python's json.loads and httpx's .json() detect those
# encodings) spells it otherwise. Escapes of anything else (``\u00e9``) cannot.
_LIST_KEY = re.compile(b'"(?:' + b"|".join(re.escape(key.encode()) for key in _FOLDED) + b')"', re.IGNORECASE)
_LETTER_ESCAPE = re.compile(rb"\\u(?:00[4-7][0-9a-fA-F]|017[fF])")
_SPELLED_OTHERWISE = ("\u017f".encode(), b"\x00")
_LONG_S = _SPELLED_OTHERWISE[0]


def mentions_a_list_key(raw: bytes) -> bool:
    """False only for bytes that no JSON reader can find a list key in, whatever their shape."""
    if _LONG_S in raw or b"\x00" in raw or _LIST_KEY.search(raw) is not None:
        return True
    return b"\\u" in raw and _LETTER_ESCAPE.search(raw) is not None


_mentions_a_list_key = mentions_a_list_key  # the name the tests of the pre-check import

# The longest byte string the pre-check looks for is a quoted "resourceTemplates" (19 bytes). A scan of a
# body chunk by chunk that keeps this many bytes of the previous chunk in front of the next one finds
# every match that a scan of the whole body finds.
LIST_KEY_LOOK_BEHIND = max(len(key) + 2 for key in _FOLDED) - 1


_MISSING = object()


class _Unreadable(ValueError):
    """The filter cannot read (or cannot faithfully write back) this frame."""


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Unreadable(f"{type(exc).__name__}") from exc


def _dumps(document: Any) -> str:
    try:
        # No NaN or Infinity: they are not JSON (RFC 8259 §6), and 1e400 would come back as Infinity.
        return json.dumps(document, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise _Unreadable(f"{type(exc).__name__}") from exc


def _lists_in(document: Any) -> list[tuple[str, list[str], list[Any]]]:
    """(list method, item names, items) of every list result in a parsed body or event, as
    ``filter_document`` finds them (for ``ListFilter.decide_ahead``)."""
    found = []
    for message in document if isinstance(document, list) else [document]:
        if not isinstance(message, dict):
            continue
        for key, result in message.items():
            if not isinstance(result, dict) or fold(key) != _RESULT:
                continue
            for list_key, items in result.items():
                spec = _FOLDED.get(fold(list_key))
                if spec is not None and isinstance(items, list):
                    found.append((spec[0], [name for item in items
                                            if isinstance(item, dict) and isinstance(name := item.get(spec[1]), str)],
                                  items))
    return found


class ListFilter:
    """``strict``: the request asked for a list, so every frame is parsed and an unreadable one fails closed.
    Otherwise frames that cannot mention a list key pass without being parsed."""

    def __init__(
        self,
        make_check: Callable[[bytes | None], ItemCheck],
        *,
        strict: bool = False,
        scope: Callable[[], bytes] | None = None,
        memo: MutableMapping[tuple[bytes, bytes, bool], bytes | None] | None = None,
        observe_tools: Callable[[list[Any]], None] | None = None,
    ):
        """``observe_tools`` sees every ``tools`` list read, unfiltered (the tool catalogue learns from it)."""
        self._make_check = make_check  # built on the first list found: most answers hold none
        self._observe_tools = observe_tools
        self._allowed: ItemCheck | None = None
        self._scope_of = scope
        self._scope: bytes | None = None
        self._memo = memo
        self.strict = strict
        self.removed = 0
        self.lists_found = 0  # list results met so far (whether or not anything was removed from them)

    def allowed(self, method: str, name: str) -> bool:
        if self._allowed is None:
            self._allowed = self._make_check(self._memo_scope())
        return self._allowed(method, name)

    def allowed_names(self, method: str, names: list[str]) -> Container[str] | None:
        """The allowed ones of a whole list's ``names`` when the check can say at once, else None."""
        if not names:
            return None
        if self._allowed is None:
            self._allowed = self._make_check(self._memo_scope())
        check_many = getattr(self._allowed, "check_many", None)
        return check_many(method, names) if check_many is not None else None

    def _memo_scope(self) -> bytes | None:
        if self._scope is None and self._scope_of is not None:
            self._scope = self._scope_of()
        return self._scope

    def _memoized(self, raw: bytes, compute: Callable[[bytes], bytes | None]) -> bytes | None:
        """Same caller scope and same upstream bytes give the same output: compute it once.

        R2: kept only when ``compute`` found a list result and input and output are small enough; an
        answer without a list (an escape or a word made the pre-check look) is never retained."""
        if self._memo is None or len(raw) > MEMO_ENTRY_MAX_BYTES:
            return compute(raw)
        scope = self._memo_scope()
        if scope is None:
            return compute(raw)
        # A1, A2: an answer filtered without the catalogue learning from it (a batch, a GET stream) must not
        # be served from the memo to a tools/list that would learn from it: the catalogue would never see it.
        key = (scope, hashlib.sha256(raw).digest(), self._observe_tools is not None)
        found = self._memo.get(key, _MISSING)  # one look-up: an entry may expire between two
        if found is not _MISSING:
            return found
        lists_before = self.lists_found
        result = compute(raw)
        if self.lists_found > lists_before and remembers(result):
            self._memo[key] = result
        return result

    # -- messages ---------------------------------------------------------------------------------------

    def filter_document(self, document: Any) -> Any:
        """A parsed body or event ``data``: one message, or a batch whose every element is filtered."""
        if isinstance(document, list):
            return [self.filter_message(message) for message in document]
        return self.filter_message(document)

    def filter_message(self, message: Any) -> Any:
        """The message with every list in every result filtered; the same object when nothing changed.

        Any message with a result is read, a request or notification too (``method`` beside ``result``
        is malformed, and a client may still take it for an answer)."""
        if not isinstance(message, dict):
            return message
        changed: dict[str, Any] = {}
        for key, result in message.items():
            if isinstance(result, dict) and fold(key) == _RESULT:
                filtered = self._filter_result(result)
                if filtered is not result:
                    changed[key] = filtered
        return {**message, **changed} if changed else message

    def _filter_result(self, result: dict[str, Any]) -> dict[str, Any]:
        changed: dict[str, list[Any]] = {}
        holds_a_list = False
        for key, items in result.items():
            spec = _FOLDED.get(fold(key))
            if spec is None:
                continue
            method, name_key, folded_name_key = spec
            self.lists_found += 1
            holds_a_list = True
            if not isinstance(items, list):
                log.warning("a list result's %r is a %s, not a list; replaced by an empty list", key, type(items).__name__)
                self.removed += 1
                changed[key] = []
                continue
            if method == "tools/list" and self._observe_tools is not None:
                self._observe_tools(items)  # what the upstream says of its tools, before filtering
            allowed = self.allowed_names(method, [
                name for item in items if isinstance(item, dict) and isinstance(name := item.get(name_key), str)])
            kept = [item for item in items if self._keeps(item, method, name_key, folded_name_key, allowed)]
            if len(kept) != len(items):
                self.removed += len(items) - len(kept)
                changed[key] = kept
        if holds_a_list:
            # M1 (MCP 2026-07-28, SEP-2549): what this caller sees depends on its policy, so no shared cache
            # may keep it: "public" was true of the upstream's list, not of this one. Absent means private.
            for key, scope in result.items():
                if fold(key) == "cachescope" and scope != "private":
                    changed[key] = "private"  # type: ignore[assignment]
        return {**result, **changed} if changed else result

    def _keeps(self, item: Any, method: str, name_key: str, folded_name_key: str,
               allowed: Container[str] | None = None) -> bool:
        if not isinstance(item, dict):
            return False
        name = item.get(name_key)
        if not isinstance(name, str):
            return False
        # {"name": "search", "Name": "drop_table"}: which one a client shows is its choice, so neither. Case-
        # insensitive decoders fold character by character, so only a key of the same length can clash.
        size = len(name_key)
        for key in item:
            if len(key) == size and key != name_key and fold(key) == folded_name_key:
                return False
        return name in allowed if allowed is not None else self.allowed(method, name)

    # -- R4: a list's decisions made ahead, yielding the event loop --------------------------------------

    async def decide_ahead(self, raw: bytes, is_event: bool = False) -> None:
        """Before the synchronous ``filter_json_body`` / ``filter_event`` of ``raw``: make the decisions of
        the lists it holds in pieces that yield the event loop (``check_many_async``), so that a cold list of
        thousands of items (or a large policy set) does not hold it; the filter then finds them cached.
        Only warms caches: what is sent is still decided by the filter, so nothing here can let an item
        through, and anything this cannot read it leaves to the filter."""
        if not mentions_a_list_key(raw):
            return
        scope = self._memo_scope()
        if self._memo is not None and scope is not None and len(raw) <= MEMO_ENTRY_MAX_BYTES \
                and (scope, hashlib.sha256(raw).digest()) in self._memo:
            return  # the filtered answer is memoized: no decision to make
        try:
            text = parse_event(raw).data if is_event else raw
            document = _loads(text) if text else None
        except (UnicodeDecodeError, _Unreadable):
            return
        try:
            for method, names, items in _lists_in(document):
                if method == "tools/list" and self._observe_tools is not None:
                    # A1: learned first, so the decisions made ahead carry the attributes the filter's will
                    # (learning the same list again in the filter changes nothing).
                    self._observe_tools(items)
                if self._allowed is None:
                    self._allowed = self._make_check(scope)
                check_many_async = getattr(self._allowed, "check_many_async", None)
                if check_many_async is None:
                    return
                await check_many_async(method, names)
        except Exception as exc:  # (never CancelledError) the filter decides all the same, on its own
            log.warning("list decisions ahead of the filter failed (%s); the filter makes them", type(exc).__name__)

    # -- JSON bodies ------------------------------------------------------------------------------------

    def filter_json_body(self, body: bytes) -> bytes:
        if not mentions_a_list_key(body):
            # No list can be found, so nothing to memoize; strict still proves the body readable.
            return self._filter_json_body(body, False) if self.strict else body
        result = self._memoized(body, lambda raw: self._filter_json_body(raw, True))
        return body if result is None else result

    def _filter_json_body(self, body: bytes, mentions: bool) -> bytes:
        try:
            document = _loads(body)
            if not mentions:
                return body  # strict, and readable: nothing a client could take for a list
            return _dumps(self.filter_document(document)).encode()
        except _Unreadable as exc:
            raise UpstreamError("upstream_unreadable_list", f"a response body the list filter cannot read ({exc})") from exc

    # -- SSE events -------------------------------------------------------------------------------------

    def filter_event(self, raw: bytes) -> bytes | None:
        if not mentions_a_list_key(raw):
            return self._filter_event(raw, False) if self.strict else raw
        return self._memoized(raw, lambda raw: self._filter_event(raw, True))

    def _filter_event(self, raw: bytes, mentions: bool) -> bytes | None:
        try:
            event = parse_event(raw)
        except UnicodeDecodeError:
            log.warning("dropped an SSE event that is not UTF-8 while filtering lists")
            return None
        if not event.data:
            if not mentions:
                return raw
            # A list key in a comment or a field this parser does not read: send only what it did read.
            return format_event(Event(data=None, event=None, id=event.id)) if event.id is not None else None
        try:
            document = _loads(event.data)
            if not mentions:
                return raw
            return format_event(Event(data=_dumps(self.filter_document(document)), event=event.event, id=event.id))
        except _Unreadable as exc:
            log.warning("dropped an SSE event the list filter cannot read (%s)", exc)
            return None
