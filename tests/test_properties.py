"""R5: no input makes a parser, filter or loader fail with anything but the gateway's own refusals, and the
integrity invariants (I1, I2, I6, I8, I5) hold for every input, not only for the cases someone thought of.

Property-based (Hypothesis), a few seconds per test. Each ``check_*`` function states one entry point's
contract: it returns normally, raises ``AssertionError`` for a broken invariant, and lets any other
exception through (that exception *is* the bug). The atheris harnesses in ``fuzz/`` call the same
functions, so a fuzzer and these tests prove one definition of each property; a crash the fuzzer finds
is added below as an explicit ``@example``.

Known bugs found by these properties are kept as ``xfail(strict=True)`` tests that name the bug: when it
is fixed they start passing, strict xfail turns that into a failure, and the mark comes off.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from gateway.auth.bearer import extract_bearer
from gateway.auth.jwt import looks_like_jwt, read_jose_header, read_unverified_claims
from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.errors import GatewayError, Unauthenticated, UpstreamError
from gateway.mcp.jsonrpc import FORWARDED_MEMBERS, Batch, MalformedMessage, fold_key, parse_body
from gateway.mcp.listing import ListFilter
from gateway.mcp.sse import EventSplitter, parse_event
from gateway.upstream.headers import (
    HOP_BY_HOP_HEADERS,
    IDENTITY_CLAIMING_HEADERS,
    check_client_headers,
    never_forwarded,
    upstream_request_headers,
)

# No example database: nothing is written into the work tree (replay a failure from the @example it prints).
# The autouse caplog fixture of conftest.py is function-scoped; sharing it across examples is harmless.
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
QUICK = settings(FAST, max_examples=60)

# ---------------------------------------------------------------------------------------------------------
# Shared strategies
# ---------------------------------------------------------------------------------------------------------


def one_in(draw: Callable[..., Any], n: int) -> bool:
    """True about once in ``n`` draws (Hypothesis favours 0 from integers(0, n), so not that)."""
    return draw(st.sampled_from((False,) * (n - 1) + (True,)))


# The keys the parsers decide on. Variants: letter case, "_"/"-" inserted, a NUL or zero-width character,
# the long s (U+017F, folds to "s") and the Kelvin sign (U+212A, folds to "k").
KEY_WORDS = ("method", "params", "name", "arguments", "id", "jsonrpc", "result", "error", "_meta", "uri",
             "tools", "prompts", "resources", "resourceTemplates", "uriTemplate")
_INSERTS = ("_", "-", "\x00", "\u200b", "\x7f")


@st.composite
def key_variants(draw, words: tuple[str, ...] = KEY_WORDS) -> str:
    word = draw(st.sampled_from(words))
    mask = draw(st.integers(0, 2 ** len(word) - 1))
    chars = [c.swapcase() if mask >> i & 1 else c for i, c in enumerate(word)]
    trick = draw(st.sampled_from(("none", "none", "insert", "long_s", "kelvin")))
    if trick == "insert":
        chars.insert(draw(st.integers(0, len(chars))), draw(st.sampled_from(_INSERTS)))
    elif trick == "long_s":
        chars = ["\u017f" if c in "sS" else c for c in chars]
    elif trick == "kelvin":
        chars = ["\u212a" if c in "kK" else c for c in chars]
    return "".join(chars)


keys = st.one_of(st.sampled_from(KEY_WORDS), key_variants(), st.text(max_size=6))
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # lone surrogates too
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**53) - 2, 2**53 + 2), st.integers(),
    st.floats(),  # NaN and infinities: written as NaN/Infinity, which is not JSON
    st.text(max_size=10), any_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)

# Values a well-behaved client sends: what reaches the canonical form most often.
tame_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
values = tame_values | tame_values | json_values


def render(value: Any, rnd: random.Random) -> str:
    """JSON text for ``value`` the way a hostile client could write it: random whitespace, \\u escapes of
    letters in keys and strings, duplicated keys (exact or another spelling), NaN/Infinity and 1e400."""
    space = rnd.choice(("", "", " ", "\n", "\t "))
    if isinstance(value, Pairs):
        pairs = list(value)
        return "{" + space + ",".join(f"{_string(k, rnd)}:{space}{render(v, rnd)}" for k, v in pairs) + "}"
    if isinstance(value, dict):
        pairs = list(value.items())
        if pairs and rnd.random() < 0.1:
            key, _ = rnd.choice(pairs)
            twin = key if rnd.random() < 0.5 else "".join(c.swapcase() if rnd.random() < 0.5 else c for c in key)
            pairs.insert(rnd.randrange(len(pairs) + 1), (twin, rnd.choice((None, 1, "x", {}))))
        return render(Pairs(pairs), rnd)
    if isinstance(value, list):
        return "[" + space + ",".join(render(v, rnd) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, rnd)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return rnd.choice(("Infinity", "1e400")) if value > 0 else rnd.choice(("-Infinity", "-1e400"))
        return repr(value)
    return json.dumps(value)


def _string(text: str, rnd: random.Random) -> str:
    ascii_only = rnd.random() < 0.5
    if rnd.random() < 0.8:
        return json.dumps(text, ensure_ascii=ascii_only)
    # Spell some letters as escapes: "\u0074ools".
    return '"' + "".join(
        f"\\u{ord(c):04x}" if c.isascii() and c.isalpha() and rnd.random() < 0.3 else json.dumps(c, ensure_ascii=ascii_only)[1:-1]
        for c in text
    ) + '"'


class Pairs(tuple):
    """A JSON object as written, duplicates and order kept."""


encodings = st.sampled_from(("utf-8",) * 18 + ("bom", "utf-16"))


def encode(text: str, encoding: str) -> bytes:
    if encoding == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    return text.encode(encoding, "surrogatepass")  # a lone surrogate becomes CESU-8 bytes: not UTF-8


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """Raw byte mutations: insert, delete or overwrite a few bytes, or cut the tail."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(("insert", "delete", "replace", "cut")))
        at = draw(st.integers(0, len(buf)))
        byte = draw(st.sampled_from(b'{}[]",:\\\x00\xff\xc5u0 '))
        if op == "insert":
            buf.insert(at, byte)
        elif op == "delete" and at < len(buf):
            del buf[at]
        elif op == "replace" and at < len(buf):
            buf[at] = byte
        elif op == "cut":
            del buf[at:]
    return bytes(buf)


