"""Section I against a real ``mcp-auth-gateway serve`` process: each finding of the integrity review as a
regression test, with a recording upstream that proves nothing refused was forwarded.

The policy is the demo's shape: ``echo`` and ``query`` are allowed, ``delete_records`` is forbidden, and
so is any call whose ``table`` argument names a production table. Every attack below would have reached
the upstream as a call the policy never allowed.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.factories import bearer
from tests.upstreams import RecordingUpstream

POLICY = """
permit (principal, action == Action::"tools/list", resource);
permit (principal, action == Action::"tools/call", resource == Tool::"echo");
permit (principal, action == Action::"tools/call", resource == Tool::"query");
forbid (principal, action == Action::"tools/call", resource == Tool::"delete_records");
forbid (principal, action == Action::"tools/call", resource)
  when { context.arguments has table && context.arguments.table like "prod_*" };
"""
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
ORIGIN = "https://app.example.com"


@pytest.fixture
async def gateway(serve_gateway, upstream: RecordingUpstream, policies_dir):
    (policies_dir / "allow-all.cedar").unlink()
    (policies_dir / "demo.cedar").write_text(POLICY)
    return await serve_gateway(upstream.url, server={"allowed_origins": [ORIGIN]})


async def post(gateway, issuer, body: bytes | dict, headers=None, *, token: str | None = None) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = CIMultiDict(JSON)
    sent.update(bearer(token or issuer.mint()))
    for name, value in (headers.items() if isinstance(headers, CIMultiDict) else (headers or {}).items()):
        sent.add(name, value)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", data=data, headers=sent) as response:
            return response.status, await response.text()


def call(name: str, **arguments) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


# -- finding 1 (I2): case-folded duplicate keys ----------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call","params":{"name":"delete_records"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_records"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query","arguments":{"table":"orders","Table":"prod_orders"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{},"param\xc5\xbf":{"name":"delete_records"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","\\u212Aey":1,"key":2}}',
], ids=["METHOD", "Name", "Table", "params-long-s", "kelvin"])
async def test_i2_case_folded_duplicate_keys_are_refused_and_never_forwarded(gateway, upstream, issuer, body):
    status, text = await post(gateway, issuer, body)
    assert status == 400, text
    assert json.loads(text)["error"]["code"] == -32700
    assert upstream.received == []
    [event] = gateway.audit()
    assert event["outcome"] == "deny" and event["reason"] == "duplicate_key"


async def test_i2_a_decided_member_in_another_letter_case_is_refused(gateway, upstream, issuer):
    # Alone, "Name" is no duplicate; a Go server would still read it as the tool's name.
    for body in (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"delete_records"}}',
                 b'{"jsonrpc":"2.0","id":1,"Method":"tools/call","result":{},"params":{"name":"delete_records"}}'):
        status, _ = await post(gateway, issuer, body)
        assert status == 400
    assert upstream.received == []


# -- finding 2 (I1): the upstream parses the gateway's bytes, not the client's -------------------------------


async def test_i1_the_upstream_receives_the_gateways_serialization(gateway, upstream, issuer):
    body = (b'{ "jsonrpc" : "2.0" , "id" : 7, "method" : "tools/call", "extra": {"method": "x"},\n'
            b' "params" : { "name" : "ech\\u006f", "arguments" : { "n" : 1E2, "text": "caf\\u00e9 \\/" } } }')
    status, text = await post(gateway, issuer, body)
    assert status == 200, text
    [received] = upstream.received
    assert received.body == ('{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo",'
                             '"arguments":{"n":100.0,"text":"café /"}}}').encode()
    assert received.headers["Content-Type"] == "application/json"
    [event] = gateway.audit()
    assert (event["method"], event["target"], event["outcome"]) == ("tools/call", "echo", "allow")


async def test_i1_a_byte_order_mark_is_refused_not_passed_on(gateway, upstream, issuer):
    status, _ = await post(gateway, issuer, b'\xef\xbb\xbf' + json.dumps(call("echo")).encode())
    assert status == 400 and upstream.received == []


# -- finding 4 (I4): underscore spellings and repeated headers ------------------------------------------------


async def test_i4_an_underscore_session_header_cannot_borrow_another_principals_session(gateway, upstream, issuer):
    alice = issuer.mint(sub="alice")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                             headers={**JSON, **bearer(alice)}) as response:
            assert response.status == 200
            session = response.headers["Mcp-Session-Id"]  # the upstream's session-1, wrapped for alice
    forwarded = len(upstream.received)
    bob = issuer.mint(sub="bob")
    for name in ("Mcp_Session_Id", "mcp_session_id", "Mcp-Session_Id"):
        for value in (session, "session-1"):
            status, text = await post(gateway, issuer, call("echo"), {name: value}, token=bob)
            assert status == 400, (name, text)
    # The dashed spelling is checked against its owner as before.
    status, _ = await post(gateway, issuer, call("echo"), {"Mcp-Session-Id": session}, token=bob)
    assert status == 404
    assert len(upstream.received) == forwarded


@pytest.mark.parametrize("headers", [
    CIMultiDict([("Mcp_Method", "tools/call")]),
    CIMultiDict([("Mcp_Name", "echo")]),
    CIMultiDict([("Mcp-Method", "tools/call"), ("Mcp-Method", "ping")]),
    CIMultiDict([("Mcp-Name", "echo"), ("mcp-name", "delete_records")]),
    CIMultiDict([("MCP-Protocol-Version", "2025-11-25"), ("MCP-Protocol-Version", "2026-07-28")]),
], ids=["Mcp_Method", "Mcp_Name", "two-Mcp-Method", "two-Mcp-Name", "two-versions"])
async def test_i4_underscore_or_repeated_mcp_headers_are_400(gateway, upstream, issuer, headers):
    status, text = await post(gateway, issuer, call("echo"), headers)
    assert status == 400, text
    assert upstream.received == []


async def test_i4_a_repeated_origin_is_403(gateway, upstream, issuer):
    headers = CIMultiDict([("Origin", ORIGIN), ("Origin", "https://evil.example")])
    status, _ = await post(gateway, issuer, call("echo"), headers)
    assert status == 403 and upstream.received == []


# -- findings 5 and 6 (I5): identity and routing claims, Origin and Referer -----------------------------------


async def test_i5_identity_claiming_headers_never_reach_the_upstream(gateway, upstream, issuer):
    claims = {
        "X-Forwarded-User": "admin", "X-Forwarded-Email": "admin@example.com", "X-Forwarded-Groups": "admins",
        "X-Forwarded-Access-Token": "stolen", "X-Forwarded-Prefix": "/admin", "Remote-User": "admin",
        "X-Remote-User": "admin", "X-Auth-Request-User": "admin", "X-Auth-Request-Email": "admin@example.com",
        "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin", "True-Client-IP": "10.0.0.1", "X-Client-IP": "10.0.0.1",
        "X-Real-IP": "10.0.0.1", "Forwarded": "for=10.0.0.1", "X-Forwarded-For": "10.0.0.1", "X_Forwarded_User": "admin",
    }
    status, _ = await post(gateway, issuer, call("echo"), claims)
    assert status == 200
    [received] = upstream.received
    for name, value in claims.items():
        assert received.headers.get(name.replace("_", "-")) != value, name
    assert received.headers["X-Forwarded-For"] == "127.0.0.1"  # the gateway's say


async def test_i5_origin_and_referer_are_decided_not_forwarded(gateway, upstream, issuer):
    status, _ = await post(gateway, issuer, call("echo"), {"Origin": ORIGIN, "Referer": f"{ORIGIN}/page"})
    assert status == 200
    [received] = upstream.received
    assert "Origin" not in received.headers and "Referer" not in received.headers


async def test_i5_upstream_strip_headers_are_not_forwarded(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, upstream={"strip_headers": ["X-Tenant"]})
    status, _ = await post(gateway, issuer, call("echo"), {"x-tenant": "other", "X-Kept": "yes"})
    assert status == 200
    [received] = upstream.received
    assert "X-Tenant" not in received.headers and received.headers["X-Kept"] == "yes"


# -- finding 9 (I3): method names ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["notifications/../tools/call", "notifications/./tools/call", "tools/call ", "notifications//x"])
async def test_i3_a_method_outside_the_grammar_is_400_and_never_exempt(gateway, upstream, issuer, method):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "delete_records"}}
    status, _ = await post(gateway, issuer, body)
    assert status == 400
    assert upstream.received == []
    assert gateway.audit()[-1]["reason"] == "bad_method"


# -- finding 3 (I8): lists in SSE batches ---------------------------------------------------------------------

TOOLS = [{"name": "echo"}, {"name": "delete_records"}, {"name": "query"}]


async def sse_batch_answer(request, received):
    from tests.upstreams import start_sse

    response = await start_sse(request)
    batch = [{"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}, {"jsonrpc": "2.0", "id": 2, "result": {"Tools": TOOLS}}]
    await response.write(f"id: 9\nevent: message\ndata: {json.dumps(batch)}\n\n".encode())
    await response.write_eof()
    return response


@pytest.mark.parametrize("body", [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}],
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},  # no list asked for
], ids=["list", "batch", "call"])
async def test_i8_a_batch_array_in_an_sse_event_is_filtered(gateway, upstream, issuer, body):
    upstream.behaviour = sse_batch_answer
    status, text = await post(gateway, issuer, body)
    assert status == 200
    assert "delete_records" not in text
    data = json.loads(next(line[6:] for line in text.splitlines() if line.startswith("data: ")))
    assert [[tool["name"] for tool in message["result"][key]] for message, key in zip(data, ("tools", "Tools"))] == [["echo", "query"]] * 2


# -- finding 7 (I6): JWT shape -------------------------------------------------------------------------------


async def test_i6_odd_jwts_are_refused_and_never_introspected(serve_gateway, upstream, issuer, policies_dir):
    gateway = await serve_gateway(upstream.url, auth={"introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}})
    token = issuer.mint()
    head, payload, signature = token.split(".")
    for odd in (token + "=", f"{head}==.{payload}.{signature}", f"{head}.{payload}~.{signature}", f"{head}.{payload}.{signature}~"):
        issuer.opaque_tokens[odd] = {"active": True, **issuer.claims()}  # a lenient AS would say active
        status, _ = await post(gateway, issuer, call("echo"), token=odd)
        assert status == 401, odd
    assert issuer.introspections == 0 and upstream.received == []
    # "=" inside the token already breaks RFC 6750's b64token grammar (token_malformed); the rest are JWTs that break the rules
    assert {event["reason"] for event in gateway.audit()} == {"jwt_malformed", "token_malformed"}


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "1e400", str(2**53 + 1)])
async def test_i6_a_signed_exp_that_is_not_a_finite_number_is_refused(gateway, upstream, issuer, exp):
    status, _ = await post(gateway, issuer, call("echo"), token=issuer.mint_raw(issuer.raw_claims(exp=exp)))
    assert status == 401 and upstream.received == []


@pytest.mark.parametrize("aud", ["https://mcp.exa\tmple.com/mcp", "https://mcp.example.com/mcp\n", " https://mcp.example.com/mcp",
                                 "https://mcp.example.com:0443/mcp", "https://mcp.example.com:/mcp"])
async def test_i6_an_audience_with_whitespace_or_an_odd_port_never_matches(gateway, upstream, issuer, aud):
    status, _ = await post(gateway, issuer, call("echo"), token=issuer.mint(aud=aud))
    assert status == 401 and upstream.received == []


# -- finding 8 (I7): issuers share principals ------------------------------------------------------------------


async def test_i7_the_same_sub_from_a_second_issuer_is_another_principal(serve_gateway, upstream, issuer, policies_dir, aiohttp_server):
    from tests.factories import TestIssuer

    partner = TestIssuer()
    partner.url = str((await aiohttp_server(partner.app())).make_url("")).rstrip("/")
    (policies_dir / "allow-all.cedar").write_text('permit (principal in Group::"admins", action, resource);\n')
    (policies_dir.parent / "entities.json").write_text(json.dumps([
        {"uid": {"type": "User", "id": "corp/alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "admins"}]},
        {"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": []}]))
    gateway = await serve_gateway(upstream.url, auth={"issuers": [{"issuer": issuer.url, "name": "corp"}, {"issuer": partner.url, "name": "partner"}]},
                                  authorization={"entities": str(policies_dir.parent / "entities.json")})
    assert (await post(gateway, issuer, call("echo"), token=partner.mint(sub="alice")))[0] == 403
    assert (await post(gateway, issuer, call("echo"), token=issuer.mint(sub="alice")))[0] == 200
    assert (await post(gateway, issuer, call("echo"), token=partner.mint(sub="alice")))[0] == 403  # no shared cache
    assert len(upstream.received) == 1
    assert [(e["issuer"], e["outcome"]) for e in gateway.audit()] == [(partner.url, "deny"), (issuer.url, "allow"), (partner.url, "deny")]


# -- finding 10 (I9): logs and the Server header ------------------------------------------------------------


async def test_i9_a_token_in_the_path_or_query_is_redacted_in_every_log_field(gateway, upstream, issuer):
    token = issuer.mint()
    async with aiohttp.ClientSession() as http:
        for path in (f"/mcp/{token}", f"/{token}", f"/mcp?access_token={token}", "/mcp/%0aINFO forged"):
            async with http.post(f"{gateway.url}{path}", json=call("echo"), headers=bearer(token)) as response:
                assert response.status in (400, 404)
                assert response.headers["Server"] == "mcp-auth-gateway"
    text = gateway.log_text()
    assert token.split(".")[1] not in text and token.split(".")[2] not in text
    assert all(line.startswith("{") for line in text.splitlines())  # no forged line in the JSON log


async def test_i9_the_server_header_names_no_version(gateway, upstream, issuer):
    async with aiohttp.ClientSession() as http:
        for method, path, headers in (("POST", "/mcp", bearer(issuer.mint())), ("POST", "/mcp", {}), ("GET", "/nothing", {}), ("GET", "/healthz", {})):
            async with http.request(method, f"{gateway.url}{path}", json=call("echo"), headers=headers) as response:
                assert response.headers["Server"] == "mcp-auth-gateway", (method, path)
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]))
    writer.write(b"GARBAGE \x01 HTTP/9\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert b"400" in head.split(b"\r\n")[0] and b"\r\nServer: mcp-auth-gateway\r\n" in head


# -- red-team finding (I2): a lone argument key in another letter case --------------------------------------


async def test_i2_an_argument_key_spelled_otherwise_than_the_tools_schema_is_refused(gateway, upstream, issuer):
    async def catalogue(request, received):
        from aiohttp import web

        message = json.loads(received.body)
        if message.get("method") == "tools/list":
            tools = [{"name": "query", "inputSchema": {"type": "object", "properties": {"table": {"type": "string"}, "A": {}, "a": {}}}}]
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}})
        return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": {"content": []}})

    upstream.behaviour = catalogue
    # Once the tool was listed, its inputSchema says how its arguments are spelled.
    assert (await post(gateway, issuer, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))[0] == 200
    for spelled in ("Table", "TABLE", "ta_ble"):
        status, text = await post(gateway, issuer, call("query", **{spelled: "prod_orders"}))
        assert status == 400, (spelled, text)
    assert (await post(gateway, issuer, call("query", table="orders", A=1)))[0] == 200  # exact spellings pass
    assert [json.loads(r.body)["method"] for r in upstream.received] == ["tools/list", "tools/call"]
