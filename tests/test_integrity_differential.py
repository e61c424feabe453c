"""I1-I3 differentially: what the upstream receives reads, to every model of an upstream parser, as exactly
the message the gateway decided on, or the gateway refused it and the upstream received nothing.

A Go upstream is not available here, so its decoding is modelled (tests/gostyle.py: mcp-go on
``encoding/json``, case-insensitive, last match wins) beside a first-key-wins reader and plain Python
``json``. The gateway permits everything except ``Tool::"delete_records"``, so a body that means
``delete_records`` to some upstream but something else to the gateway shows up as a bypass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.mcp.jsonrpc import MalformedMessage, parse_body
from tests.gostyle import MODELS, Reading, Refused, first_wins, go_fold, go_style, python_json
from tests.upstreams import Received

FORBIDDEN_TOOL = "delete_records"
POLICY = f'forbid (principal, action, resource == Tool::"{FORBIDDEN_TOOL}");\n'
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
ENVELOPE = {"jsonrpc", "id", "method", "params", "result", "error"}
BOM = b"\xef\xbb\xbf"


def evaluated(reading: Reading) -> bool:
    """Z1, independently of the gateway's code: every method but the handshake, liveness and notifications/*."""
    method = reading.method
    return method is not None and method not in ("initialize", "ping", "server/discover") and not method.startswith("notifications/")


def call(params: str, rpc_id: str = "1", method: str = "tools/call") -> bytes:
    return ('{"jsonrpc":"2.0","id":%s,"method":"%s","params":%s}' % (rpc_id, method, params)).encode()


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int  # 2xx: forwarded; 4xx: refused, nothing upstream
    decided: tuple[tuple[str, str | None], ...] = ()  # forwarded: (method, target) of each evaluated message


def refused(name: str, body: bytes, status: int = 400) -> Case:
    return Case(name, body, status)


def forwarded(name: str, body: bytes, *decided: tuple[str, str | None]) -> Case:
    return Case(name, body, 200, decided)


ECHO = ("tools/call", "echo")
BATCH = ('[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},'
         '{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"srv-1","result":{"ok":true}},'
         '{"jsonrpc":"2.0","id":2,"method":"tools/list"},{"jsonrpc":"2.0","id":3,"method":"ping"},'
         '{"jsonrpc":"2.0","id":"srv-2","error":{"code":-1,"message":"no"}}]')

