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


async def test_r5_a_malformed_http_request_is_one_info_line_not_a_traceback(serve_gateway, upstream):
    import asyncio

    gateway = await serve_gateway(upstream.url)
    port = int(gateway.url.rsplit(":", 1)[1])
    for raw in (b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Api-Key: s3cret\x00\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                b"post /mcp HTTP/1.1\r\nHost: x\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        assert b" 400 " in (await asyncio.wait_for(reader.read(4096), 5)).split(b"\r\n")[0]
        writer.close()
    log = gateway.log_text()
    assert "Traceback" not in log and "s3cret" not in log
    assert log.count("refused a malformed HTTP request") == 3  # a bad method on a first request aiohttp logs at debug


async def test_r5_claims_nested_too_deeply_are_a_401_not_a_500(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    token = issuer.mint(deep=json.loads("[" * 600 + "]" * 600))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/mcp", json=call(1), headers=bearer(token)) as response:
            assert response.status == 401
    assert "Traceback" not in gateway.log_text() and upstream.received == []


# -- R4: cold decisions in pieces that yield the event loop -------------------------------------------------

# Many policies that name tools and read a literal's data: every named tool is then decided in a Cedar call of
# its own (gateway.authz.listing_decisions), each call evaluating every policy. A cold list or batch costs
# the gateway a second or more of CPU here: it must not hold the event loop for all of it.
HEAVY_TOOLS = 2000


def heavy_policies(folder) -> None:
    (folder / "allow-all.cedar").write_text("permit (principal, action, resource);\n" + "\n".join(
        f'forbid (principal, action == Action::"tools/call", resource == Tool::"tool_{i}") when {{ Tool::"tool_{i}" has sensitive }};'
        for i in range(0, HEAVY_TOOLS, 2)))


async def probe_while(gateway, work) -> tuple[float, float, object]:
    """Runs ``work`` against the gateway while /healthz (on the admin listener: the same event loop) is asked every 10 ms; returns how long the work took,
    the longest /healthz answer meanwhile, and the work's result."""
    import asyncio

    waits: list[float] = []
    done = asyncio.Event()

    async def probe(http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            started = time.perf_counter()
            async with http.get(f"{gateway.admin_url}/healthz") as response:
                assert response.status == 200
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        prober = asyncio.create_task(probe(http))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        result = await work()
        took = time.perf_counter() - started
        done.set()
        await prober
    return took, max(waits), result


async def test_r4_a_cold_list_of_thousands_of_tools_does_not_hold_the_event_loop(serve_gateway, upstream, issuer, policies_dir):
    heavy_policies(policies_dir)

    async def tools_list(request, received):
        tools = [{"name": f"tool_{i}", "inputSchema": {"type": "object"}} for i in range(HEAVY_TOOLS)]
        return aiohttp.web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})

    upstream.behaviour = tools_list
    gateway = await serve_gateway(upstream.url)

    async def cold_list():
        return await post(gateway, issuer, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode())

    took, longest, (status, body) = await probe_while(gateway, cold_list)
    assert status == 200 and len(body["result"]["tools"]) == HEAVY_TOOLS
    assert took > 0.3, f"the cold list took {took:.2f}s: too cheap to show anything"
    assert longest < took / 3, f"/healthz waited {longest:.2f}s while the cold list took {took:.2f}s"


async def test_r4_a_large_batch_of_cold_decisions_does_not_hold_the_event_loop(serve_gateway, upstream, issuer, policies_dir):
    heavy_policies(policies_dir)
    gateway = await serve_gateway(upstream.url, server={"max_batch": 1000})
    batch = json.dumps([call(2 * i + 1) for i in range(800)]).encode()  # odd tools: allowed, each decided alone

    took, longest, (status, _) = await probe_while(gateway, lambda: post(gateway, issuer, batch))
    assert status == 200
    assert took > 0.3, f"the batch took {took:.2f}s: too cheap to show anything"
    assert longest < took / 3, f"/healthz waited {longest:.2f}s while the batch took {took:.2f}s"