# ---------------------------------------------------------------------------------------------------------
# T1: the bearer parser
# ---------------------------------------------------------------------------------------------------------

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1
_TOKEN_CHARS = "ABCxyz019-._~+/=" + " \t\"',;%\u00e9\x00\u3000"


def check_extract_bearer(pairs: list[tuple[str, str]], query: list[tuple[str, str]], content_type: str) -> str | None:
    """R5/T1: a b64token taken from the one Authorization header, or a GatewayError; nothing else."""
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    try:
        token = extract_bearer(headers, MultiDictProxy(MultiDict(query)), content_type)
    except GatewayError:
        return None
    assert isinstance(token, str) and _B64TOKEN.fullmatch(token), token
    authorization = headers.getall("Authorization", [])
    assert len(authorization) == 1 and token in authorization[0]
    assert "access_token" not in dict(query)
    return token


bearer_values = st.builds(
    lambda scheme, space, token: scheme + space + token,
    st.sampled_from(("Bearer", "bearer", "BEARER", "Basic", "DPoP", "", "Bearer\t", " Bearer", "Bearer,")),
    st.sampled_from((" ", "  ", "\t", "", " \u00a0")),
    st.text(st.sampled_from(_TOKEN_CHARS), max_size=30) | st.just("a" * 8193),
)
header_names = st.sampled_from(("Authorization", "authorization", "AUTHORIZATION", "Content-Type", "Cookie", "X-A"))


@FAST
@given(
    pairs=st.lists(st.tuples(header_names | st.text(min_size=1, max_size=8), bearer_values | st.text(max_size=20)), max_size=4),
    query=st.lists(st.tuples(st.sampled_from(("access_token", "ACCESS_TOKEN", "token", "x")) | st.text(max_size=4), st.text(max_size=4)), max_size=3),
    content_type=st.sampled_from(("", "application/json", "application/x-www-form-urlencoded", " Application/X-WWW-Form-Urlencoded ; charset=x")) | st.text(max_size=20),
)
@example(pairs=[("Authorization", "Bearer abc.def-ghi_~+/==")], query=[], content_type="")
def test_r5_bearer_parser_returns_a_b64token_or_a_gateway_refusal(pairs, query, content_type):
    check_extract_bearer(pairs, query, content_type)


# ---------------------------------------------------------------------------------------------------------
# I6: JWT or not (lenient), JWT rules (strict)
# ---------------------------------------------------------------------------------------------------------


def check_jwt_shape(token: str) -> None:
    """R5/I6: only ``Unauthenticated`` or a value; a JWT-looking token is never handed to introspection
    (``read_jose_header`` returns ``None`` only for tokens that do not look like a JWT)."""
    looks = looks_like_jwt(token)
    assert isinstance(looks, bool)
    try:
        header = read_jose_header(token)
    except Unauthenticated as exc:
        assert looks, f"refused as a malformed JWT ({exc.reason}) but not JWT-shaped"
    else:
        assert header is None or isinstance(header, dict)
        if looks:
            assert header is not None, "a JWT-looking token would be introspected"
        if isinstance(header, dict):
            assert looks, "a strict JWT that the lenient shape test does not see"
    try:
        claims = read_unverified_claims(token)
    except Unauthenticated:
        return
    assert isinstance(claims, dict)


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="


@st.composite
def jwt_parts(draw) -> str:
    kind = draw(st.sampled_from(("json", "json", "text", "empty")))
    if kind == "text":
        return draw(st.text(st.sampled_from(_B64_ALPHABET + "~.%\u00e9 \x00"), max_size=12))
    if kind == "empty":
        return ""
    rnd = draw(st.randoms(use_true_random=True))
    value = draw(st.one_of(json_values, st.fixed_dictionaries({"alg": st.sampled_from(("RS256", "none")), "typ": st.just("at+jwt")})))
    text = draw(st.sampled_from(("", " ", "\ufeff", "\n"))) + render(value, rnd)
    data = draw(st.sampled_from(("utf-8", "utf-16", "utf-32-be")))
    raw = text.encode(data, "surrogatepass")
    form = draw(st.sampled_from(("url", "url", "padded", "standard", "noisy")))
    if form == "standard":
        return base64.b64encode(raw).decode().rstrip("=")
    out = base64.urlsafe_b64encode(raw).decode()
    if form == "url":
        out = out.rstrip("=")
    elif form == "noisy":
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.sampled_from(("~", "%", " ", "=", "*", "\u00e9"))) + out[at:]
    return out


tokens = st.one_of(
    st.text(max_size=40),
    st.lists(jwt_parts(), min_size=1, max_size=4).map(".".join),
    st.lists(jwt_parts(), min_size=3, max_size=3).map(".".join),
)


@FAST
@given(token=tokens)
@example(token="eyJhbGciOiJSUzI1NiJ9.e30.")
@example(token="eyJhbGciOiJSUzI1NiJ9=.e30.c2ln")  # padded: JWT-shaped, strictly malformed
@example(token="{{{.x.y")
def test_i6_jwt_shape_test_never_lets_a_jwt_looking_token_reach_introspection(token):
    check_jwt_shape(token)


# ---------------------------------------------------------------------------------------------------------
# I1, I2, R4: the JSON-RPC parser
# ---------------------------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types all the way down (``1``, ``1.0`` and ``True`` differ)."""
    if type(a) is not type(b) and not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


def _no_folded_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    folded = [fold_key(k) for k, _ in pairs]
    assert len(set(folded)) == len(folded), f"two keys equal under fold_key in the canonical form: {[k for k, _ in pairs]}"
    return dict(pairs)


