"""Z5, Z6: a POST body to the MCP endpoint, parsed strictly into JSON-RPC messages. Pure: bytes in, values out.

Strict means: ``application/json`` only; UTF-8; no duplicate keys in any object (two parsers could read
``{"name": "search", "name": "drop_table"}`` differently, so the policy would judge one tool and the
upstream call another); no ``NaN``/``Infinity``; JSON-RPC 2.0 shape for every element of a batch. What
fails here never reaches the upstream.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from gateway.errors import PARSE_ERROR, BadRequest

MessageKind = Literal["request", "notification", "response"]

HEADER_MISMATCH = -32020  # MCP 2026-07-28: a routing header disagrees with the body

# Methods that are never evaluated by policy (Z1): the handshake and liveness. MCP 2026-07-28 replaces the
# initialize handshake with server/discover, which reveals no more than initialize does.
UNEVALUATED_METHODS = frozenset({"initialize", "ping", "server/discover"})

# Where Mcp-Name's value lives in the body, per method (MCP 2026-07-28 transports).
NAME_PARAM = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class MalformedMessage(BadRequest):
    """400 with a JSON-RPC error code fitting the problem (-32700 parse error, -32600 invalid request,
    -32020 header mismatch)."""

    def __init__(self, reason: str, detail: str, *, parse_error: bool = False, header_mismatch: bool = False):
        message = "Parse error" if parse_error else "Header mismatch" if header_mismatch else "Invalid JSON-RPC request"
        super().__init__(reason, detail, message=message)
        if parse_error:
            self.jsonrpc_code = PARSE_ERROR  # type: ignore[misc]
        elif header_mismatch:
            self.jsonrpc_code = HEADER_MISMATCH  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Message:
    kind: MessageKind
    method: str | None = None
    id: Any = None
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def name(self) -> str | None:
        """The tool or prompt name, or the resource URI, that the method acts on (None if not applicable)."""
        key = NAME_PARAM.get(self.method or "")
        value = self.params.get(key) if key else None
        return value if isinstance(value, str) else None

    @property
    def evaluated(self) -> bool:
        """Z1: every message with a method is authorized except initialize, ping and notifications/*.

        The exemption follows the method name, not the missing ``id``: a "notification" named
        ``tools/call`` is still a tool call to a server that chooses to run it, so it is decided too.
        Responses sent by the client (no method) pass.
        """
        if self.method is None:
            return False
        return self.method not in UNEVALUATED_METHODS and not self.method.startswith("notifications/")


@dataclass(frozen=True, slots=True)
class Batch:
    messages: tuple[Message, ...]
    is_array: bool = False

    @property
    def first_id(self) -> Any:
        for message in self.messages:
            if message.kind == "request":
                return message.id
        return None

    @property
    def has_requests(self) -> bool:
        return any(message.kind == "request" for message in self.messages)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedMessage("duplicate_key", f"key {key[:50]!r} appears twice in one object", parse_error=True)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedMessage("non_json_number", f"{name} is not JSON", parse_error=True)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: Python says inf, other parsers something else
        raise MalformedMessage("non_finite_number", "a number is too large to represent", parse_error=True)
    return value


def loads_strict(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("not_utf8", "body is not UTF-8", parse_error=True) from exc
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_finite_float)
    except MalformedMessage:
        raise
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("invalid_json", f"not JSON: {str(exc)[:100]}", parse_error=True) from exc


def _message(obj: Any, where: str) -> Message:
    if not isinstance(obj, dict):
        raise MalformedMessage("not_jsonrpc", f"{where} is not a JSON object")
    if obj.get("jsonrpc") != "2.0":
        raise MalformedMessage("not_jsonrpc", f"{where} lacks jsonrpc: \"2.0\"")
    has_id = "id" in obj
    rpc_id = obj.get("id")
    if has_id and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int))):
        # MCP: request ids are strings or integers, never null.
        if "method" in obj or rpc_id is not None:
            raise MalformedMessage("bad_id", f"{where} id must be a string or an integer")
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise MalformedMessage("bad_method", f"{where} method is not a string")
        params = obj.get("params", _EMPTY)
        if not isinstance(params, (dict, MappingProxyType)):
            # MCP params are always objects (JSON-RPC allows arrays; MCP never uses them).
            raise MalformedMessage("bad_params", f"{where} params is not an object")
        kind: MessageKind = "request" if has_id else "notification"
        return Message(kind=kind, method=method, id=rpc_id, params=params)
    if has_id and (("result" in obj) != ("error" in obj)):
        return Message(kind="response", id=rpc_id)
    raise MalformedMessage("not_jsonrpc", f"{where} is neither a request, a notification nor a response")


def parse_body(body: bytes, content_type: str) -> Batch:
    """Z5: the messages of one POST body, or ``MalformedMessage``."""
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json":
        raise MalformedMessage("wrong_content_type", f"Content-Type {media_type[:50]!r} is not application/json")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            # The body is judged as UTF-8; a server that honoured another charset (utf-7!) would read
            # different JSON than the policy saw. The upstream always gets plain application/json.
            raise MalformedMessage("unsupported_charset", f"charset {value.strip()[:20]!r} (only utf-8)")
    document = loads_strict(body)
    if isinstance(document, list):
        if not document:
            raise MalformedMessage("empty_batch", "empty batch")
        batch = Batch(tuple(_message(item, f"element {i}") for i, item in enumerate(document)), is_array=True)
        ids = [m.id for m in batch.messages if m.kind == "request"]
        if len(ids) != len(set(map(repr, ids))):
            # Answers are matched to requests by id; two requests with one id could be answered crosswise.
            raise MalformedMessage("duplicate_request_id", "two requests in one batch share an id")
        return batch
    return Batch((_message(document, "message"),))


def decode_header_value(value: str) -> str | None:
    """MCP 2026-07-28: values that are not plain ASCII travel as ``=?base64?<base64 of UTF-8>?=``."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value


def check_routing_headers(batch: Batch, mcp_method: str | None, mcp_name: str | None) -> None:
    """Z6 (MCP 2026-07-28): ``Mcp-Method``/``Mcp-Name``, when sent, must say what the body says.

    Decisions are always made from the body; a mismatch means some hop would route or log a different
    call than the one made, so it is refused (400, JSON-RPC -32020 HeaderMismatch).
    """
    if mcp_method is None and mcp_name is None:
        return
    if mcp_name is not None:
        mcp_name = decode_header_value(mcp_name)
        if mcp_name is None:
            raise MalformedMessage("routing_header_mismatch", "Mcp-Name is not valid =?base64?...?= text", header_mismatch=True)
    if batch.is_array or len(batch.messages) != 1 or batch.messages[0].method is None:
        raise MalformedMessage("routing_header_mismatch", "Mcp-Method/Mcp-Name sent with a body that is not one request", header_mismatch=True)
    message = batch.messages[0]
    if mcp_method is not None and mcp_method != message.method:
        raise MalformedMessage("routing_header_mismatch", "Mcp-Method does not match the body's method", header_mismatch=True)
    if mcp_name is not None and mcp_name != message.name:
        raise MalformedMessage("routing_header_mismatch", "Mcp-Name does not match the body", header_mismatch=True)
