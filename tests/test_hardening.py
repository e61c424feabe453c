"""Regression tests for findings of the security review: each names the requirement it protects."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import secrets

from aiohttp import web
from multidict import CIMultiDict

from tests.factories import bearer
from tests.upstreams import Received, sse_event, start_sse

TOOLS = [{"name": n} for n in ("search", "drop_table")]
POLICY = 'permit (principal, action == Action::"tools/call", resource == Tool::"search");\npermit (principal, action == Action::"tools/list", resource);\n'


def call(name: str, rpc_id=1):
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


async def gateway_with_policy(start_gateway, recorder, tmp_path, **overrides):
    folder = tmp_path / "cedar"
    folder.mkdir()
    (folder / "p.cedar").write_text(POLICY)
    return await start_gateway(recorder.url, authenticated=False, authorization={"policies": str(folder)}, **overrides)


# -- Z5: what the policy judged is what the upstream gets --------------------------------------------------


async def test_z5_a_charset_other_than_utf8_is_refused(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    body = json.dumps(call("search")).encode()
    for charset, status in (("utf-7", 400), ("UTF-16", 400), ("utf-8", 200), ("UTF-8", 200)):
        response = await client.post("/mcp", data=body, headers={**bearer(issuer.mint()), "Content-Type": f"application/json; charset={charset}"})
        assert response.status == status, charset
    assert [r.headers["Content-Type"] for r in upstream.received] == ["application/json", "application/json"]


async def test_z5_a_compressed_request_is_refused_not_decompressed(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    body = json.dumps(call("search")).encode()
    for encoded, encoding in ((gzip.compress(body), "gzip"), (b"not gzip at all", "gzip"), (b"x", "deflate"), (b"x", "br")):
        response = await client.post("/mcp", data=encoded, headers={
            **bearer(issuer.mint()), "Content-Type": "application/json", "Content-Encoding": encoding})
        assert response.status == 415, encoding
    assert upstream.received == []


async def test_z5_a_batch_reusing_a_request_id_is_refused(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 1, "method": "prompts/list"}]
    assert (await client.post("/mcp", json=batch, headers=bearer(issuer.mint()))).status == 400
    assert upstream.received == []


async def test_z5_numbers_too_large_to_represent_are_refused(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"n": 1e400}}}'
    response = await client.post("/mcp", data=body, headers={**bearer(issuer.mint()), "Content-Type": "application/json"})
    assert response.status == 400 and upstream.received == []


# -- Z4: lists are filtered by their shape, wherever they come from --------------------------------------------


async def test_z4_a_list_replayed_on_a_resumed_get_stream_is_filtered(start_gateway, upstream, issuer, tmp_path):
    async def replay(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(sse_event({"jsonrpc": "2.0", "id": 7, "result": {"tools": TOOLS}}, "7"))
        await response.write_eof()
        return response

    upstream.behaviour = replay
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.get("/mcp", headers={**bearer(issuer.mint()), "Accept": "text/event-stream", "Last-Event-ID": "3"})
    text = await response.text()
    assert "drop_table" not in text and '"search"' in text


async def test_z4_a_list_answer_under_another_id_is_still_filtered(start_gateway, upstream, issuer, tmp_path):
    async def mismatched(request: web.Request, received: Received) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": "other", "result": {"tools": TOOLS}})

    upstream.behaviour = mismatched
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint()))).text()
    assert "drop_table" not in text


async def test_z4_json_content_type_is_recognised_in_any_letter_case(start_gateway, upstream, issuer, tmp_path):
    async def shouty(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(body=json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}), headers={"Content-Type": "Application/JSON"})

    upstream.behaviour = shouty
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    text = await (await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(issuer.mint()))).text()
    assert "drop_table" not in text and "search" in text


async def test_z4_a_list_answer_that_is_neither_json_nor_sse_fails_closed(start_gateway, upstream, issuer, tmp_path):
    async def plain(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(text=json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}))

    upstream.behaviour = plain
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(issuer.mint()))
    assert response.status == 502 and "drop_table" not in await response.text()


async def test_z4_a_byte_order_mark_does_not_hide_an_sse_list(start_gateway, upstream, issuer, tmp_path):
    async def bom(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        await response.write(b"\xef\xbb\xbf" + sse_event({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}))
        await response.write_eof()
        return response

    upstream.behaviour = bom
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=bearer(issuer.mint()))
    assert "drop_table" not in await response.text()


# -- U1 / U5: headers ------------------------------------------------------------------------------------------


async def test_u1_underscore_spellings_of_gateway_headers_are_removed(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path, upstream={"identity_headers": {"X-MCP-Subject": "sub"}})
    await client.post("/mcp", json=call("search"), headers={**bearer(issuer.mint()), "X_MCP_Subject": "admin", "Proxy_Authorization": "x"})
    received = upstream.received[0].headers
    assert "X_MCP_Subject" not in received and "Proxy_Authorization" not in received
    assert received["X-MCP-Subject"] == "alice"


async def test_u5_two_session_ids_are_refused(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    headers = CIMultiDict([("Authorization", f"Bearer {issuer.mint()}"), ("Mcp-Session-Id", "a"), ("Mcp-Session-Id", "b")])
    assert (await client.post("/mcp", json=call("search"), headers=headers)).status == 400
    assert upstream.received == []


async def test_e1_upstream_cors_headers_never_reach_the_client(start_gateway, upstream, issuer, tmp_path):
    async def permissive(request: web.Request, received: Received) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}}, headers={
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"})

    upstream.behaviour = permissive
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    response = await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint()))
    assert "Access-Control-Allow-Origin" not in response.headers and "Access-Control-Allow-Credentials" not in response.headers


# -- T4, T8, T9, T11 -------------------------------------------------------------------------------------------


async def test_t4_a_malformed_or_userinfo_audience_is_not_a_match_and_not_an_error(start_gateway, upstream, issuer, tmp_path):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    from tests.factories import RESOURCE

    response = await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint(aud=["https://x:99999/a", RESOURCE])))
    assert response.status == 200  # the good entry still counts; the bad one is ignored, not a 500
    response = await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint(aud="https://evil@mcp.example.com/mcp")))
    assert response.status == 401


async def test_t8_without_keys_forged_tokens_do_not_cause_a_fetch_each(start_gateway, upstream, issuer, tmp_path):
    issuer.jwks_status = 500
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    await asyncio.sleep(0.2)  # the warm-up has tried and failed
    before = issuer.jwks_fetches
    responses = [await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint())) for _ in range(20)]
    assert {r.status for r in responses} == {503}
    assert issuer.jwks_fetches - before <= 1


async def test_t9_an_introspection_answer_split_across_writes_is_read_whole(start_gateway, upstream, issuer, tmp_path, aiohttp_server):
    async def slow_introspection(request: web.Request) -> web.StreamResponse:
        answer = json.dumps({"active": True, **issuer.claims(), "pad": "x" * 4000}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(answer[:100])
        await asyncio.sleep(0.05)
        await response.write(answer[100:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/introspect", slow_introspection)
    server = await aiohttp_server(app)
    client = await gateway_with_policy(start_gateway, upstream, tmp_path, auth={"introspection": {
        "client_id": "gateway", "client_secret": "gateway-secret", "endpoint": str(server.make_url("/introspect"))}})
    response = await client.post("/mcp", json=call("search"), headers=bearer(secrets.token_urlsafe(32)))
    assert response.status == 200


async def test_t11_a_credential_without_a_scheme_is_not_logged(start_gateway, upstream, issuer, tmp_path, caplog):
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    await client.post("/mcp", json=call("search"), headers={"Authorization": "sk_live_51HxSECRETSECRET"})
    assert "sk_live" not in caplog.text


def test_t11_log_output_redacts_bearer_values_and_jwts():
    from gateway.observe.logs import RedactingFilter

    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "bad header %s", ("Authorization: Bearer abc.def-ghi",), None)
    RedactingFilter().filter(record)
    assert "abc.def-ghi" not in record.getMessage() and "Bearer [redacted]" in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token eyJhbGciOi.eyJzdWIi.c2ln here", None, None)
    RedactingFilter().filter(record)
    assert "eyJ" not in record.getMessage()


# -- red-team review of the integrity work ----------------------------------------------------------------------


async def test_i8_a_list_under_a_json_flavoured_content_type_is_filtered(start_gateway, upstream, issuer, tmp_path):
    """The Python SDK takes any content type starting with application/json for JSON."""
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    for content_type in ("application/json-rpc", "application/vnd.mcp+json", "text/event-streamx"):
        async def answer(request: web.Request, received: Received, content_type=content_type) -> web.StreamResponse:
            message = {"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}
            body = f"data: {json.dumps(message)}\n\n" if content_type.startswith("text/") else json.dumps(message)
            return web.Response(body=body.encode(), headers={"Content-Type": content_type})

        upstream.behaviour = answer
        text = await (await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint()))).text()
        assert "drop_table" not in text and "search" in text, content_type


async def test_u4_an_upstream_redirect_or_two_content_types_is_a_502(start_gateway, upstream, issuer, tmp_path):
    async def redirect(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "https://evil.example/mcp"})

    async def two_types(request: web.Request, received: Received) -> web.StreamResponse:
        response = web.Response(body=json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}}).encode())
        response.headers.add("Content-Type", "application/json")
        response.headers.add("Content-Type", "text/plain")
        return response

    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    for behaviour in (redirect, two_types):
        upstream.behaviour = behaviour
        response = await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint()))
        assert response.status == 502 and "Location" not in response.headers and "drop_table" not in await response.text()


async def test_i9_an_upstream_challenges_free_text_is_not_logged(start_gateway, upstream, issuer, tmp_path, caplog):
    async def challenge(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token", error_description="opaque-secret-xyz"'})

    upstream.behaviour = challenge
    client = await gateway_with_policy(start_gateway, upstream, tmp_path)
    assert (await client.post("/mcp", json=call("search"), headers=bearer(issuer.mint()))).status == 502
    assert "opaque-secret-xyz" not in caplog.text and "error=invalid_token" in caplog.text