def _matches(batch: Batch, wire: Any) -> None:
    elements = wire if batch.is_array else [wire]
    assert isinstance(elements, list) and len(elements) == len(batch.messages)
    for message, element in zip(batch.messages, elements):
        assert isinstance(element, dict)
        assert element.get("jsonrpc") == "2.0"
        assert set(element) <= set(FORWARDED_MEMBERS[message.kind]), (message.kind, list(element))
        if message.kind == "response":
            assert "method" not in element and "params" not in element
            assert _same(element["id"], message.id)
            continue
        assert _same(element["method"], message.method)
        assert ("id" in element) == (message.kind == "request")
        if message.kind == "request":
            assert _same(element["id"], message.id)
        if "params" in element:
            assert _same(element["params"], dict(message.params))
        else:
            assert not message.params


def check_parse_body(body: bytes, content_type: str, max_batch: int = 50) -> Batch | None:
    """R5: a Batch or a BadRequest; I1: what is forwarded is what was decided and parses to it again;
    I2: no two keys anywhere in the forwarded document fold to one."""
    try:
        batch = parse_body(body, content_type, max_batch=max_batch)
    except MalformedMessage:
        return None
    # (Any other GatewayError, or any other exception, fails the property.)
    assert isinstance(batch, Batch) and batch.messages
    canonical = batch.canonical
    assert isinstance(canonical, bytes) and not canonical.startswith(b"\xef\xbb\xbf")
    wire = json.loads(canonical.decode("utf-8"), object_pairs_hook=_no_folded_duplicates)
    _matches(batch, wire)
    again = parse_body(canonical, "application/json", max_batch=max_batch)  # must not raise: I1
    assert again.is_array == batch.is_array and again.canonical == canonical
    for first, second in zip(batch.messages, again.messages, strict=True):
        assert first.kind == second.kind and _same(first.method, second.method) and _same(first.id, second.id)
        assert _same(dict(first.params), dict(second.params))
    return batch


methods = st.sampled_from(("tools/call", "tools/list", "ping")) | st.sampled_from((
    "tools/call", "tools/list", "prompts/get", "resources/read", "resources/subscribe", "completion/complete",
    "initialize", "ping", "notifications/initialized", "notifications/../tools/call", "tools/call ", "x.y/z",
)) | st.text(max_size=12)
rpc_ids = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.integers(-3, 3), st.text(max_size=3),
                    st.none(), st.booleans(), st.floats(0, 2), st.just(2**60))


@st.composite
def rpc_messages(draw) -> dict[str, Any]:
    """JSON-RPC-shaped objects, right often enough to reach the canonical form, wrong in every way too."""
    obj: dict[str, Any] = {}
    if not one_in(draw, 20):
        obj["jsonrpc"] = draw(st.sampled_from(("2.0",) * 12 + ("1.0", 2.0)))
    kind = draw(st.sampled_from(("request",) * 5 + ("notification", "notification", "response", "response", "junk")))
    if kind in ("request", "response"):
        obj["id"] = draw(rpc_ids)
    if kind in ("request", "notification"):
        method = draw(methods)
        obj["method"] = method
        if not one_in(draw, 5):
            params: dict[str, Any] = {}
            if method in ("tools/call", "prompts/get"):
                params["name"] = draw(st.sampled_from(("echo", "drop_table", "echo", " echo", "echo\x00", "")) | st.text(max_size=5))
                if draw(st.booleans()):
                    params["arguments"] = draw(st.dictionaries(keys, values, max_size=3))
            elif method.startswith("resources/"):
                params["uri"] = draw(st.sampled_from(("file:///a", "")) | st.text(max_size=5))
            if draw(st.booleans()):
                params.update(draw(st.dictionaries(keys, values, max_size=2)))
            obj["params"] = params
    if kind == "response":
        obj[draw(st.sampled_from(("result", "error", "result")))] = draw(values)
    if one_in(draw, 3):
        obj.update(draw(st.dictionaries(keys, values, max_size=2)))
    return obj


@st.composite
def rpc_bodies(draw) -> bytes:
    rnd = draw(st.randoms(use_true_random=True))
    shape = draw(st.sampled_from(("message",) * 5 + ("batch", "batch", "value")))
    if shape == "message":
        document: Any = draw(rpc_messages())
    elif shape == "batch":
        document = draw(st.lists(rpc_messages(), max_size=5))
    else:
        document = draw(json_values)
    body = encode(render(document, rnd), draw(encodings))
    return draw(mutated(body)) if one_in(draw, 8) else body


content_types = st.sampled_from((
    "application/json", "application/json", "application/json; charset=utf-8", "Application/JSON ; charset=\"UTF-8\"",
    "application/json; charset=utf-16", "text/plain", "",
)) | st.text(max_size=20)


@settings(FAST, max_examples=300)
@given(body=rpc_bodies(), content_type=content_types, max_batch=st.sampled_from((50, 50, 3)))
@example(body=b"[" * 5000 + b"]" * 5000, content_type="application/json", max_batch=50)
@example(body=b'{"a":' * 65 + b"1" + b"}" * 65, content_type="application/json", max_batch=50)
@example(body=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{"x":1e400}}}',
         content_type="application/json", max_batch=50)
@example(body=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"\\ud800"}}', content_type="application/json", max_batch=50)
@example(body=b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n":' + b"1" * 5000 + b"}}", content_type="application/json", max_batch=50)
def test_i1_r5_what_is_forwarded_parses_to_what_was_decided(body, content_type, max_batch):
    check_parse_body(body, content_type, max_batch)


@QUICK
@given(body=st.binary(max_size=200), content_type=content_types)
def test_r5_jsonrpc_parser_refuses_any_bytes_with_a_bad_request(body, content_type):
    check_parse_body(body, content_type)


# ---------------------------------------------------------------------------------------------------------
# U4, R4: the SSE framer
# ---------------------------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"


def _split(stream: bytes, cuts: list[int]) -> Iterator[bytes]:
    previous = 0
    for cut in sorted(set(cuts)):
        yield stream[previous:cut]
        previous = cut
    yield stream[previous:]


