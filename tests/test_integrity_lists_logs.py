"""I8 (lists are filtered wherever they appear) and I9 (logs carry no token and cannot be forged; the
Server header names no versions): regressions for findings of the security review."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path

import pytest
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.mcp.listing import ListFilter, _mentions_a_list_key
from gateway.observe.logs import JsonFormatter, RedactingFilter, TextFormatter
from tests.conftest import free_port
from tests.factories import RESOURCE, bearer
from tests.upstreams import Received, start_sse

SEARCH, DROP = {"name": "search"}, {"name": "drop_table"}
TOOLS = [SEARCH, DROP]
POLICY = 'permit (principal, action == Action::"tools/call", resource == Tool::"search");\npermit (principal, action == Action::"tools/list", resource);\n'
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}}
# A JWT-shaped string: {"alg":"RS256","typ":"at+jwt"} . {"sub":"alice","scope":"admin"} . a fake signature
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSIsInNjb3BlIjoiYWRtaW4ifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
OPAQUE = "opaque-secret-0123456789abcdef"


async def gateway_with_policy(start_gateway, recorder, tmp_path):
    folder = tmp_path / "cedar"
    folder.mkdir()
    (folder / "p.cedar").write_text(POLICY)
    return await start_gateway(recorder.url, authenticated=False, authorization={"policies": str(folder)})


def sse_answer(*raw_events: bytes):
    """An upstream answering every request with these SSE events, as they are."""

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        for raw in raw_events:
            await response.write(raw)
        await response.write_eof()
        return response

    return behaviour


def json_answer(body: bytes):
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return behaviour


def data_event(data: str | bytes, event_id: str | None = None) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return (f"id: {event_id}\n".encode() if event_id else b"") + b"event: message\ndata: " + data + b"\n\n"


def tool_names(document) -> list[str]:
    messages = document if isinstance(document, list) else [document]
    return [tool["name"] for message in messages for tool in message["result"]["tools"]]


def events_of(text: str) -> list[str]:
    return [block for block in re.split(r"\r\n\r\n|\n\n|\r\r", text) if block.strip()]


def data_of(event: str) -> str:
    return "\n".join(line[len("data: "):] for line in event.splitlines() if line.startswith("data: "))


# -- I8 end to end: SSE batches, GET streams, what a client's parser reads -------------------------------------


@pytest.mark.parametrize("asked", [LIST, CALL], ids=["list-asked", "no-list-asked"])
async def test_i8_a_batch_array_in_an_sse_event_is_filtered(start_gateway, upstream, issuer, tmp_path, asked):
    batch = [{"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}, {"jsonrpc": "2.0", "id": 2, "result": {"tools": TOOLS}}]
    upstream.behaviour = sse_answer(data_event(json.dumps(batch), "5"))
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json=asked, headers={**bearer(issuer.mint()), "Accept": "application/json, text/event-stream"})
    [event] = events_of(await response.text())
    assert "drop_table" not in event and "id: 5" in event
    assert tool_names(json.loads(data_of(event))) == ["search", "search"]


async def test_i8_an_array_in_an_event_of_a_get_stream_is_filtered(start_gateway, upstream, issuer, tmp_path):
    upstream.behaviour = sse_answer(data_event(json.dumps([{"jsonrpc": "2.0", "id": 7, "result": {"tools": TOOLS}}]), "7"))
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.get("/mcp", headers={**bearer(issuer.mint()), "Accept": "text/event-stream", "Last-Event-ID": "3"})
    [event] = events_of(await response.text())
    assert tool_names(json.loads(data_of(event))) == ["search"]


@pytest.mark.parametrize("transport", ["json", "sse"])
async def test_i8_duplicate_list_keys_reach_the_client_once_filtered(start_gateway, upstream, issuer, tmp_path, transport):
    # Python's json keeps the last "tools", a first-wins client the first: the client must get one, filtered.
    raw = '{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "search"}, {"name": "drop_table"}], "tools": [{"name": "search"}]}}'
    upstream.behaviour = json_answer(raw.encode()) if transport == "json" else sse_answer(data_event(raw))
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json=LIST, headers={**bearer(issuer.mint()), "Accept": "application/json, text/event-stream"})).text()
    assert "drop_table" not in text and text.count('"tools"') == 1


async def test_i8_a_duplicate_result_key_reaches_the_client_once(start_gateway, upstream, issuer, tmp_path):
    raw = b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table"}]}, "result": {"content": []}}'
    upstream.behaviour = json_answer(raw)
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json=CALL, headers=bearer(issuer.mint()))).text()
    assert json.loads(text) == {"jsonrpc": "2.0", "id": 1, "result": {"content": []}} and "drop_table" not in text


@pytest.mark.parametrize("key", ["Tools", "TOOLS", "toolſ"])
async def test_i8_case_variant_list_keys_are_filtered(start_gateway, upstream, issuer, tmp_path, key):
    # Go's encoding/json reads "Tools" (and, folding Unicode, "toolſ") as tools; the pre-check must see it too,
    # so the answer is to a call (nothing forces the filter to parse) and holds only the variant.
    raw = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {key: TOOLS}}, ensure_ascii=False).encode()
    upstream.behaviour = json_answer(raw)
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    body = await (await client.post("/mcp", json=CALL, headers=bearer(issuer.mint()))).json()
    assert body["result"] == {key: [SEARCH]}


async def test_i8_a_case_variant_beside_the_real_key_is_filtered_in_sse(start_gateway, upstream, issuer, tmp_path):
    upstream.behaviour = sse_answer(data_event(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": [SEARCH], "Tools": TOOLS}})))
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json=LIST, headers={**bearer(issuer.mint()), "Accept": "text/event-stream"})).text()
    assert json.loads(data_of(events_of(text)[0]))["result"] == {"tools": [SEARCH], "Tools": [SEARCH]}


@pytest.mark.parametrize("value", [{"drop_table": {"description": "drops"}}, "drop_table", None])
async def test_i8_a_list_key_that_is_not_a_list_becomes_an_empty_list(start_gateway, upstream, issuer, tmp_path, value, caplog):
    upstream.behaviour = json_answer(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": value, "nextCursor": "p2"}}).encode())
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json=LIST, headers=bearer(issuer.mint()))
    assert (await response.json())["result"] == {"tools": [], "nextCursor": "p2"}
    assert "not a list" in caplog.text


async def test_i8_unreadable_events_in_a_strict_stream_are_dropped(start_gateway, upstream, issuer, tmp_path):
    upstream.behaviour = sse_answer(
        data_event(b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table\xff"}]}}'),  # not UTF-8
        data_event('[{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table"}]}}'),  # a broken batch
        data_event('{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table"}], "n": NaN}}'),  # not JSON
        data_event('drop_table'),  # not JSON, and no list key at all
        data_event(json.dumps([{"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}]), "9"),
    )
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json=LIST, headers={**bearer(issuer.mint()), "Accept": "text/event-stream"})).text()
    [event] = events_of(text)
    assert "id: 9" in event and tool_names(json.loads(data_of(event))) == ["search"]


async def test_i8_an_unreadable_json_batch_answer_to_a_list_is_a_502(start_gateway, upstream, issuer, tmp_path):
    upstream.behaviour = json_answer(b'[{"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table"}]}, "n": 1e400}]')
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json=LIST, headers=bearer(issuer.mint()))
    assert response.status == 502 and "drop_table" not in await response.text()


# -- I8 pure: ListFilter with a fake item check ----------------------------------------------------------------


def only_search(scope: bytes | None):
    return lambda method, name: name == "search"


def refusing(scope: bytes | None):
    raise AssertionError("no list here: the item check must not even be built")


def body(document, **dumps) -> bytes:
    return json.dumps(document, **dumps).encode()


def test_i8_the_pre_check_sees_every_spelling_of_a_list_key():
    for spelled in ('"Tools"', '"TOOLS"', '"pRoMpTs"', '"Resources"', '"RESOURCETEMPLATES"', '"toolſ"', '"\\u0074ools"'):
        assert _mentions_a_list_key(f'{{"result": {{{spelled}: []}}}}'.encode()), spelled
    assert _mentions_a_list_key('{"tools": []}'.encode("utf-16"))  # json.loads (and httpx) read UTF-16 too
    # Everything else passes byte for byte, unparsed, the item check never built.
    list_filter = ListFilter(refusing)
    for raw in (b'{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "our tools"}]}}',
                b'{"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "caf\\u00e9"}]}}', b"not json"):
        assert list_filter.filter_json_body(raw) is raw
        event = data_event(raw)
        assert list_filter.filter_event(event) is event


def test_i8_every_element_of_a_batch_is_filtered():
    batch = [{"jsonrpc": "2.0", "id": i, "result": {"tools": TOOLS}} for i in (1, 2)] + [{"jsonrpc": "2.0", "method": "notifications/x"}]
    assert tool_names(json.loads(ListFilter(only_search).filter_json_body(body(batch)))[:2]) == ["search", "search"]
    filtered = ListFilter(only_search).filter_event(data_event(json.dumps(batch), "4"))
    assert filtered.startswith(b"event: message\nid: 4\n") and b"drop_table" not in filtered


def test_i8_an_answer_mentioning_a_list_key_is_always_reserialized():
    raw = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"}],"tools":[{"name":"search"}]}}'
    assert ListFilter(only_search).filter_json_body(raw) == body({"jsonrpc": "2.0", "id": 1, "result": {"tools": [SEARCH]}})


def test_i8_results_are_found_in_any_key_case_and_beside_a_method():
    list_filter = ListFilter(only_search)
    assert list_filter.filter_message({"id": 1, "Result": {"TOOLS": TOOLS}}) == {"id": 1, "Result": {"TOOLS": [SEARCH]}}
    assert list_filter.filter_message({"id": 1, "method": "x", "result": {"tools": TOOLS}}) == {"id": 1, "method": "x", "result": {"tools": [SEARCH]}}
    assert list_filter.filter_message({"id": 1, "result": {"resourceTemplates": [{"uriTemplate": "search"}, {"uriTemplate": "x"}]}})["result"] == {
        "resourceTemplates": [{"uriTemplate": "search"}]}


def test_i8_items_without_one_unambiguous_name_are_dropped():
    items = [SEARCH, {"name": "search", "Name": "drop_table"}, {"name": "search", "NAME": "search"}, {"Name": "search"}, {"name": 1}, "search", None]
    list_filter = ListFilter(only_search)
    assert list_filter.filter_message({"result": {"tools": items}}) == {"result": {"tools": [SEARCH]}}
    assert list_filter.removed == len(items) - 1


def test_i8_a_list_key_that_is_not_a_list_is_emptied():
    list_filter = ListFilter(only_search)
    for value in ({"drop_table": {}}, "drop_table", 1, None):
        assert list_filter.filter_message({"result": {"prompts": value, "nextCursor": "c"}}) == {"result": {"prompts": [], "nextCursor": "c"}}


def test_i8_what_cannot_be_written_back_faithfully_fails_closed():
    for raw in (b'{"result": {"tools": [{"name": "search"}], "n": 1e400}}', b'{"result": {"tools": [], "n": NaN}}'):
        with pytest.raises(UpstreamError):
            ListFilter(only_search).filter_json_body(raw)  # 1e400 would come back as Infinity: not JSON
        assert ListFilter(only_search).filter_event(data_event(raw)) is None
    with pytest.raises(UpstreamError):
        ListFilter(only_search).filter_json_body(b'{"tools": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_i8_a_strict_filter_drops_unreadable_events_and_filters_batches():
    list_filter = ListFilter(only_search, strict=True)
    assert list_filter.filter_event(data_event(b"\xff\xfe")) is None
    assert list_filter.filter_event(data_event("[1, 2")) is None
    assert list_filter.filter_event(data_event("[1, 2]")) == data_event("[1, 2]")
    assert list_filter.filter_event(b": comment\n\n") == b": comment\n\n"
    filtered = list_filter.filter_event(data_event(json.dumps([{"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}])))
    assert tool_names(json.loads(data_of(filtered.decode()))) == ["search"]


def test_i8_a_list_key_in_a_field_the_filter_does_not_read_is_not_passed_on():
    # A lenient SSE parser might take "Data:" for data; only what this filter read goes out.
    raw = b'id: 4\nData: {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "drop_table"}]}}\n\n'
    assert ListFilter(only_search).filter_event(raw) == b"id: 4\n\n"
    assert ListFilter(only_search).filter_event(raw.replace(b"id: 4\n", b"")) is None


def test_i8_a_utf16_body_is_filtered_not_passed():
    raw = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}).encode("utf-16")
    assert json.loads(ListFilter(only_search).filter_json_body(raw))["result"] == {"tools": [SEARCH]}


def test_i8_filtered_answers_are_still_memoized_per_scope():
    memo: dict = {}
    checks = 0

    def counting(scope):
        def allowed(method, name):
            nonlocal checks
            checks += 1
            return name == "search"

        return allowed

    raw = data_event(json.dumps([{"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}]))
    outputs = [ListFilter(counting, memo=memo, scope=lambda: b"alice").filter_event(raw) for _ in range(3)]
    assert len(set(outputs)) == 1 and b"drop_table" not in outputs[0]
    assert checks == 2 and len(memo) == 1  # two items checked once, the answer computed once
    assert ListFilter(counting, memo=memo, scope=lambda: b"bob").filter_event(raw) == outputs[0]
    assert checks == 4 and len(memo) == 2  # another caller's scope is computed afresh


# -- I9 pure: the filter and the formatters --------------------------------------------------------------------


def record(message: str = "%s %s", args=("POST", f"/mcp/{JWT}"), **fields) -> logging.LogRecord:
    entry = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, message, args, None)
    entry.fields = fields
    return entry


def test_i9_every_field_value_is_redacted_nested_ones_too():
    class Url:
        def __str__(self):
            return f"https://mcp.example.com/mcp?access_token={OPAQUE}"

    entry = record(path=f"/mcp/{JWT}", query=f"x=1&access_token={OPAQUE}&y=2", status=404,
                   headers={"Authorization": f"Bearer {OPAQUE}", "X-Api": [f"token={OPAQUE}", "plain"]},
                   url=Url(), request_id="abc123")
    fields = entry.fields
    RedactingFilter().filter(entry)
    line = JsonFormatter().format(entry)
    assert JWT[:20] not in line and OPAQUE not in line and "eyJzdWIi" not in line
    parsed = json.loads(line)
    assert parsed["path"] == "/mcp/[redacted]" and parsed["query"] == "x=1&access_token=[redacted]&y=2"
    assert parsed["headers"] == {"Authorization": "Bearer [redacted]", "X-Api": ["token=[redacted]", "plain"]}
    assert parsed["status"] == 404 and parsed["request_id"] == "abc123" and parsed["message"] == "POST /mcp/[redacted]"
    assert fields["path"] == f"/mcp/{JWT}"  # the caller's dict is not rewritten under it


def test_i9_text_lines_escape_control_characters_in_message_keys_and_values():
    forged = "\n2026-01-01 00:00:00,000 INFO    gateway.access: GET /admin 200"
    entry = record("%s %s", ("GET", "/x" + forged), path="/x" + forged + "\r\x1b[2K\x85\u2028\u2029\x7f", **{"k\ney": "v"})
    RedactingFilter().filter(entry)
    line = TextFormatter().format(entry)
    assert "\n" not in line and "\r" not in line and not any(c in line for c in "\x1b\x85\u2028\u2029\x7f")
    assert "/x\\n2026-01-01" in line and 'path="/x\\n2026-01-01' in line and '"k\\ney"=v' in line


def test_i9_a_text_field_value_cannot_forge_another_field():
    line = TextFormatter().format(record(path="/x status=200", status=404, empty=""))
    assert 'path="/x status=200" status=404 empty=""' in line


def test_i9_a_traceback_in_a_text_line_cannot_forge_a_record():
    try:
        raise ValueError("boom\n2026-01-01 00:00:00,000 INFO    gateway.access: GET /admin 200")
    except ValueError:
        entry = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    RedactingFilter().filter(entry)
    first, *rest = TextFormatter().format(entry).split("\n")
    assert first.endswith("gateway: failed") and rest and all(line.startswith("  | ") for line in rest)


# -- I9 end to end: a real process's log file, and the Server header --------------------------------------------


async def start_logging_process(tmp_path: Path, issuer, upstream_url: str, log_format: str):
    port = free_port()
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "all.cedar").write_text("permit (principal, action, resource);\n")
    config = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": RESOURCE, "admin_port": 0},
        "upstream": {"url": upstream_url},
        "auth": {"issuers": [{"issuer": issuer.url}]},
        "authorization": {"policies": str(tmp_path / "policies")},
        "audit": {"enabled": False},
        "logging": {"format": log_format},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(path), stdout=log, stderr=log)
    for _ in range(200):
        try:
            if (await raw_request(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200"):
                return process, port, log_path
        except OSError:
            pass
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(log_path.read_text())


async def stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


FORGED = "%0a1999-01-01%2000:00:00,000%20INFO%20%20%20%20gateway.access:%20GET%20/admin%20200"
TOKEN_REQUESTS = (
    get(f"/mcp/{JWT}"),  # a token in the path: 404, access log
    get(f"/mcp%3Faccess_token={OPAQUE}"),  # a decoded '?' puts a query in request.path
    get(f"/mcp?access_token={JWT}", f"Authorization: Bearer {JWT}"),  # refused with 400, logged as a refusal
    get("/x" + FORGED),
    get("/x%0d%e2%80%a8%c2%85forged"),
)


async def test_i9_text_log_lines_carry_no_token_and_cannot_be_forged(tmp_path, issuer, upstream):
    process, port, log_path = await start_logging_process(tmp_path, issuer, upstream.url, "text")
    try:
        for request in TOKEN_REQUESTS:
            assert (await raw_request(port, request)).startswith(b"HTTP/1.1 4")
    finally:
        await stop(process)
    text = log_path.read_text()
    assert JWT[:20] not in text and OPAQUE not in text and "eyJzdWIi" not in text
    assert "/mcp/[redacted]" in text and "access_token=[redacted]" in text
    lines = text.splitlines()  # splitlines() also breaks at \r, \x85, \u2028: none of them may be in a line
    assert len(lines) == len(text.split("\n")) - 1
    assert not [line for line in lines if line.startswith("1999-01-01")]
    assert "\\n1999-01-01" in text and "\\r\\u2028\\x85forged" in text


async def test_i9_json_log_lines_carry_no_token_and_stay_one_line_each(tmp_path, issuer, upstream):
    process, port, log_path = await start_logging_process(tmp_path, issuer, upstream.url, "json")
    try:
        for request in TOKEN_REQUESTS:
            await raw_request(port, request)
    finally:
        await stop(process)
    text = log_path.read_text()
    assert JWT[:20] not in text and OPAQUE not in text and "eyJzdWIi" not in text
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    paths = {entry.get("path") for entry in entries if entry.get("logger") == "gateway.access"}
    assert {"/mcp/[redacted]", "/mcp?access_token=[redacted]", "/x" + "\n1999-01-01 00:00:00,000 INFO    gateway.access: GET /admin 200"} <= paths


async def test_i9_the_server_header_names_no_version(start_gateway, upstream, issuer, tmp_path):
    upstream.behaviour = sse_answer(data_event(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}})))
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    responses = [
        await client.post("/mcp", json=CALL, headers={**bearer(issuer.mint()), "Accept": "text/event-stream"}),  # streamed
        await client.get("/healthz"),
        await client.get("/no/such/route"),
        await client.post("/mcp", json=CALL),  # 401
        await client.post("/mcp", data=b"{", headers={**bearer(issuer.mint()), "Content-Type": "application/json"}),  # 400
    ]
    assert [r.status for r in responses] == [200, 200, 404, 401, 400]
    assert {r.headers.getall("Server")[0] for r in responses} == {"mcp-auth-gateway"}
    assert all(len(r.headers.getall("Server")) == 1 for r in responses)
    # aiohttp's own error pages, written before any routing: a malformed request line, a bad method.
    for garbage in (b"GARBAGE\r\n\r\n", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        answer = await raw_request(client.port, garbage)
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("HTTP/1.") and " 400 " in head.split("\r\n", 1)[0], head
        assert re.search(r"(?im)^server: mcp-auth-gateway$", head) and "aiohttp" not in answer.decode("latin-1").lower(), head