CORPUS = [
    # -- the envelope: members spelled in another case, with controls or format characters, twice
    refused("envelope: Method beside result", b'{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"delete_records"},"result":{}}'),
    refused("envelope: METHOD after method", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","METHOD":"tools/call","params":{"name":"delete_records"}}'),
    refused("envelope: Params after params", call('{"name":"echo"},"Params":{"name":"delete_records"}')),
    refused("envelope: param\u017f (long s, raw UTF-8)", call('{"name":"echo"},"param\u017f":{"name":"delete_records"}')),
    refused("envelope: param\\u017f (long s, escaped)", call(r'{"name":"echo"},"param\u017f":{"name":"delete_records"}')),
    refused("envelope: ID", b'{"jsonrpc":"2.0","ID":1,"method":"tools/list"}'),
    refused("envelope: \\u0000method", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","\\u0000method":"tools/call","params":{"name":"delete_records"}}'),
    refused("envelope: meth\\u200bod (zero-width space)", b'{"jsonrpc":"2.0","id":1,"method":"tools/list","meth\\u200bod":"tools/call"}'),
    refused("envelope: params twice, exactly", call('{"name":"echo"},"params":{"name":"delete_records"}')),
    # -- params
    refused("params: Name after name", call('{"name":"echo","Name":"delete_records"}')),
    refused("params: NAME before name", call('{"NAME":"delete_records","name":"echo"}')),
    refused("params: nam\\u0065 spells name twice", call(r'{"name":"echo","nam\u0065":"delete_records"}')),
    refused("params: Name alone", call('{"Name":"delete_records"}')),
    refused("params: na\\u0007me (BEL)", call(r'{"name":"echo","na\u0007me":"delete_records"}')),
    refused("params: argument\u017f", call('{"name":"echo","argument\u017f":{"table":"prod"}}')),
    refused("params: Arguments", call('{"name":"echo","Arguments":{"table":"prod"}}')),
    refused("params: \\ufeffname (BOM as a format character) beside name", call(r'{"name":"echo","\ufeffname":"delete_records"}')),
    refused("params of tools/list: cursor and Cursor", call('{"cursor":"a","Cursor":"b"}', method="tools/list")),
    # -- arguments and _meta, at any depth
    refused("arguments: table and Table", call('{"name":"echo","arguments":{"table":"orders","Table":"prod_orders"}}')),
    refused("arguments: x twice, exactly", call('{"name":"echo","arguments":{"x":1,"x":2}}')),
    refused("arguments: k and Kelvin sign, nested", call(r'{"name":"echo","arguments":{"deep":{"a":{"k":1,"\u212a":2}}}}')),
    refused("arguments: s and long s, raw", call('{"name":"echo","arguments":{"s":1,"\u017f":2}}')),
    refused("arguments: id and ID inside an array", call('{"name":"echo","arguments":{"rows":[{"id":1,"ID":2}]}}')),
    refused("_meta: user and USER", call('{"name":"echo","_meta":{"user":"a","USER":"b"}}')),
    refused("_meta: progressToken twice", call('{"name":"echo","_meta":{"progressToken":1,"progressToken":2}}')),
    refused("params: _meta and _META", call('{"name":"echo","_meta":{},"_META":{"progressToken":1}}')),
    # -- batches
    refused("batch: fold duplicate in the second element", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
            b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","Name":"delete_records"}}]'),
    refused("batch: two requests share an id", b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":1,"method":"ping"}]'),
    refused("batch: empty", b"[]"),
    # -- encodings and number forms nobody reads alike
    refused("UTF-8 BOM before the body", BOM + call('{"name":"echo"}')),
    refused("UTF-16 body", call('{"name":"echo"}').decode().encode("utf-16")),
    refused("lone surrogate escape", call(r'{"name":"echo","arguments":{"t":"\ud800"}}')),
    refused("invalid UTF-8 in a string", call('{"name":"echo","arguments":{"t":"\x01"}}').replace(b"\x01", b"\xff")),
    refused("number beyond float64: 1e400", call('{"name":"echo","arguments":{"n":1e400}}')),
    refused("NaN", call('{"name":"echo","arguments":{"n":NaN}}')),
    refused("request id 1.0", call('{"name":"echo"}', rpc_id="1.0")),
    # -- method grammar (I3)
    refused("method notifications/../tools/call", call('{"name":"delete_records"}', method="notifications/../tools/call")),
    refused("method with an escaped trailing space", call('{"name":"echo"}', method=r"tools/call\u0020")),
    refused("method notifications/initialized\\u0000", b'{"jsonrpc":"2.0","method":"notifications/initialized\\u0000"}'),
    # -- the forbidden tool, however it is spelled
    refused("delete_records", call('{"name":"delete_records"}'), 403),
    refused("delete\\u005frecords", call(r'{"name":"delete\u005frecords"}'), 403),
    refused("delete_records with tools\\/call", call('{"name":"delete_records"}', method=r"tools\/call"), 403),
    refused("delete_records as a notification", b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_records"}}', 403),
    refused("batch: delete_records second", b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},'
            b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_records"}}]', 403),

    # -- forwarded: spellings that mean one thing to everyone
    forwarded("plain call", call('{"name":"echo","arguments":{"text":"hi"}}'), ECHO),
    forwarded("whitespace everywhere", b' \t\r\n{ "jsonrpc" : "2.0" ,\n "id" : 1 ,\t"method" : "tools/call" ,'
              b' "params" : { "name" : "echo" , "arguments" : { "text" : "hi" } } }\r\n ', ECHO),
    forwarded("escapes spelling keys and values", rb'{"\u006a\u0073onrpc":"\u0032.0","\u0069d":1,"\u006dethod":"tools\/call",'
              rb'"\u0070arams":{"\u006eame":"\u0065cho","arg\u0075ments":{"t\u0065xt":"a\"b\\c\/d\u00e9"}}}', ECHO),
    forwarded("number forms", call('{"name":"echo","arguments":{"a":1E2,"b":1.0,"c":-0,"d":1e-7,"e":-0.0,"f":0.1,'
                                   '"g":1.5E+300,"h":12345678901234,"i":2e0}}'), ECHO),
    refused("huge request id (beyond 2^53, I-JSON)", call('{"name":"echo"}', rpc_id="123456789012345678901234567890")),
    forwarded("largest safe request id", call('{"name":"echo"}', rpc_id=str(2**53 - 1)), ECHO),
    forwarded("escaped string id", call('{"name":"echo"}', rpc_id=r'"\u00e9-1"'), ECHO),
    forwarded("U+2028 and U+2029, raw and escaped", call('{"name":"echo","arguments":{"raw":"a\u2028b\u2029c","esc":"a\\u2028b"}}'), ECHO),
    forwarded("non-BMP, raw and as a surrogate pair", call('{"name":"echo","arguments":{"raw":"\U0001F600","pair":"\\ud83d\\ude00"}}'), ECHO),
    forwarded("tool name with Kelvin sign and non-BMP", call('{"name":"\u212aelvin\U0001F600"}'), ("tools/call", "\u212aelvin\U0001F600")),
    forwarded("extra envelope members are dropped", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},'
              b'"x-extra":{"method":"tools/call","params":{"name":"delete_records"}},"methods":"tools/call","m\xc3\xa9thod":"x"}', ECHO),
    forwarded("case variants in arguments that are not duplicates", call('{"name":"echo","arguments":{"Name":"delete_records","NAME2":1},'
                                                                        '"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}'), ECHO),
    forwarded("control and format characters in argument keys", call(r'{"name":"echo","arguments":{"a\u0000":"x\u0000y","b\u200b":"\u0007"}}'), ECHO),
    forwarded("long s and Kelvin sign keys, alone", call('{"name":"echo","arguments":{"\u017f":1,"\u212a":2}}'), ECHO),
    forwarded("resources/read with \\/ escapes", b'{"jsonrpc":"2.0","id":1,"method":"resources\\/read","params":{"uri":"file:\\/\\/\\/srv\\/a.txt"}}',
              ("resources/read", "file:///srv/a.txt")),
    forwarded("prompts/get", b'{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"summary","arguments":{"lang":"fr"}}}',
              ("prompts/get", "summary")),
    forwarded("U+FEFF inside a string value", call(r'{"name":"echo","arguments":{"t":"\ufeffx"}}'), ECHO),
    refused("arguments null (policy would see {}, the server null)", call('{"name":"echo","arguments":null}')),
    refused("arguments a list", call('{"name":"echo","arguments":[1]}')),
    forwarded("arguments nested 30 deep", call('{"name":"echo","arguments":{"a":' + '{"b":[' * 15 + "1" + "]}" * 15 + "}}"), ECHO),
    forwarded("delete_records only as an argument value", call('{"name":"echo","arguments":{"tool":"delete_records"}}'), ECHO),
    forwarded("request that also has a result member", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"result":{}}', ECHO),
    forwarded("initialize is not evaluated", b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}'),
    forwarded("a notification alone", b'{"jsonrpc":"2.0","method":"notifications/initialized"}'),
    forwarded("batch: requests, notifications and responses", BATCH.encode(), ECHO, ("tools/list", None)),
    forwarded("batch of one", b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]', ECHO),
]


async def answer_each(request: web.Request, received: Received) -> web.StreamResponse:
    """A well-formed answer to every request in the body, so the gateway's list filter has lists to read."""
    document = json.loads(received.body)
    messages = document if isinstance(document, list) else [document]
    answers = [{"jsonrpc": "2.0", "id": m["id"], "result": {"tools": []} if m["method"] == "tools/list" else {"content": []}}
               for m in messages if "method" in m and "id" in m]
    if not answers:
        return web.Response(status=202)
    return web.json_response(answers if isinstance(document, list) else answers[0])


def readings_of(body: bytes) -> dict[str, list[Reading] | str]:
    out: dict[str, list[Reading] | str] = {}
    for name, model in MODELS.items():
        try:
            out[name] = model(body)
        except Refused as exc:
            out[name] = f"refused: {exc}"
    return out


def problems_with(case: Case, status: int, received: list[Received], events: list[dict], request_id: str) -> list[str]:
    if case.status >= 400:
        problems = [] if status == case.status else [f"status {status}, expected {case.status}"]
        if received:
            problems.append(f"refused, yet the upstream received {received[0].body!r}; models read {readings_of(received[0].body)}")
        if not any(e.get("outcome") == "deny" for e in events):
            problems.append(f"refusal not audited as deny: {events}")
        return problems
    if not 200 <= status < 300 or len(received) != 1:
        return [f"status {status} with {len(received)} upstream requests, expected one forwarded request"]
    if received[0].headers.get("X-Request-Id") != request_id:
        return [f"upstream request carries X-Request-Id {received[0].headers.get('X-Request-Id')!r}"]
    return forwarding_problems(case, received[0].body, events)


def forwarding_problems(case: Case, body: bytes, events: list[dict]) -> list[str]:
    problems = []
    # I1: the gateway's own serialization, one spelling per value, nothing beyond the JSON-RPC envelope.
    if body.startswith(BOM) or body != json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode():
        problems.append(f"forwarded body is not the compact UTF-8 serialization: {body!r}")
    document = json.loads(body)
    for message in document if isinstance(document, list) else [document]:
        if set(message) - ENVELOPE:
            problems.append(f"forwarded envelope members beyond JSON-RPC's: {sorted(set(message) - ENVELOPE)}")
    # Every model reads one message, never the forbidden tool ...
    readings = readings_of(body)
    for name, read in readings.items():
        if isinstance(read, str):
            problems.append(f"{name} model {read} the forwarded body {body!r}")
        elif any(r.method == "tools/call" and r.target == FORBIDDEN_TOOL for r in read):
            problems.append(f"BYPASS: the {name} model reads {FORBIDDEN_TOOL} in the forwarded body {body!r}")
    if not readings["go"] == readings["first-wins"] == readings["python"]:
        problems.append(f"models disagree on {body!r}: {readings}")
    # ... and it is the message decided: the audit's method and target, the arguments the policy saw.
    audited = [(e.get("method"), e.get("target")) for e in events]
    if any(e.get("outcome") != "allow" for e in events):
        problems.append(f"forwarded, yet audited {events}")
    if audited != list(case.decided):
        problems.append(f"audit events say {audited}, the case expects {list(case.decided)}")
    decided_arguments = [m.params.get("arguments") for m in parse_body(case.body, "application/json").messages
                         if m.method in ("tools/call", "prompts/get")]
    for name, read in readings.items():
        if isinstance(read, str):
            continue
        if [(r.method, r.target) for r in read if evaluated(r)] != audited:
            problems.append(f"{name} model reads {[(r.method, r.target) for r in read if evaluated(r)]}, the audit says {audited}")
        if [r.arguments for r in read if r.method in ("tools/call", "prompts/get")] != decided_arguments:
            problems.append(f"{name} model reads arguments {[r.arguments for r in read]}, decided {decided_arguments}")
    return problems


async def test_i1_i2_i3_every_tricky_body_is_refused_or_read_by_every_model_as_the_audit_says(
        upstream, start_gateway, policies_dir, audit_lines):
    (policies_dir / "forbid-delete-records.cedar").write_text(POLICY)
    upstream.behaviour = answer_each
    client = await start_gateway(upstream.url)
    failures = []
    for index, case in enumerate(CORPUS):
        request_id = f"differential-{index:02d}"
        before = len(upstream.received)
        response = await client.post("/mcp", data=case.body, headers={**HEADERS, "X-Request-Id": request_id})
        await response.read()
        assert response.headers.get("X-Request-Id") == request_id
        events = [e for e in audit_lines() if e.get("request_id") == request_id]
        failures += [f"[{index:02d} {case.name}] {p}" for p in problems_with(case, response.status, upstream.received[before:], events, request_id)]
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)
    assert sum(case.status < 400 for case in CORPUS) >= 20 and sum(case.status >= 400 for case in CORPUS) >= 30


async def test_i1_the_forwarded_body_is_compact_utf8_without_bom_whatever_the_clients_spelling(upstream, start_gateway):
    upstream.behaviour = answer_each
    client = await start_gateway(upstream.url)
    escaped = (rb'{"method":"tools\/call","params":{"name":"caf\u00e9","arguments":{"n":1E2,"z":-0,"s":"a\/b\u2028\ud83d\ude00"}},'
               rb'"id":7,"jsonrpc":"\u0032.0","x-trace":"t"}')
    spaced = ' {\n  "jsonrpc": "2.0",\n  "id": 7,\n  "method": "tools/call",\n  "params": {\n    "name": "café",\n' \
             '    "arguments": {"n": 100.0, "z": 0, "s": "a/b\u2028\U0001F600"}\n  }\n}\n'
    for body, content_type in ((escaped, "application/json"), (spaced.encode(), "application/json; charset=utf-8")):
        response = await client.post("/mcp", data=body, headers={**HEADERS, "Content-Type": content_type})
        assert response.status == 200, await response.text()
    first, second = upstream.received
    expected = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"café","arguments":{"n":100.0,"z":0,"s":"a/b\u2028\U0001F600"}}}'
    assert first.body == second.body == expected.encode("utf-8")
    assert not first.body.startswith(BOM) and first.body.decode("utf-8") == expected  # raw UTF-8, not \u escapes
    for received in (first, second):
        assert received.headers["Content-Type"] == "application/json"
        assert int(received.headers["Content-Length"]) == len(expected.encode())


# The brief's attack bodies: what a Go server (and a first-key-wins reader) takes from them, against Python.
ATTACKS = [
    # body, target read by go, first-wins, python
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_records"}}',
     "delete_records", "echo", "echo"),
    (call('{"name":"echo","name":"delete_records"}'), "delete_records", "echo", "delete_records"),
    (call('{"name":"echo"},"param\u017f":{"name":"delete_records"}'), "delete_records", "echo", "echo"),
    (call(r'{"name":"echo"},"PARAM\u017f":{"name":"delete_records"}'), "delete_records", "echo", "echo"),
    (call('{"name":"echo","n\u0041me":"delete_records"}'), "delete_records", "echo", "echo"),
]