def _feed(chunks: Iterator[bytes]) -> tuple[list[bytes], EventSplitter]:
    splitter = EventSplitter()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events, splitter


def check_sse_framing(stream: bytes, cuts: list[int]) -> None:
    """No byte lost, added or reordered, whatever the chunking; chunking changes no event a client reads.

    Exact chunking-invariance of the raw events holds for chunkings that do not end a chunk in CR: a CR
    at the end of what has arrived is taken as a line end at once (sse.py, U4: never hold an event back
    waiting for the next byte), so ``data: a\\n\\r`` + ``\\nb`` yields the event ``data: a\\n\\r`` and a
    next event that begins with the LF, where the whole stream yields ``data: a\\n\\r\\n``. A client reads
    the same events either way (WHATWG: the LF after that CR completes a CRLF, an empty line before an
    event dispatches nothing), which is what the last assertion checks for every chunking.
    """
    whole, whole_splitter = _feed(iter([stream]))
    chunks = list(_split(stream, cuts))
    events, splitter = _feed(iter(chunks))
    body = stream[3:] if stream.startswith(_BOM) else stream
    for got, name in ((whole, "whole"), (events, "chunked")):
        out = b"".join(got)
        assert body.startswith(out), f"{name}: events are not the stream's bytes in order"
        assert all(event for event in got)
    rest = body[len(b"".join(events)):]
    assert splitter.pending == bool(rest.strip())
    if not any(chunk.endswith(b"\r") for chunk in chunks[:-1]):
        assert events == whole
    assert _client_view(events) == _client_view(whole)
    # Once the stream ends with a blank line, nothing that is not whitespace stays behind.
    flushed = events + splitter.feed(b"\n\n")
    assert (body + b"\n\n").startswith(b"".join(flushed))
    assert not (body + b"\n\n")[len(b"".join(flushed)):].strip()
    for event in events:
        try:
            parse_event(event)
        except UnicodeDecodeError:
            pass


def _client_view(events: list[bytes]) -> list[tuple[str | None, str | None, str | None]]:
    """The fields a WHATWG client reads from each raw event in order (data, event, id), decoding as a
    browser does (UTF-8, bad bytes replaced); events with no field at all dispatch nothing."""
    view = []
    for raw in events:
        data: list[str] = []
        event = event_id = None
        for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8", "replace")):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                event_id = value
        if data or event is not None or event_id is not None:
            view.append(("\n".join(data) if data else None, event, event_id))
    return view


sse_pieces = st.sampled_from((
    b"data: ", b"data:", b"event: message\n", b"id: 7\n", b"retry: 10\n", b": keep-alive\n", b"\n", b"\r", b"\r\n",
    b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}', b"x", _BOM, b"\xff", b"\xc3", b" ",
))
sse_streams = st.lists(sse_pieces | st.binary(max_size=4), max_size=25).map(b"".join)


@settings(FAST, max_examples=300)
@given(stream=sse_streams, cuts=st.lists(st.integers(0, 200), max_size=6) | st.just(list(range(200))))
@example(stream=b"data: a\n\r\ndata: b\n\n", cuts=[9])
# atheris, fed one byte at a time: a non-UTF-8 event ending in CR, CR, LF (a bug of an earlier _client_view)
@example(stream=b"d:ata: a\n\r\ndata: b\r\n\n,ata: \xef\xbbdatc: p c\r\r\n", cuts=list(range(200)))
def test_r4_sse_framing_is_chunking_invariant_and_loses_no_byte(stream, cuts):
    check_sse_framing(stream, [cut for cut in cuts if cut <= len(stream)])


@pytest.mark.parametrize("chunks", [[b"\n\n", _BOM + b"data: x\n\n"], [b"\n", b"\n" + _BOM + b"data: x\n\n"]])
def test_r4_sse_only_a_leading_bom_is_dropped(chunks):
    events, _ = _feed(iter(chunks))
    whole, _ = _feed(iter([b"".join(chunks)]))
    assert events == whole and b"".join(events) == b"".join(chunks)


@QUICK
@given(raw=st.binary(max_size=60) | sse_streams)
def test_r5_parse_event_raises_only_unicode_decode_error(raw):
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            parse_event(raw)
    else:
        event = parse_event(raw)
        assert event.data is None or isinstance(event.data, str)


# ---------------------------------------------------------------------------------------------------------
# I8, Z4: the list filter
# ---------------------------------------------------------------------------------------------------------

DENIED = frozenset({"delete_records", "secret_prompt", "file:///etc/shadow"})
ITEM_NAMES = ("search", "echo", "file:///ok", *sorted(DENIED))
LIST_KEYS = {"tools": "name", "prompts": "name", "resources": "uri", "resourceTemplates": "uriTemplate"}


def _denying(_scope: bytes | None) -> Callable[[str, str], bool]:
    return lambda _method, name: name not in DENIED


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _casefold_last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key.casefold(): value for key, value in pairs}


READERS: dict[str, Callable[[str | bytes], Any]] = {
    "python json": json.loads,
    "first-wins": lambda text: json.loads(text, object_pairs_hook=_first_wins),
    "case-insensitive": lambda text: json.loads(text, object_pairs_hook=_casefold_last_wins),
}


def _denied_items(document: Any, folded: bool) -> list[str]:
    """Denied names in positions a reader takes for list items: [batch of] message.result.<list>[i].<name>."""
    found = []
    result_key = "result"
    list_keys = {k.casefold(): v.casefold() for k, v in LIST_KEYS.items()} if folded else LIST_KEYS
    for message in document if isinstance(document, list) else [document]:
        result = message.get(result_key) if isinstance(message, dict) else None
        if not isinstance(result, dict):
            continue
        for list_key, name_key in list_keys.items():
            items = result.get(list_key)
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get(name_key) in DENIED:
                    found.append(item[name_key])
    return found


