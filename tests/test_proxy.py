"""The streaming reverse proxy (U1, U4) over real sockets, with a recording upstream."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import free_port
from tests.upstreams import dies_mid_stream, gated_sse, slow_headers, status

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def test_u1_authorization_and_cookie_never_reach_upstream(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url)
    token = issuer.mint()
    response = await client.post(
        "/mcp", json=INIT,
        headers={"Authorization": f"Bearer {token}", "Cookie": "session=secret", "Proxy-Authorization": "Basic eA=="},
    )
    assert response.status == 200
    [received] = upstream.received
    for name in ("Authorization", "Cookie", "Proxy-Authorization"):
        assert name not in received.headers
    everything = "".join(f"{k}: {v}\n" for k, v in received.headers.items()) + received.body.decode()
    assert "secret" not in everything and token not in everything


async def test_u1_hop_by_hop_and_connection_named_headers_are_dropped(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    await client.post(
        "/mcp", data=json.dumps(INIT),
        headers={**JSON_HEADERS, "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "TE": "trailers",
                 "Upgrade": "websocket", "Keep-Alive": "timeout=5", "X-Custom": "kept"},
    )
    received = upstream.received[0].headers
    for name in ("X-Secret-Hop", "TE", "Upgrade", "Keep-Alive"):
        assert name not in received, name
    assert received["X-Custom"] == "kept"


async def test_u1_forwarded_headers_are_the_gateways_not_the_clients(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    await client.post(
        "/mcp", json=INIT,
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "Forwarded": "for=6.6.6.6"},
    )
    received = upstream.received[0].headers
    assert received["X-Forwarded-For"] == "127.0.0.1"
    assert received["X-Forwarded-Host"] == "mcp.example.com"
    assert received["X-Forwarded-Proto"] == "https"
    assert "Forwarded" not in received
    assert received["Host"] == upstream.url.split("/")[2]


async def test_u1_identity_headers_sent_by_the_client_are_replaced(upstream, start_gateway):
    client = await start_gateway(upstream.url, upstream={"identity_headers": {"X-MCP-Subject": "sub"}})
    await client.post("/mcp", json=INIT, headers={"X-MCP-Subject": "admin"})
    assert upstream.received[0].headers.getall("X-MCP-Subject") == ["alice"]  # the token's sub, not the client's say


async def test_u4_session_and_protocol_headers_pass_both_ways(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    response = await client.post("/mcp", json=INIT)
    session = response.headers["Mcp-Session-Id"]  # the upstream's session-1, wrapped for this caller (P4)
    assert session.startswith("g1.") and "session-1" not in session
    assert response.headers["MCP-Protocol-Version"] == "2025-11-25"
    assert (await response.json())["result"] == {"method": "initialize"}
    answer = await client.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25", "Last-Event-ID": "7"},
    )
    received = upstream.received[1].headers
    assert (received["Mcp-Session-Id"], received["MCP-Protocol-Version"], received["Last-Event-ID"]) == ("session-1", "2025-11-25", "7")
    assert answer.headers["Mcp-Session-Id"] == session  # the same session, the same id for the client


async def test_u4_get_and_delete_are_forwarded(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    session = (await client.post("/mcp", json=INIT)).headers["Mcp-Session-Id"]
    await client.get("/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session})
    await client.delete("/mcp", headers={"Mcp-Session-Id": session})
    assert [(r.method, r.path) for r in upstream.received] == [("POST", "/mcp"), ("GET", "/mcp"), ("DELETE", "/mcp")]
    assert {r.headers.get("Mcp-Session-Id") for r in upstream.received[1:]} == {"session-1"}
    # Ended by the DELETE: refused at once, without asking the upstream.
    assert (await client.get("/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session})).status == 404
    assert len(upstream.received) == 3


async def test_u4_sse_event_arrives_while_upstream_still_producing(upstream, start_gateway):
    gate = asyncio.Event()
    upstream.behaviour = gated_sse(gate)
    client = await start_gateway(upstream.url)
    response = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}}, headers=JSON_HEADERS)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert b"notifications/progress" in first  # the upstream is still waiting on the gate
    assert not gate.is_set()
    gate.set()
    rest = await asyncio.wait_for(response.content.read(), 5)
    assert b'"done": true' in rest


async def test_u4_upstream_dying_mid_stream_ends_client_stream_cleanly(upstream, start_gateway):
    upstream.behaviour = dies_mid_stream
    client = await start_gateway(upstream.url)
    response = await client.post("/mcp", json=INIT, headers=JSON_HEADERS)
    body = await asyncio.wait_for(response.content.read(), 5)  # no exception: a clean end of stream
    assert b"notifications/progress" in body


async def test_u4_unreachable_upstream_gives_502_with_jsonrpc_error(start_gateway):
    client = await start_gateway(f"http://127.0.0.1:{free_port()}/mcp")
    response = await client.post("/mcp", json=INIT)
    assert response.status == 502
    body = await response.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32000


async def test_u4_response_timeout_gives_504(upstream, start_gateway):
    upstream.behaviour = slow_headers(2.0)
    client = await start_gateway(upstream.url, upstream={"response_timeout": "200ms"})
    response = await client.post("/mcp", json=INIT)
    assert response.status == 504
    assert (await response.json())["error"]["message"] == "Upstream MCP server timed out"


@pytest.mark.parametrize("code", [401, 403])
async def test_u4_upstream_challenge_is_never_passed_to_client(upstream, start_gateway, code):
    upstream.behaviour = status(code, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    client = await start_gateway(upstream.url)
    response = await client.post("/mcp", json=INIT)
    assert response.status == 502
    assert "WWW-Authenticate" not in response.headers


async def test_z5_body_over_limit_gets_413_without_contacting_upstream(upstream, start_gateway):
    client = await start_gateway(upstream.url, server={"max_body_bytes": 1024})
    response = await client.post("/mcp", data=b"x" * 2048, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert upstream.received == []


async def test_z5_chunked_body_over_limit_gets_413_without_contacting_upstream(upstream, start_gateway):
    async def chunks():
        for _ in range(4):
            yield b"x" * 512

    client = await start_gateway(upstream.url, server={"max_body_bytes": 1024})
    response = await client.post("/mcp", data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert upstream.received == []


async def test_other_paths_get_404_and_are_not_forwarded(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    for path in ("/", "/mcp/extra", "/admin", "/.well-known/other"):
        response = await client.post(path, json=INIT)
        assert response.status == 404, path
    assert upstream.received == []


async def test_unsupported_method_gets_405(upstream, start_gateway):
    client = await start_gateway(upstream.url)
    response = await client.put("/mcp", json=INIT)
    assert response.status == 405
    assert response.headers["Allow"] == "POST, GET, DELETE"
    assert upstream.received == []


async def wait_ready(client, seconds: float = 5.0):
    for _ in range(int(seconds / 0.05)):
        response = await client.get("/readyz")
        if response.status == 200:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"not ready: {await response.text()}")


async def test_e2_health_and_readiness_need_no_token(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False)
    assert (await client.get("/healthz")).status == 200
    ready = await wait_ready(client)
    assert (await ready.json())["status"] == "ready"


async def test_e2_not_ready_until_issuer_keys_are_loaded(upstream, start_gateway, issuer):
    issuer.jwks_status = 500
    client = await start_gateway(upstream.url, authenticated=False)
    await asyncio.sleep(0.2)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["checks"]["issuer_keys"] is False
