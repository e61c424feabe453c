"""I1-I3 on the parser itself: one reading of every message, and the bytes forwarded are that reading.

The end-to-end regressions against a real ``serve`` process are in tests/test_integrity_serve.py; these
are the pure-function cases, one table per rule.
"""

from __future__ import annotations

import json

import pytest

from gateway.mcp.jsonrpc import MAX_DEPTH, MalformedMessage, fold_key, parse_body


def parsed(body: bytes):
    return parse_body(body, "application/json")


def refused(body: bytes) -> str:
    with pytest.raises(MalformedMessage) as caught:
        parsed(body)
    assert caught.value.status == 400
    return caught.value.reason


CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":%s}'


@pytest.mark.parametrize("body", [
    # the envelope
    b'{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"param\xc5\xbf":{"name":"x"}}',  # ſ
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list","\\u0000method":"tools/call"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list","meth\\u200bod":"tools/call"}',  # zero-width space
    # params
    (CALL % '{"name":"echo","Name":"delete_records"}').encode(),
    (CALL % '{"name":"echo","NAME":"delete_records"}').encode(),
    (CALL % '{"name":"echo","nam\\u0065":"x"}').encode(),  # an escape spelling the same key
    # arguments and _meta, at any depth
    (CALL % '{"name":"echo","arguments":{"table":"orders","Table":"prod_orders"}}').encode(),
    (CALL % '{"name":"echo","arguments":{"deep":{"a":{"k":1,"\\u212a":2}}}}').encode(),  # Kelvin sign
    (CALL % '{"name":"echo","_meta":{"user":"a","USER":"b"}}').encode(),
    (CALL % '{"name":"echo","arguments":{"x":1,"x":2}}').encode(),
    b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a","Name":"b"}}]',
])
def test_i2_keys_equal_after_case_folding_or_dropping_controls_are_refused(body):
    assert refused(body) == "duplicate_key"


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":1,"Method":"tools/call","result":{}}',  # a "response" a Go server runs as a call
    b'{"jsonrpc":"2.0","ID":1,"method":"tools/list"}',
    (CALL % '{"Name":"delete_records"}').encode(),
    (CALL % '{"name":"echo","Arguments":{"table":"prod"}}').encode(),
])
def test_i2_decided_members_must_be_spelled_exactly(body):
    assert refused(body) == "member_spelling"


@pytest.mark.parametrize("method", [
    "notifications/../tools/call", "notifications/./x", "tools//call", "/tools/call", "tools/call/",
    "tools/call ", " tools/call", "tools\tcall", "tools/call\n", "tools/call\x00", "tools\\/call\u2028",
    "notifications/\u0130nitialized", "..", ".",
])
def test_i3_method_names_outside_the_grammar_are_refused(method):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode()
    assert refused(body) == "bad_method"


@pytest.mark.parametrize("method", ["tools/call", "notifications/initialized", "x-vendor/do.thing_1", "ping"])
def test_i3_canonical_method_names_pass(method):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "t", "uri": "u"}}).encode()
    assert parsed(body).messages[0].method == method


def test_i3_the_notification_exemption_needs_the_canonical_name():
    [message] = parsed(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').messages
    assert not message.evaluated
    assert refused(b'{"jsonrpc":"2.0","method":"notifications/../tools/call"}') == "bad_method"


@pytest.mark.parametrize("body, forwarded", [
    # escapes, whitespace and number forms are the client's; the upstream gets one spelling of the value
    (b'{ "jsonrpc" : "2.0", "id" : 1 , "method" : "tools/call", "params" : {"name":"ec\\u0068o","arguments":{"n":1E2,"m":-0}}}',
     {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"n": 100.0, "m": 0}}}),
    # envelope members the gateway does not decide on are not forwarded
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","x-extra":{"method":"tools/call"}}',
     {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    (b'[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","id":9,"result":{},"junk":1}]',
     [{"jsonrpc": "2.0", "id": "a", "method": "tools/list"}, {"jsonrpc": "2.0", "id": 9, "result": {}}]),
])
def test_i1_the_forwarded_bytes_are_the_gateways_serialization(body, forwarded):
    canonical = parsed(body).canonical
    assert json.loads(canonical) == forwarded
    assert canonical == json.dumps(forwarded, separators=(",", ":"), ensure_ascii=False).encode()
    assert b" " not in canonical.replace(b'" "', b"") and not canonical.startswith(b"\xef\xbb\xbf")


def test_i1_non_ascii_text_is_forwarded_as_utf8_not_escapes():
    canonical = parsed((CALL % '{"name":"caf\\u00e9"}').encode()).canonical
    assert '"café"'.encode() in canonical


def test_i1_a_lone_surrogate_is_refused_not_reinterpreted():
    assert refused((CALL % '{"name":"echo","arguments":{"t":"\\ud800"}}').encode()) == "lone_surrogate"


@pytest.mark.parametrize("method, params", [
    ("tools/call", {}), ("tools/call", {"name": 5}), ("prompts/get", {"name": None}), ("resources/read", {}),
])
def test_i2_a_call_without_the_member_the_policy_decides_on_is_refused(method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    assert refused(body) == "bad_params"


def test_r4_nesting_beyond_the_limit_is_a_400_not_a_recursion_error():
    for depth in (MAX_DEPTH + 1, 600, 5000):
        body = (CALL % ('{"name":"echo","arguments":{"a":' + "[" * depth + "]" * depth + "}}")).encode()
        assert refused(body) == "too_deep"
    ok = (CALL % ('{"name":"echo","arguments":{"a":' + "[" * 40 + "]" * 40 + "}}")).encode()
    assert parsed(ok).messages[0].name == "echo"


@pytest.mark.parametrize("a, b", [("name", "Name"), ("s", "\u017f"), ("k", "\u212a"), ("ab", "a\x00b"), ("ab", "a\u200bb"),
                                  ("strasse", "STRASSE"), ("name", "na_me"), ("dry_run", "dry-run"), ("dryrun", "DRY_RUN")])
def test_i2_fold_key_equates_what_other_parsers_equate(a, b):
    assert fold_key(a) == fold_key(b)


@pytest.mark.parametrize("name", ["delete_records\u0000", "delete_records ", " delete_records", "delete\u200brecords", "a\nb", "x\u2028"])
def test_i2_a_decided_name_with_control_characters_or_surrounding_spaces_is_refused(name):
    """A server that trims the name, or stops at a NUL, would run a tool the policy never named."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}).encode()
    assert refused(body) == "bad_name"


@pytest.mark.parametrize("number", [2**53, -(2**53), 10**30])
def test_i1_integers_beyond_the_safe_range_are_refused(number):
    """I-JSON (RFC 7493): JavaScript and Go's map[string]any read them as doubles, another number."""
    assert refused((CALL % ('{"name":"echo","arguments":{"n":%d}}' % number)).encode()) == "unsafe_integer"
    assert parsed((CALL % ('{"name":"echo","arguments":{"n":%d}}' % (2**53 - 1))).encode()).messages[0].name == "echo"


def test_i1_a_request_carrying_result_is_forwarded_as_a_request_only():
    canonical = parsed(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","result":{"x":1},"error":{}}').canonical
    assert json.loads(canonical) == {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