def _visible_denied(data: str | bytes) -> dict[str, list[str]]:
    seen = {}
    for name, reader in READERS.items():
        try:
            document = reader(data)
        except (ValueError, RecursionError):
            continue  # a reader that cannot read the output sees no list
        found = _denied_items(document, folded=name == "case-insensitive")
        if found:
            seen[name] = found
    return seen


def _sse_data(raw: bytes) -> str | None:
    """An independent WHATWG reading of one event's data field."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    data = []
    for line in re.split(r"\r\n|\r|\n", text):
        name, colon, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    return "\n".join(data) if data else None


def check_list_filter_body(body: bytes, strict: bool) -> None:
    """I8: no reader finds a denied name as a list item in what leaves; R5: only UpstreamError."""
    try:
        out = ListFilter(_denying, strict=strict).filter_json_body(body)
    except UpstreamError:
        return
    assert isinstance(out, bytes)
    assert not _visible_denied(out), _visible_denied(out)


def check_list_filter_event(raw: bytes, strict: bool) -> None:
    out = ListFilter(_denying, strict=strict).filter_event(raw)
    if out is None:
        return
    assert isinstance(out, bytes)
    data = _sse_data(out)
    if data is not None:
        assert not _visible_denied(data), _visible_denied(data)


name_key_spellings = st.sampled_from(("name", "name", "Name", "NAME", "uri", "URI", "uriTemplate", "uritemplate", "n\u0430me"))
list_key_spellings = st.sampled_from((*LIST_KEYS, *LIST_KEYS, "Tools", "TOOLS", "tool\u017f", "Prompts", "RESOURCES", "resourcetemplates", "tool"))
result_key_spellings = st.sampled_from(("result", "result", "Result", "RESULT", "re\u017fult"))


@st.composite
def list_items(draw) -> Any:
    if one_in(draw, 10):
        return draw(json_values)
    pairs = [(draw(name_key_spellings), draw(st.sampled_from(ITEM_NAMES))) for _ in range(draw(st.integers(1, 2)))]
    if draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), ("description", draw(st.text(max_size=4))))
    return Pairs(pairs)


@st.composite
def list_answers(draw) -> Any:
    def message() -> Pairs:
        lists = [(draw(list_key_spellings), draw(st.lists(list_items(), max_size=4) | json_values)) for _ in range(draw(st.integers(1, 2)))]
        if draw(st.booleans()):
            lists.append(("nextCursor", "c2"))
        results = [(draw(result_key_spellings), Pairs(lists)) for _ in range(draw(st.integers(1, 2)))]
        return Pairs([("jsonrpc", "2.0"), ("id", draw(st.integers(0, 3))), *results])

    shape = draw(st.sampled_from(("message", "message", "batch", "other")))
    if shape == "message":
        return message()
    if shape == "batch":
        return [message() for _ in range(draw(st.integers(0, 3)))]
    return draw(json_values)


@st.composite
def list_bodies(draw) -> bytes:
    rnd = draw(st.randoms(use_true_random=True))
    body = encode(render(draw(list_answers()), rnd), draw(encodings))
    return draw(mutated(body)) if one_in(draw, 6) else body


@st.composite
def list_events(draw) -> bytes:
    rnd = draw(st.randoms(use_true_random=True))
    text = render(draw(list_answers()), rnd)
    newline = draw(st.sampled_from(("\n", "\r\n", "\r")))
    lines = [f"data: {line}" if not one_in(draw, 10) else f"data:{line}" for line in text.split("\n")]
    if draw(st.booleans()):
        lines.insert(0, "event: message")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(("id: 4", ": comment \"tools\"", "retry: 5"))))
    raw = (newline.join(lines) + newline * 2).encode("utf-8", "surrogatepass")
    return draw(mutated(raw)) if one_in(draw, 6) else raw


@settings(FAST, max_examples=250)
@given(body=list_bodies(), strict=st.booleans())
@example(body=b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete_records"}],"tools":[]}}', strict=False)
@example(body=b'{"jsonrpc":"2.0","id":1,"result":{"Tools":[{"name":"delete_records"}]}}', strict=False)
@example(body=b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search","name":"delete_records"}]}}', strict=False)
@example(body=b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete_records","name":"search"}]}}', strict=False)
@example(body=b'[{"jsonrpc":"2.0","id":1,"result":{"\\u0074ools":[{"NAME":"delete_records","name":"search"}]}}]', strict=False)
def test_i8_a_filtered_json_body_never_shows_a_denied_item_to_any_reader(body, strict):
    check_list_filter_body(body, strict)


@settings(FAST, max_examples=200)
@given(raw=list_events(), strict=st.booleans())
@example(raw=b'data: {"jsonrpc":"2.0","id":1,\ndata: "result":{"tools":[{"name":"delete_records"}]}}\n\n', strict=False)
@example(raw=b'event: message\r\ndata: [{"jsonrpc":"2.0","id":1,"result":{"tool\xc5\xbf":[{"name":"delete_records"}]}}]\r\n\r\n', strict=False)
def test_i8_a_filtered_sse_event_never_shows_a_denied_item_to_any_reader(raw, strict):
    check_list_filter_event(raw, strict)


# ---------------------------------------------------------------------------------------------------------
# U1, I4, I5: header hygiene
# ---------------------------------------------------------------------------------------------------------

PUBLIC_URL = "https://gw.example.com/mcp"
UPSTREAM_HOST = "127.0.0.1:9000"
_HEADER_POOL = (
    "Authorization", "Cookie", "Origin", "Referer", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
    "X-Forwarded-Proto", "X-Forwarded-Prefix", "X-Real-IP", "X-Auth-Request-Email", "Remote-User", "X-Original-URL",
    "Mcp-Session-Id", "Mcp_Session_Id", "MCP-Protocol-Version", "Mcp-Param-Region", "Mcp_Param_Region", "Last-Event-ID",
    "Connection", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "DPoP", "Host", "Content-Length",
    "Content-Type", "Accept", "X_Custom", "X-Custom", "User-Agent",
)
_TOKEN = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"  # RFC 9110 §5.6.2
client_header_names = st.one_of(
    st.sampled_from(_HEADER_POOL).flatmap(lambda n: st.sampled_from((n, n.lower(), n.upper(), n.swapcase()))),
    st.text(st.sampled_from(_TOKEN), min_size=1, max_size=10),
)
# aiohttp's parser takes header names as RFC 9110 tokens only; values are anything but CR, LF and NUL.
client_header_values = st.one_of(
    st.text(st.characters(exclude_characters="\r\n\x00"), max_size=12),
    st.lists(st.sampled_from(_HEADER_POOL), max_size=3).map(", ".join),  # Connection: X-Custom, Cookie
)


def check_upstream_headers(pairs: list[tuple[str, str]], remote: str | None) -> None:
    """I4: the edge check raises only GatewayError. I5, U1: what the upstream gets carries no credential of
    the client, no underscore name, no hop-by-hop or Connection-named header, no identity-claiming header,
    and X-Forwarded-* only as the gateway's own three, with the gateway's values."""
    client = CIMultiDictProxy(CIMultiDict(pairs))
    try:
        check_client_headers(client)
    except GatewayError:
        pass
    built = upstream_request_headers(client, dropped=never_forwarded(()), remote=remote, public_url=PUBLIC_URL,
                                     upstream_host=UPSTREAM_HOST)
    connection_named = {t.strip().lower() for v in client.getall("Connection", []) for t in v.split(",") if t.strip()}
    own = {"x-forwarded-for": remote or "unknown", "x-forwarded-proto": "https", "x-forwarded-host": "gw.example.com"}
    for name in built:
        lower = name.lower()
        assert lower not in ("authorization", "cookie", "proxy-authorization", "dpop"), name
        assert "_" not in name, name
        assert lower not in IDENTITY_CLAIMING_HEADERS, name
        assert lower not in HOP_BY_HOP_HEADERS, name
        assert not lower.startswith("x-auth-request-"), name
        if lower not in ("host", "accept-encoding") and lower not in own:
            assert lower not in connection_named, name
        if lower.startswith("x-forwarded-"):
            assert lower in own and built.getall(name) == [own[lower]], (name, built.getall(name))
    assert built.getall("Host") == [UPSTREAM_HOST]


@FAST
@given(pairs=st.lists(st.tuples(client_header_names, client_header_values), max_size=8),
       remote=st.sampled_from((None, "203.0.113.7", "::1")))
@example(pairs=[("X-Forwarded-For", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2"), ("Forwarded", "for=1.2.3.4")], remote=None)
@example(pairs=[("Connection", "X-Custom"), ("X-Custom", "1"), ("Mcp_Session_Id", "s")], remote="203.0.113.7")
def test_i5_upstream_headers_never_carry_client_credentials_or_identity_claims(pairs, remote):
    check_upstream_headers(pairs, remote)


# ---------------------------------------------------------------------------------------------------------
# R5: the configuration loader
# ---------------------------------------------------------------------------------------------------------

# The configuration's shape (shared/design/config.md), so generated trees reach every section's checks.
_ISSUER = ("issuer", "name", "jwks_uri", "audiences", "algorithms", "token_type", "leeway")
CONFIG_SHAPE: dict[str, Any] = {
    "server": ("public_url", "host", "port", "allowed_origins", "max_body_bytes", "shutdown_grace", "header_timeout",
               "body_timeout", "keepalive_timeout", "max_connections", "max_batch"),
    "upstream": {
        "url": None, "connect_timeout": None, "response_timeout": None, "identity_headers": None,
        "strip_headers": None, "max_list_bytes": None,
        "auth": ("type", "header", "value", "value_file", "token_endpoint", "client_id", "client_secret",
                 "client_secret_file", "scope", "audience", "resource"),
        "identity_assertion": ("key_file", "header", "ttl"),
    },
    "resource": ("name", "documentation", "scopes_supported", "authorization_servers"),
    "auth": {
        "issuers": [_ISSUER],
        "introspection": ("endpoint", "client_id", "client_secret", "client_secret_file", "auth_method", "cache_ttl", "max_concurrent"),
        "jwks": ("cache_min", "cache_max", "refresh_cooldown", "fetch_timeout", "max_bytes"),
        "required_scopes": None, "method_scopes": None, "tool_scopes": None,
    },
    "authorization": ("policies", "schema", "entities", "group_claims", "reload"),
    "limits": {"per_principal": ("concurrent", "rate", "burst")},
    "logging": ("level", "format"),
    "audit": ("enabled", "file"),
}
# Files the generated paths may name, created in the base directory (see config_base).
CONFIG_FILES = {"secret.txt": b"s3cret\n", "binary.der": b"\x30\x82\xff\xfe\x00", "policies/p.cedar": b"permit (principal, action, resource);\n"}
config_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70000), st.floats(), st.dates(),
    st.sampled_from((
        "https://gw.example.com/mcp", "http://127.0.0.1:8080/mcp", "http://[", "https://h:0443/", "https://h:/x",
        "http://[::1", "api://x", "30s", "1h30m", "0s", "9" * 400 + "h", "RS256", "HS256", "at+jwt", "any", "static",
        "client_credentials", "token_exchange", "none", "info", "json", "true", "${HOME}", "${NOT_SET_ANYWHERE}",
        "secret.txt", "binary.der", "policies", "missing.txt", "a\x00b", "/dev/null", ".", "", " ", "*",
    )),
    st.text(max_size=8),
)
config_values = st.recursive(
    config_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5) | st.integers() | st.none(), children, max_size=3),
    max_leaves=8,
)


@st.composite
def config_trees(draw, shape: Any = CONFIG_SHAPE) -> Any:
    """A tree that follows the configuration's shape most of the time and anything at all otherwise."""
    if one_in(draw, 8):
        return draw(config_values)
    if isinstance(shape, list):
        return [draw(config_trees(shape[0])) for _ in range(draw(st.integers(0, 3)))]
    if isinstance(shape, tuple):
        shape = dict.fromkeys(shape)
    if shape is None:
        return draw(config_values)
    tree = {}
    for key in draw(st.lists(st.sampled_from(sorted(shape)), unique=True, max_size=len(shape))):
        tree[key] = draw(config_trees(shape[key]))
    if one_in(draw, 10):
        tree[draw(st.text(max_size=6) | st.integers() | st.none())] = draw(config_values)
    return tree


