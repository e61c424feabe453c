"""R4, R5 against a real ``serve`` process: what one request may make the gateway compute, and that no
input gives a 500 or a traceback (findings 5 and 6 of the bounds review)."""

from __future__ import annotations

import json
import time

import aiohttp

from tests.factories import bearer

JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def call(i: int) -> dict:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": f"tool_{i}", "arguments": {"n": i}}}


async def post(gateway, issuer, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", data=body, headers={**JSON, **bearer(issuer.mint())}) as response:
            return response.status, await response.json(content_type=None)


async def test_r4_a_batch_over_max_batch_is_400_before_any_decision(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url, server={"max_batch": 10})
    status, body = await post(gateway, issuer, json.dumps([call(i) for i in range(11)]).encode())
    assert status == 400 and body["error"]["code"] == -32600
    [event] = gateway.audit()  # one event for the refusal, not one per message
    assert event["reason"] == "batch_too_large"
    status, _ = await post(gateway, issuer, json.dumps([call(i) for i in range(10)]).encode())
    assert status == 200
    assert len(upstream.received) == 1


async def test_r4_the_default_batch_limit_is_50(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    assert (await post(gateway, issuer, json.dumps([call(i) for i in range(51)]).encode()))[0] == 400
    started = time.perf_counter()
    assert (await post(gateway, issuer, json.dumps([call(i) for i in range(50)]).encode()))[0] == 200
    assert time.perf_counter() - started < 2  # 50 fresh decisions: milliseconds, not the seconds of 40,000
    assert len([e for e in gateway.audit() if e["outcome"] == "allow"]) == 50


async def test_r5_deep_nesting_is_a_400_with_an_audit_event_and_no_traceback(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    for depth in (65, 600, 100_000):
        nested = "[" * depth + "]" * depth
        body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":%s}}}' % nested).encode()
        status, answer = await post(gateway, issuer, body)
        assert status == 400, depth
        assert answer["error"]["code"] == -32700
    assert [e["reason"] for e in gateway.audit()] == ["too_deep"] * 3
    assert upstream.received == []
    log = gateway.log_text()
    assert "Traceback" not in log and "RecursionError" not in log and '"status": 500' not in log
