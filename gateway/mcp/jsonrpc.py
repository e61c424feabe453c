"""Z5, Z6, I1-I3: a POST body to the MCP endpoint, parsed once into the one reading that is decided and
forwarded. Pure: bytes in, values out.

Strict means: ``application/json`` only; UTF-8; no duplicate keys in any object, where "duplicate" is
what *any* upstream parser could take for the same key: equal after case folding and after dropping
control characters (I2: Go's ``encoding/json`` matches keys case-insensitively, so
``{"name": "search", "Name": "drop_table"}`` is ``search`` to us and ``drop_table`` to mcp-go); no
``NaN``/``Infinity``; no lone surrogates; nesting at most ``MAX_DEPTH`` levels; JSON-RPC 2.0 shape for
every element of a batch, with envelope and params members spelled exactly; a method name that is
``segment("/"segment)*`` (I3). What fails here never reaches the upstream.

What passes is forwarded as ``Batch.canonical``: the gateway's own compact UTF-8 serialization of what it
parsed (I1), built from the decided members only, so no escape, whitespace, number form, encoding trick
or extra envelope member in the client's bytes can mean something else upstream.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from gateway.errors import PARSE_ERROR, BadRequest

MessageKind = Literal["request", "notification", "response"]

HEADER_MISMATCH = -32020  # MCP 2026-07-28: a routing header disagrees with the body

# Methods that are never evaluated by policy (Z1, cedar.md): the handshake and liveness. MCP 2026-07-28's
# server/discover is decided like any method (cedar.md puts it in the "housekeeping" group); the shipped
# policies permit it to everyone signed in.
UNEVALUATED_METHODS = frozenset({"initialize", "ping"})
# completion/complete (cedar.md): decided against the prompt or resource that params.ref names.
COMPLETION_REFS = {"ref/prompt": "name", "ref/resource": "uri"}

# Where Mcp-Name's value lives in the body, per method (MCP 2026-07-28 transports).
NAME_PARAM = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
    # tasks extension (SEP-2663): Mcp-Name carries params.taskId
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# I3: segments of letters, digits, "_", "-" and "."; "." and ".." are refused separately.
_METHOD = re.compile(r"[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*")
# R4: deeper nesting is refused before any recursive walk (Cedar conversion, serialization) can overflow.
MAX_DEPTH = 64

# The members each message kind is forwarded with (I1): a request is forwarded as a request, whatever
# else the client put beside it. Anything else in the envelope is dropped, and a member spelled another
# way is refused (I2: a Go server would read "Method" as "method").
ENVELOPE_MEMBERS = ("jsonrpc", "id", "method", "params", "result", "error")
FORWARDED_MEMBERS = {
    "request": ("jsonrpc", "id", "method", "params"),
    "notification": ("jsonrpc", "method", "params"),
    "response": ("jsonrpc", "id", "result", "error"),
}
_ENVELOPE_FOLDS = {member: member for member in ENVELOPE_MEMBERS}
# I-JSON (RFC 7493 §2.2): integers beyond ±(2^53 - 1) are read as doubles by JavaScript and by Go's
# map[string]any, so a policy on 9007199254740993 would judge another number than the server acts on.
MAX_SAFE_INTEGER = 2**53 - 1
# params members the gateway decides on, per method; another spelling of one of them is refused (I2).
DECIDED_PARAMS = {
    "tools/call": ("name", "arguments"),
    "prompts/get": ("name", "arguments"),
    "resources/read": ("uri",),
    "resources/subscribe": ("uri",),
    "resources/unsubscribe": ("uri",),
    "completion/complete": ("ref",),
    "tasks/get": ("taskId",),
    "tasks/update": ("taskId",),
    "tasks/cancel": ("taskId",),
}


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
        """The tool or prompt name, or the resource URI, that the method acts on (None if not applicable);
        for completion/complete, the prompt's name or resource's URI in ``params.ref``."""
        if self.method == "completion/complete":
            ref = self.params.get("ref")
            key = COMPLETION_REFS.get(ref.get("type")) if isinstance(ref, Mapping) else None
            value = ref.get(key) if key else None
            return value if isinstance(value, str) else None
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
    canonical: bytes = b""  # I1: what the upstream receives, the gateway's serialization of ``messages``

    @property
    def first_id(self) -> Any:
        for message in self.messages:
            if message.kind == "request":
                return message.id
        return None

    @property
    def has_requests(self) -> bool:
        return any(message.kind == "request" for message in self.messages)

    @property
    def carries_trace_meta(self) -> bool:
        """SEP-414: some message carries a trace context in ``params._meta`` (O2), in any spelling."""
        return any(_trace_meta(message.params) is not None for message in self.messages)

    def with_trace_meta(self, context: Mapping[str, str] | Callable[[Mapping[str, Any]], Mapping[str, str]]) -> bytes:
        """``canonical`` with the client's trace context taken out of every message's ``params._meta``
        (``traceparent``, ``tracestate`` and any other spelling of them, I2) and ``context`` put in its place
        (O2: never the client's value as sent). ``context`` is the gateway's own (the upstream's parent is
        the gateway's span), or a function of the message's ``_meta`` giving what replaces it there (the
        client's own context parsed and re-serialized, or nothing). Re-read from ``canonical``, the
        gateway's own serialization, so every other byte stays what was decided (I1); nothing decides on
        ``_meta``."""
        documents = json.loads(self.canonical)
        for document in documents if self.is_array else [documents]:
            meta = _trace_meta(document.get("params") or _EMPTY)
            if meta is not None:
                replacement = context(meta) if callable(context) else context
                for key in [k for k in meta if fold_key(k) in TRACE_META_KEYS]:
                    del meta[key]
                meta.update(replacement)
        return serialize(documents)


TRACE_META_KEYS = ("traceparent", "tracestate")  # as fold_key spells them


def _trace_meta(params: Mapping[str, Any]) -> Any:
    """``params._meta`` when it holds a trace context member, however spelled (a lenient reader upstream
    could take ``TraceParent`` for SEP-414's ``traceparent``)."""
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    if not isinstance(meta, dict):
        return None
    return meta if any(fold_key(key) in TRACE_META_KEYS for key in meta) else None


_SEPARATORS = str.maketrans("", "", "_-")


# P1: folded keys by key, for the short keys every message repeats ("jsonrpc", "params", "arguments", ...):
# each key is folded twice per message (duplicates, spelling). Bounded in entries and in key length.
_FOLDED: dict[str, str] = {}
_FOLDED_MAX, _FOLDED_KEY_MAX = 4096, 64


def fold_key(key: str) -> str:
    """What a lenient parser could take ``key`` for (I2): control and format characters, ``_`` and ``-``
    dropped, then Unicode case folding. Go's encoding/json matches case-insensitively with simple folding
    (``ſ``→``s``, the Kelvin sign→``k``, which ``casefold`` covers); its v2 ``case:ignore`` matching also
    ignores ``_`` and ``-``. Refusing a little more than any one parser equates is the safe side."""
    folded = _FOLDED.get(key)
    if folded is None:
        folded = _fold(key)
        if len(key) <= _FOLDED_KEY_MAX and len(_FOLDED) < _FOLDED_MAX:
            _FOLDED[key] = folded
    return folded


def _fold(key: str) -> str:
    if key.isascii() and key.isprintable():
        return key.translate(_SEPARATORS).lower()  # the common case: exactly casefold() for printable ASCII
    kept = "".join(ch for ch in key if unicodedata.category(ch) not in ("Cc", "Cf"))
    return kept.translate(_SEPARATORS).casefold().replace("\u017f", "s").replace("\u212a", "k")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise MalformedMessage("unsafe_integer", f"an integer of {len(text)} digits is beyond ±(2^53 - 1)", parse_error=True)
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    folds: set[str] = set()
    for key, value in pairs:
        folded = fold_key(key)
        if folded in folds:
            what = "appears twice" if key in result else "appears twice up to letter case or control characters"
            raise MalformedMessage("duplicate_key", f"key {key[:50]!r} {what} in one object", parse_error=True)
        folds.add(folded)
        result[key] = value
    return result


def nested_deeper_than(document: Any, limit: int) -> bool:
    """Iterative, so a hostile document cannot overflow the stack while being measured."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, (dict, list)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, (dict, list)))
    return False


def _reject_constant(name: str) -> Any:
    raise MalformedMessage("non_json_number", f"{name} is not JSON", parse_error=True)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: Python says inf, other parsers something else
        raise MalformedMessage("non_finite_number", "a number is too large to represent", parse_error=True)
    return value


# What json.loads(text, **these) builds on every call, built once (P1): it keeps no state between documents.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant,
                                   parse_float=_finite_float, parse_int=_safe_int)


def loads_strict(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("not_utf8", "body is not UTF-8", parse_error=True) from exc
    if text.startswith("\ufeff"):  # what json.loads says of it (the decoder alone would say less)
        raise MalformedMessage("invalid_json", "not JSON: Unexpected UTF-8 BOM", parse_error=True)
    try:
        document = _STRICT_DECODER.decode(text)
    except MalformedMessage:
        raise
    except RecursionError as exc:
        raise MalformedMessage("too_deep", f"nesting deeper than {MAX_DEPTH} levels", parse_error=True) from exc
    except ValueError as exc:
        raise MalformedMessage("invalid_json", f"not JSON: {str(exc)[:100]}", parse_error=True) from exc
    # Counting brackets is a fast C loop; only a body with enough of them can be too deep.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nested_deeper_than(document, MAX_DEPTH):
        raise MalformedMessage("too_deep", f"nesting deeper than {MAX_DEPTH} levels", parse_error=True)
    return document


def _check_completion_ref(ref: Any, where: str) -> None:
    """The decision names what ``ref`` names, so it must name one prompt or one resource, spelled exactly."""
    if not isinstance(ref, dict) or ref.get("type") not in COMPLETION_REFS:
        raise MalformedMessage("bad_params", f"{where} completion/complete needs params.ref of type ref/prompt or ref/resource")
    member = COMPLETION_REFS[ref["type"]]
    _check_spelling(ref, {"type": "type", member: member}, f"{where} params.ref")
    value = ref.get(member)
    if not isinstance(value, str) or not value or not _plain_name(value):
        raise MalformedMessage("bad_params", f"{where} params.ref needs a plain string {member}")


def _plain_name(value: str) -> bool:
    if value.isascii() and value.isprintable():
        return value == value.strip()
    return value == value.strip() and not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value)


def check_method_name(method: str, where: str) -> None:
    """I3: ``segment("/"segment)*``; no whitespace, control characters, empty, ``.`` or ``..`` segments."""
    if not _METHOD.fullmatch(method) or any(segment in (".", "..") for segment in method.split("/")):
        raise MalformedMessage("bad_method", f"{where} method {method[:60]!r} is not a method name")


def _check_spelling(obj: Mapping[str, Any], canonical: Mapping[str, str], where: str) -> None:
    """I2: a member the gateway decides on must be spelled exactly; ``Method`` or ``NAME`` is refused."""
    for key in obj:
        member = canonical.get(fold_key(key))
        if member is not None and member != key:
            raise MalformedMessage("member_spelling", f"{where} has {key[:30]!r}; only {member!r} is understood")


def _message(obj: Any, where: str) -> Message:
    if not isinstance(obj, dict):
        raise MalformedMessage("not_jsonrpc", f"{where} is not a JSON object")
    _check_spelling(obj, _ENVELOPE_FOLDS, where)
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
        check_method_name(method, where)
        params = obj.get("params", _EMPTY)
        if not isinstance(params, (dict, MappingProxyType)):
            # MCP params are always objects (JSON-RPC allows arrays; MCP never uses them).
            raise MalformedMessage("bad_params", f"{where} params is not an object")
        decided = DECIDED_PARAMS.get(method)
        if decided:
            _check_spelling(params, {member: member for member in decided}, f"{where} params")
            if "arguments" in params and not isinstance(params["arguments"], dict):
                # The policy would see {} while the server got a list or a string it may still act on.
                raise MalformedMessage("bad_params", f"{where} params.arguments is not an object")
            if method == "completion/complete":
                _check_completion_ref(params.get("ref"), where)
            named = NAME_PARAM.get(method)
            if named is not None:
                value = params.get(named)
                if not isinstance(value, str) or not value:
                    # The policy decides on this member; without it there is nothing the decision names.
                    raise MalformedMessage("bad_params", f"{where} {method} needs a string params.{named}")
                if not _plain_name(value):
                    # A server that trims, or stops at a NUL, would run a tool the policy never named.
                    raise MalformedMessage("bad_name", f"{where} params.{named} has control characters or surrounding spaces")
        kind: MessageKind = "request" if has_id else "notification"
        return Message(kind=kind, method=method, id=rpc_id, params=params)
    if has_id and (("result" in obj) != ("error" in obj)):
        return Message(kind="response", id=rpc_id)
    raise MalformedMessage("not_jsonrpc", f"{where} is neither a request, a notification nor a response")


def parse_body(body: bytes, content_type: str, *, max_batch: int = 50) -> Batch:
    """Z5: the messages of one POST body, or ``MalformedMessage``. R4: at most ``max_batch`` in a batch."""
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
        if len(document) > max_batch:
            # Each element costs a decision and an audit line; a batch is bounded before any of that (R4).
            raise MalformedMessage("batch_too_large", f"{len(document)} messages in a batch > server.max_batch {max_batch}")
        elements = [_checked(item, f"element {i}") for i, item in enumerate(document)]
        messages = tuple(message for message, _ in elements)
        ids = [m.id for m in messages if m.kind == "request"]
        if len(ids) != len(set(map(repr, ids))):
            # Answers are matched to requests by id; two requests with one id could be answered crosswise.
            raise MalformedMessage("duplicate_request_id", "two requests in one batch share an id")
        return Batch(messages, is_array=True, canonical=serialize([wire for _, wire in elements]))
    message, wire = _checked(document, "message")
    return Batch((message,), canonical=serialize(wire))


def _checked(obj: Any, where: str) -> tuple[Message, dict[str, Any]]:
    """The decided message and the object that is forwarded for it: only the members of its kind."""
    message = _message(obj, where)
    wire = {member: obj[member] for member in FORWARDED_MEMBERS[message.kind] if member in obj}
    return message, wire


# What json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False) builds per call (P1).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def serialize(document: Any) -> bytes:
    """I1: compact UTF-8 JSON without a BOM. A lone surrogate (``"\\ud800"``), which other parsers replace,
    drop or refuse, cannot be encoded and is refused here rather than read differently upstream."""
    try:
        return _COMPACT.encode(document).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessage("lone_surrogate", "a string holds a lone UTF-16 surrogate", parse_error=True) from exc


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


def encode_header_value(value: str) -> str:
    """The inverse of ``decode_header_value``: plain visible ASCII as is, anything else base64-wrapped."""
    if value.isascii() and value.isprintable() and value == value.strip() and not value.startswith("=?"):
        return value
    return f"=?base64?{base64.b64encode(value.encode('utf-8')).decode()}?="