def check_parse_config(data: Any, base_dir: Path, *, step_over_known: bool = True) -> Config | None:
    """R5: any tree is a Config or a ConfigError whose every problem names the source. A Config has
    finite durations (R1: a limit that never fires is no limit)."""
    try:
        config = parse_config(data, source="x.yaml", base_dir=base_dir)
    except ConfigError as exc:
        assert exc.problems and all(problem.startswith("x.yaml") for problem in exc.problems), exc.problems
        return None
    except Exception as exc:
        if step_over_known and known_bug(exc):
            return None
        raise
    assert isinstance(config, Config)
    infinite = _infinite_durations(config)
    if infinite and not (step_over_known and "R5-7" in KNOWN_BUGS):
        raise AssertionError(f"durations that never fire: {infinite}")
    return config


def check_load_config(text: bytes, folder: Path, *, step_over_known: bool = True) -> Config | None:
    """R5: any file is a Config or a ConfigError naming the file."""
    path = folder / "gateway.yaml"
    path.write_bytes(text)
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(str(path) in problem for problem in exc.problems), exc.problems
        return None
    except Exception as exc:
        if step_over_known and known_bug(exc):
            return None
        raise
    assert isinstance(config, Config)
    return config


def _infinite_durations(config: Config) -> list[str]:
    found = []
    for section in ("server", "upstream", "auth", "limits"):
        stack = [(section, getattr(config, section))]
        while stack:
            path, value = stack.pop()
            for name in getattr(value, "__slots__", ()):
                item = getattr(value, name)
                if isinstance(item, float) and not math.isfinite(item):
                    found.append(f"{path}.{name}")
                elif hasattr(item, "__slots__") and not isinstance(item, (str, Path)):
                    stack.append((f"{path}.{name}", item))
                elif isinstance(item, tuple):
                    stack.extend((f"{path}.{name}[{i}]", x) for i, x in enumerate(item) if hasattr(x, "__slots__"))
    return found


