"""Models of how upstream servers read a JSON-RPC body, for the differential tests (I1, I2).

Each model turns bytes into ``Reading``s or raises ``Refused`` (the server answers an error, runs nothing).
All share one tokenising parse that keeps every pair (``object_pairs_hook=Pairs``); they differ in how
they interpret the pairs:

``go_style``: a Go server on ``encoding/json``, decoding as mark3labs/mcp-go does (server/request_handler.go
``HandleMessage``: ``struct{JSONRPC string "json:jsonrpc"; Method string "json:method"; ID any "json:id"}``,
then e.g. ``CallToolRequest`` with ``params`` a struct ``{Name string "json:name"; Arguments map[string]any
"json:arguments"; Meta "json:_meta"}``). Go's rules (src/encoding/json/decode.go ``(*decodeState).object``,
fold.go; ``Unmarshal`` docs: "preferring an exact match but also accepting a case-insensitive match"):
a key names a struct field exactly (``byExactName``) or else by ``foldName`` (per rune the smallest rune
of its ``unicode.SimpleFold`` orbit: ``ſ`` is ``s``, the Kelvin sign ``k``); keys are applied in order, so
the LAST key matching a field wins (golang/go#11673, #43664), a repeated struct member is decoded into the
value already there, a repeated map member keeps earlier entries; ``map[string]any``/``any`` keep keys
verbatim, last duplicate wins, numbers are ``float64``; ``null`` leaves strings and structs alone and nils
maps; invalid UTF-8 and lone surrogate escapes become U+FFFD (unquoteBytes); a BOM or a type mismatch
(``"name": 5``) is an error. Simple folding is approximated per character by ``casefold`` when that is one
character, else ``lower``: exact for ASCII, ``ſ``, ``K``, ``ß``/``ẞ``, sigma, ``İ``/``ı`` (caseOrbit).

``first_wins``: lenient readers that keep the FIRST of duplicate keys, exact key matching.
``python_json``: plain ``json.loads``: exact keys, last duplicate wins, a BOM on bytes skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TARGET = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
          "resources/subscribe": "uri", "resources/unsubscribe": "uri"}


class Refused(ValueError):
    pass


class Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates and order kept."""


@dataclass(frozen=True)
class Reading:
    kind: str  # "request" | "notification" | "response"
    method: str | None
    target: str | None  # params.name or params.uri, for the methods in TARGET
    arguments: Any  # params.arguments of tools/call and prompts/get


def tokens(body: bytes, *, coerce: bool = False) -> Any:
    try:
        return json.loads(body.decode("utf-8", "replace" if coerce else "strict"), object_pairs_hook=Pairs)
    except ValueError as exc:  # also UnicodeDecodeError, and "Unexpected UTF-8 BOM"
        raise Refused(str(exc)) from exc


def _each(document: Any, read) -> list[Reading]:
    batch = isinstance(document, list) and not isinstance(document, Pairs)
    return [read(item) for item in (document if batch else [document])]


def _reading(method: Any, has_id: bool, params: dict) -> Reading:
    method = method if isinstance(method, str) and method else None
    kind = "response" if method is None else "request" if has_id else "notification"
    arguments = params.get("arguments") if method in ("tools/call", "prompts/get") else None
    return Reading(kind, method, params.get(TARGET[method]) if method in TARGET else None, arguments)


# -- Go: encoding/json into mcp-go's structs ----------------------------------------------------------

def go_fold(key: str) -> str:
    return "".join(f if len(f := c.casefold()) == 1 else c.lower() if len(c.lower()) == 1 else c for c in key)


def _go_text(text: str) -> str:
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def _go_any(value: Any) -> Any:
    if isinstance(value, Pairs):
        return {_go_text(k): _go_any(v) for k, v in value}  # a dict keeps the last of equal keys
    if isinstance(value, list):
        return [_go_any(v) for v in value]
    if isinstance(value, str):
        return _go_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError as exc:
            raise Refused("number out of float64 range") from exc
    return value


def _go_struct(value: Any, fields: dict[str, Any], into: dict | None = None) -> dict:
    """``fields``: JSON name -> ``str``, ``"map"``, ``"any"`` or a nested ``fields`` dict (a struct)."""
    out = dict(into or {})
    if value is None:
        return out
    if not isinstance(value, Pairs):
        raise Refused("not an object")
    for key, item in value:
        key = _go_text(key)
        tag = key if key in fields else next((t for t in fields if go_fold(t) == go_fold(key)), None)
        kind = fields.get(tag)
        if tag is None or (item is None and kind not in ("map", "any")):
            continue
        if item is None:
            out[tag] = None
        elif kind is str:
            if not isinstance(item, str):
                raise Refused(f"{tag} is not a string")
            out[tag] = _go_text(item)
        elif isinstance(kind, dict):
            out[tag] = _go_struct(item, kind, out.get(tag))
        elif kind == "map":
            if not isinstance(item, Pairs):
                raise Refused(f"{tag} is not an object")
            out[tag] = {**(out.get(tag) or {}), **_go_any(item)}
        else:
            out[tag] = _go_any(item)
    return out


_RESOURCE = {"uri": str, "_meta": "map"}
GO_PARAMS = {"tools/call": {"name": str, "arguments": "map", "_meta": "map"},
             "prompts/get": {"name": str, "arguments": "map", "_meta": "map"},
             "resources/read": _RESOURCE, "resources/subscribe": _RESOURCE, "resources/unsubscribe": _RESOURCE}


def _go_message(obj: Any) -> Reading:
    base = _go_struct(obj, {"jsonrpc": str, "method": str, "id": "any"})  # mcp-go's baseMessage
    if base.get("jsonrpc") != "2.0":
        raise Refused("Invalid JSON-RPC version")
    method = base.get("method", "")
    params = _go_struct(obj, {"params": GO_PARAMS.get(method, {})}).get("params") or {}
    return _reading(method, base.get("id") is not None, params)


def go_style(body: bytes) -> list[Reading]:
    return _each(tokens(body, coerce=True), _go_message)


# -- exact-key readers --------------------------------------------------------------------------------

def _exact(value: Any, first: bool) -> Any:
    if isinstance(value, Pairs):
        out: dict[str, Any] = {}
        for key, item in value:
            if not (first and key in out):
                out[key] = _exact(item, first)
        return out
    return [_exact(v, first) for v in value] if isinstance(value, list) else value


def _exact_message(obj: Any) -> Reading:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise Refused("not a JSON-RPC 2.0 message")
    params = obj.get("params")
    return _reading(obj.get("method"), obj.get("id") is not None, params if isinstance(params, dict) else {})


def first_wins(body: bytes) -> list[Reading]:
    return _each(_exact(tokens(body), first=True), _exact_message)


def python_json(body: bytes) -> list[Reading]:
    try:
        return _each(json.loads(body), _exact_message)
    except Refused:
        raise
    except ValueError as exc:
        raise Refused(str(exc)) from exc


MODELS = {"go": go_style, "first-wins": first_wins, "python": python_json}