def test_i2_the_go_model_reads_delete_records_where_python_reads_echo_and_the_gateway_refuses():
    for body, go, first, python in ATTACKS:
        assert [r.target for r in go_style(body)] == [go], body
        assert [r.target for r in first_wins(body)] == [first], body
        assert [r.target for r in python_json(body)] == [python], body
        try:
            parse_body(body, "application/json")
        except MalformedMessage as refusal:
            assert refusal.status == 400
        else:
            raise AssertionError(f"the gateway accepted {body!r}")
    # A "response" to Python is a tools/call to Go: mcp-go decodes Method case-insensitively.
    response = b'{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"delete_records"},"result":{}}'
    assert [(r.kind, r.method, r.target) for r in go_style(response)] == [("request", "tools/call", "delete_records")]
    assert [(r.kind, r.method) for r in python_json(response)] == [("response", None)]
    # Go's string rules: lone surrogates and invalid UTF-8 become U+FFFD; numbers in `any` are float64.
    [lone] = go_style(call(r'{"name":"echo\ud800","arguments":{"n":9007199254740993}}'))
    assert lone.target == "echo\ufffd" and lone.arguments == {"n": 9007199254740992.0}
    assert go_style(call('{"name":"echo\x01"}').replace(b"\x01", b"\xff"))[0].target == "echo\ufffd"
    # Simple folding, not full folding: ſ is s and the Kelvin sign k, but ß is not ss.
    assert go_fold("\u017f") == go_fold("S") and go_fold("\u212a") == go_fold("k") and go_fold("\xdf") != go_fold("ss")