def make_config_base(folder: Path) -> Path:
    for name, content in CONFIG_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def config_base(tmp_path_factory) -> Path:
    return make_config_base(tmp_path_factory.mktemp("config"))


# A configuration that loads (with config_base as its folder): overlays on it reach the checks that only
# run once every section is present, and the Config's own invariants.
VALID_CONFIG = {
    "server": {"public_url": "https://gw.example.com/mcp"},
    "upstream": {"url": "http://127.0.0.1:9000/mcp"},
    "auth": {"issuers": [{"issuer": "https://idp.example.com"}]},
    "authorization": {"policies": "policies"},
}


def _overlay(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: _overlay(base[k], v) if k in base else v for k, v in extra.items()}}
    return extra


@settings(FAST, max_examples=200)
@given(data=config_trees().map(lambda tree: _overlay(VALID_CONFIG, tree)))
@example(data=VALID_CONFIG)
def test_r5_config_loader_keeps_a_good_configuration_good_or_names_the_problem(config_base, data):
    check_parse_config(data, config_base)


@settings(FAST, max_examples=200)
@given(data=config_trees())
@example(data={"server": {"public_url": 5, "port": "x"}, "auth": {"issuers": [None, 3]}, 7: None})
def test_r5_config_loader_refuses_any_tree_with_a_config_error(config_base, data):
    check_parse_config(data, config_base)


@st.composite
def yaml_texts(draw) -> bytes:
    kind = draw(st.sampled_from(("dump", "dump", "snippet", "bytes")))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "snippet":
        return draw(st.sampled_from(YAML_SNIPPETS))
    text = yaml.safe_dump(draw(config_trees()), allow_unicode=draw(st.booleans()))
    if draw(st.booleans()) and ": " in text:  # tag one value: every SafeLoader constructor gets odd input
        at = draw(st.sampled_from([m.end() for m in re.finditer(": ", text)]))
        text = text[:at] + draw(st.sampled_from(YAML_TAGS)) + " " + text[at:]
    return draw(mutated(text.encode())) if draw(st.booleans()) else text.encode()


YAML_TAGS = ("!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!binary", "!!map", "!!seq", "!!set",
             "!!omap", "!!pairs", "!!merge", "!!value", "!custom", "!!python/tuple")


# Valid YAML that the plain SafeLoader turns into something odd, and a few that are not YAML.
YAML_SNIPPETS = (
    b"server: {port: 8080}\n", b"{a: 1, a: 2}\n", b"&a [*a]\n", b"server: !!binary aGk=\n", b"- a\n- b\n",
    b"server:\n  port: 0x1F\n", b"server: {port: 1_000}\n", b"%YAML 1.1\n---\nserver: null\n", b"!!python/object:os.system x\n",
    b"\t- x\n", b"key: 'unterminated\n", b"server: ~\n...\n---\nb: 2\n",
)


@QUICK
@given(text=yaml_texts())
# atheris, both R5-2 (stepped over here): !!timestamp on a string that is no timestamp (AttributeError inside
# PyYAML), and an empty !!int key (IndexError).
@example(text=b"upstream:\n  url: http://127.0.0.1:9000/mcp\n  auth: {type: static, header: !!timestamp X-Api-Key}\n")
@example(text=b"!!int : {public_url: 'https://gw.example.com/mcp'}\nupstream: {url: 'http://127.0.0.1:9000/mcp'}\n")
def test_r5_config_file_of_any_text_is_a_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        check_load_config(text, make_config_base(Path(folder)))


# ---------------------------------------------------------------------------------------------------------
# Bugs found by these properties (and by fuzz/), kept as failing examples until fixed
# ---------------------------------------------------------------------------------------------------------
#
# Each bug has an id, a one-line description and a matcher that recognises its exception: the generic
# properties above step over a recognised exception (so they keep guarding everything else), the strict
# xfail tests below reproduce each one minimally. When a bug is fixed its xfail test passes, strict xfail
# makes that a failure, and the fixer deletes the mark and the KNOWN_BUGS entry.

KNOWN_BUGS: dict[str, str] = {}  # R5-1 to R5-8 (configuration loader) were fixed; their tests below stay


def _innermost_gateway_function(exc: BaseException) -> str | None:
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if f"{os.sep}gateway{os.sep}" in frame.filename]
    return frames[-1].name if frames else None


def known_bug(exc: BaseException) -> str | None:
    """The id of the known (still open) bug ``exc`` is an instance of, or None for a new one."""
    bug = _matching_bug(exc)
    return bug if bug in KNOWN_BUGS else None


def _matching_bug(exc: BaseException) -> str | None:
    where = _innermost_gateway_function(exc)
    huge_int = isinstance(exc, ValueError) and "integer string conversion" in str(exc)
    if where in ("load_config", "_construct_unique_mapping"):
        if isinstance(exc, RecursionError):
            return "R5-3"
        if isinstance(exc, UnicodeDecodeError) and where == "load_config":
            return "R5-1"
        if isinstance(exc, (TypeError, ValueError, AttributeError, LookupError)):  # LookupError: IndexError, KeyError
            return "R5-2"
    if huge_int and where in ("_string", "close", "take_scope_map", "take_str_map", "_close_match", "key_path"):
        return "R5-6"
    if isinstance(exc, ValueError) and where == "_server":
        return "R5-4"
    if isinstance(exc, ValueError) and where == "take_secret":  # UnicodeDecodeError is a ValueError
        return "R5-5"
    if isinstance(exc, OSError) and where in ("_authorization", "_upstream_auth", "_identity_assertion"):
        return "R5-8"
    return None


def _bug(bug_id: str, raises: type[BaseException] | tuple[type[BaseException], ...]) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, raises=raises, reason=f"BUG {bug_id}: {KNOWN_BUGS[bug_id]}")


def _load(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_r5_bug_1_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    _load(tmp_path, b"server:\n  host: \x80\n")


@pytest.mark.parametrize("text", [
    b"? [a, b]\n: c\n",                       # TypeError: unhashable type: 'list'
    b"{[a]: 1}\n",
    b"server: {port: 0x_}\n",                 # no tag: the int resolver matches, int('', 16) fails
    b"server: {port: 2001-13-45}\n",          # ValueError: month must be in 1..12
    b"server: {shutdown_grace: 2001-02-30}\n",  # day is out of range for month
    b"server: {port: !!int abc}\n",           # invalid literal for int()
    b"server: {port: !!float abc}\n",
    b"server: {port: !!int }\n",              # IndexError: string index out of range (atheris)
    b"server: {reload: !!bool x}\n",          # KeyError: 'x'
    b"server: {host: !!timestamp X-Api-Key}\n",  # AttributeError: 'NoneType' object has no attribute 'groupdict' (atheris)
    b"server: !!map x\n",                      # ValueError: _construct_unique_mapping iterates a scalar node
    b"server: {port: " + b"1" * 4301 + b"}\n",  # Exceeds the limit (4300 digits)
], ids=["unhashable-key", "unhashable-flow-key", "plain-0x_", "month-13", "feb-30", "int-tag", "float-tag", "empty-int-tag",
        "bool-tag", "timestamp-tag", "map-tag-on-scalar", "4301-digits"])
def test_r5_bug_2_yaml_a_constructor_refuses_is_a_config_error(tmp_path, text):
    _load(tmp_path, text)


@pytest.mark.parametrize("text", [b"[" * 600 + b"]" * 600, b"a: " + b"{b: " * 300 + b"1" + b"}" * 300],
                         ids=["600-lists", "300-mappings"])
def test_r5_bug_3_deeply_nested_yaml_is_a_config_error(tmp_path, text):
    _load(tmp_path, text)


def _refused(data: Any, base_dir: Path, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_overlay(VALID_CONFIG, data), source="x.yaml", base_dir=base_dir)
    assert any(problem.startswith(f"x.yaml: {key}") for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("origin", ["http://[", "https://[::1"])
def test_r5_bug_4_an_allowed_origin_that_is_not_a_url_is_a_config_error(config_base, origin):
    _refused({"server": {"allowed_origins": [origin]}}, config_base, "server.allowed_origins[0]")


@pytest.mark.parametrize("path", ["binary.der", "a\x00b"], ids=["not-utf8", "nul-in-path"])
def test_r5_bug_5_an_unreadable_secret_file_is_a_config_error(config_base, path):
    upstream_auth = {"type": "client_credentials", "token_endpoint": "https://idp.example.com/token",
                     "client_id": "gw", "client_secret_file": path}
    _refused({"upstream": {"auth": upstream_auth}}, config_base, "upstream.auth.client_secret_file")


@pytest.mark.parametrize("data", [{"server": {"host": 10**4301}}, {"server": {10**4301: 1}}], ids=["value", "key"])
def test_r5_bug_6_a_huge_integer_is_a_config_error(config_base, data):
    _refused(data, config_base, "server")


def test_r5_bug_7_an_infinite_duration_is_a_config_error(config_base):
    _refused({"server": {"header_timeout": "1" + "0" * 400 + "s"}}, config_base, "server.header_timeout")


@pytest.mark.parametrize("data, key", [
    ({"authorization": {"policies": "p" * 300}}, "authorization.policies"),
    ({"authorization": {"schema": "s" * 300}}, "authorization.schema"),
    ({"upstream": {"auth": {"type": "static", "value_file": "v" * 300}}}, "upstream.auth.value_file"),
    ({"upstream": {"identity_assertion": {"key_file": "k" * 300}}}, "upstream.identity_assertion.key_file"),
], ids=["policies", "schema", "value_file", "key_file"])
def test_r5_bug_8_a_path_too_long_for_the_file_system_is_a_config_error(config_base, data, key):
    _refused(data, config_base, key)