def test_i2_every_pair_of_keys_go_folds_together_is_refused():
    """For every set of characters ``foldName`` equates (1,400-odd, from every code point), two keys that differ
    only there are refused, at the envelope and in ``arguments``."""
    orbits: dict[str, list[str]] = {}
    for code_point in range(0x110000):
        if not 0xD800 <= code_point <= 0xDFFF:
            orbits.setdefault(go_fold(chr(code_point)), []).append(chr(code_point))
    shared = [orbit for orbit in orbits.values() if len(orbit) > 1]
    assert len(shared) > 1000  # the model folds more than ASCII
    accepted = []
    for a, b, *_ in shared:
        for body in (call('{"name":"echo","arguments":{%s:1,%s:2}}' % (json.dumps(f"x{a}"), json.dumps(f"x{b}"))),
                     b'{"jsonrpc":"2.0","id":1,"method":"ping",%s:1,%s:2}' % (json.dumps(a).encode(), json.dumps(b).encode())):
            try:
                parse_body(body, "application/json")
                accepted.append(f"U+{ord(a):04X}/U+{ord(b):04X}")
            except MalformedMessage as refusal:
                assert refusal.reason == "duplicate_key", (a, b, refusal.reason)
    assert not accepted, accepted


BIG = 9007199254740993  # 2**53 + 1: float64 has no such number; Go reads 9007199254740992


async def test_i1_integers_beyond_2_53_are_refused_or_read_alike_by_every_model(upstream, start_gateway, policies_dir):
    (policies_dir / "forbid-account.cedar").write_text(
        "forbid (principal, action, resource) when { context.arguments has account && context.arguments.account == %d };\n" % (BIG - 1))
    upstream.behaviour = answer_each
    client = await start_gateway(upstream.url)
    response = await client.post("/mcp", data=call('{"name":"transfer","arguments":{"account":%d}}' % BIG), headers=HEADERS)
    if response.status >= 400:
        assert not upstream.received
        return
    [received] = upstream.received
    readings = readings_of(received.body)
    assert readings["go"] == readings["first-wins"] == readings["python"], readings
