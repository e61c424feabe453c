"""R2 and R4 (issue 11, findings 2, 3 and 7): memory bounded in bytes, linear SSE framing.

Memory is measured where it matters: VmRSS of a real ``mcp-auth-gateway serve`` process (``/proc``) while
it relays answers far larger than any bound, the bodies generated chunk by chunk by the upstream and
discarded by the client as they arrive. A gateway that buffers an answer adds at least its size; the
margins below (32 MiB) are a fraction of the sizes relayed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.memo import MEMO_BUDGET_BYTES, MEMO_ENTRY_MAX_BYTES
from gateway.mcp.sse import EventSplitter, parse_event
from tests.factories import bearer
from tests.upstreams import RecordingUpstream, Received, start_sse

MiB = 1024 * 1024
RSS_MARGIN = 32 * MiB  # R2: relaying a 200 MiB result raises the gateway's RSS by at most this
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
POLICY = """
permit (principal, action == Action::"tools/list", resource);
permit (principal, action == Action::"tools/call", resource == Tool::"search");
"""
TOOLS = [{"name": "search", "inputSchema": {"type": "object"}}, {"name": "drop_table", "inputSchema": {"type": "object"}}]


@pytest.fixture
def only_search(policies_dir: Path) -> Path:
    (policies_dir / "allow-all.cedar").unlink()
    (policies_dir / "search.cedar").write_text(POLICY)
    return policies_dir


def rpc(method: str, **params) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def call_search() -> bytes:
    return rpc("tools/call", name="search", arguments={})


def headers_for(issuer) -> CIMultiDict[str]:
    sent = CIMultiDict(JSON)
    sent.update(bearer(issuer.mint()))
    return sent


# -- measuring a real process ------------------------------------------------------------------------------------


def vm_bytes(pid: int, field: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status (kB there), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RssWatch:
    """Samples VmRSS while a transfer runs; ``growth`` is the peak over the RSS before it started.

    The kernel's high-water mark (VmHWM) catches a peak between two samples: if it rose during the
    transfer, the peak was during the transfer."""

    def __init__(self, pid: int):
        self.pid = pid
        self.before = vm_bytes(pid, "VmRSS")
        self.hwm_before = vm_bytes(pid, "VmHWM")
        self.peak = self.before
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, vm_bytes(self.pid, "VmRSS"))
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, vm_bytes(self.pid, "VmRSS"))
        hwm = vm_bytes(self.pid, "VmHWM")
        if hwm > self.hwm_before:
            self.peak = max(self.peak, hwm)

    @property
    def growth(self) -> int:
        growth = self.peak - self.before
        print(f"RSS before {self.before / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB, growth {growth / MiB:.1f} MiB")
        return growth


async def warm_up(gateway, issuer, upstream: RecordingUpstream, behaviour) -> None:
    """A few small answers of the kind measured next, so lazy imports and first allocations are behind us."""
    saved = upstream.behaviour
    upstream.behaviour = behaviour
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(f"{gateway.url}/mcp", data=call_search(), headers=headers_for(issuer)) as response:
                await response.read()
    upstream.behaviour = saved


async def drain(response: aiohttp.ClientResponse, *, keep_tail: int = 256) -> tuple[int, bytes]:
    """Reads a body as it arrives and throws it away: its size and its last bytes."""
    size, tail = 0, b""
    async for chunk in response.content.iter_any():
        size += len(chunk)
        tail = (tail + chunk)[-keep_tail:]
    return size, tail


# -- upstream answers, generated chunk by chunk -------------------------------------------------------------------

TEXT_HEAD = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"'
TEXT_END = b'"}]'


def streamed_text_result(text_bytes: int, *, after_text: bytes = b"", piece: int = 256 * 1024):
    """A tools/call result whose text is ``text_bytes`` long, written in pieces (chunked, no Content-Length);
    ``after_text`` goes into the result after the content (a late member)."""
    filler = b"x" * piece

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(TEXT_HEAD)
        left = text_bytes
        while left > 0:
            await response.write(filler if left >= piece else filler[:left])
            left -= piece
        await response.write(TEXT_END)
        for part in after_text.split(b"|"):  # "|" marks a write boundary inside the late member
            await response.write(part)
            await asyncio.sleep(0.02)
        await response.write(b"}}")
        await response.write_eof()
        return response

    return behaviour


def tools_answer(padding: int, tools=TOOLS, rpc_id=1) -> bytes:
    """A tools/list result ``padding`` bytes larger than its tools, padded in the first one's description."""
    padded = [dict(tools[0], description="p" * padding), *tools[1:]]
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": padded}}).encode()


def json_answer(body: bytes, *, chunked: bool):
    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start:start + 64 * 1024])
        await response.write_eof()
        return response

    return behaviour


# -- R2: JSON answers without a list stream through ---------------------------------------------------------------


async def test_r2_relaying_a_200_mib_json_result_raises_rss_by_at_most_32_mib(serve_gateway, upstream, issuer, only_search):
    gateway = await serve_gateway(upstream.url)
    await warm_up(gateway, issuer, upstream, streamed_text_result(2 * MiB))
    upstream.behaviour = streamed_text_result(200 * MiB)
    async with aiohttp.ClientSession() as http, RssWatch(gateway.process.pid) as rss:
        async with http.post(f"{gateway.url}/mcp", data=call_search(), headers=headers_for(issuer)) as response:
            assert response.status == 200
            size, tail = await drain(response)
    assert size == len(TEXT_HEAD) + 200 * MiB + len(TEXT_END) + 2 and tail.endswith(b'xxx"}]}}')  # byte for byte
    assert rss.growth <= RSS_MARGIN, f"RSS grew by {rss.growth / MiB:.1f} MiB while relaying 200 MiB"


async def test_r2_a_list_key_late_in_a_huge_answer_is_never_passed_unfiltered(serve_gateway, upstream, issuer, only_search):
    # A tools/call result with 100 MiB of text, then a "tools" member (split across two writes) that a
    # client would show as a tool list. Filtering it would mean holding 100 MiB; the gateway streams, sees
    # the key arrive and aborts the answer (fail closed): the client never gets a complete body.
    gateway = await serve_gateway(upstream.url)
    await warm_up(gateway, issuer, upstream, streamed_text_result(2 * MiB))
    upstream.behaviour = streamed_text_result(100 * MiB, after_text=b',"to|ols":[{"name":"drop_table"}]')
    received = b""
    async with aiohttp.ClientSession() as http, RssWatch(gateway.process.pid) as rss:
        with pytest.raises(aiohttp.ClientPayloadError):  # an incomplete body, not an answer
            async with http.post(f"{gateway.url}/mcp", data=call_search(), headers=headers_for(issuer)) as response:
                assert response.status == 200
                _, received = await drain(response, keep_tail=4096)
    assert b"drop_table" not in received and b"ols" not in received
    assert rss.growth <= RSS_MARGIN, f"RSS grew by {rss.growth / MiB:.1f} MiB"
    [refusal] = [record for record in gateway.log_records() if record.get("reason") == "upstream_late_list_key"]
    assert refusal["level"] == "error" and refusal["request_id"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_r2_a_list_answer_over_max_list_bytes_fails_closed_with_502(serve_gateway, upstream, issuer, only_search, chunked):
    gateway = await serve_gateway(upstream.url, upstream={"max_list_bytes": 256 * 1024})
    async with aiohttp.ClientSession() as http:
        upstream.behaviour = json_answer(tools_answer(400 * 1024), chunked=chunked)
        for request in (rpc("tools/list"), call_search()):  # asked for, and a list in a tools/call answer
            async with http.post(f"{gateway.url}/mcp", data=request, headers=headers_for(issuer)) as response:
                text = await response.text()
                assert response.status == 502, text[:300]
                assert b"drop_table" not in text.encode() and json.loads(text)["error"]["code"] == -32000
        # The same list under the bound is filtered as before.
        upstream.behaviour = json_answer(tools_answer(100 * 1024), chunked=chunked)
        for request in (rpc("tools/list"), call_search()):
            async with http.post(f"{gateway.url}/mcp", data=request, headers=headers_for(issuer)) as response:
                assert response.status == 200
                assert [tool["name"] for tool in (await response.json())["result"]["tools"]] == ["search"]
    refused = [line for line in gateway.log_text().splitlines() if "upstream_list_too_large" in line]
    assert len(refused) == 2 and all("over upstream.max_list_bytes (262144 bytes)" in line for line in refused)


# -- R2: the filtered-list memo is bounded in bytes and keeps lists only ----------------------------------------


async def test_r2_repeated_large_answers_never_grow_the_memo_beyond_its_byte_budget(start_gateway, upstream, only_search):
    client = await start_gateway(upstream.url)
    memo = client.gateway.authorizer.filtered_lists
    counter = 0

    async def distinct_answer(request: web.Request, received: Received) -> web.StreamResponse:
        nonlocal counter
        counter += 1
        tools = [dict(TOOLS[0], title=f"answer {counter}"), TOOLS[1]]
        return web.Response(body=tools_answer(size, tools), content_type="application/json")

    upstream.behaviour = distinct_answer
    # 40 distinct list answers of 600 KB (each under the entry cap: 24 MB in all), then 10 of 3 MB (over it).
    for size, count in ((600 * 1000, 40), (3 * 1000 * 1000, 10)):
        for _ in range(count):
            response = await client.post("/mcp", data=rpc("tools/list"), headers=JSON)
            assert response.status == 200
            assert [tool["name"] for tool in (await response.json())["result"]["tools"]] == ["search"]
    held = sum(len(value or b"") for value in memo.values())
    assert held <= MEMO_BUDGET_BYTES, f"the memo holds {held / MiB:.1f} MiB"
    assert memo.currsize <= memo.maxsize == MEMO_BUDGET_BYTES  # counted in bytes, overheads included
    assert all(len(value or b"") <= MEMO_ENTRY_MAX_BYTES for value in memo.values())
    assert 0 < len(memo) < 40  # lists are still memoized, the oldest evicted to stay in budget


async def test_r2_answers_without_a_list_are_never_retained(start_gateway, upstream, only_search):
    # A letter escape makes the pre-check look (it could spell "tools"), so each answer is parsed: it
    # holds no list, and is not kept. Before: every such answer stayed in the memo for 5 minutes.
    client = await start_gateway(upstream.url)
    memo = client.gateway.authorizer.filtered_lists
    counter = 0

    async def escaped_text(request: web.Request, received: Received) -> web.StreamResponse:
        nonlocal counter
        counter += 1
        text = "\\u0041" + f" answer {counter} " + "y" * 100_000
        body = ('{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + text + '"}]}}').encode()
        return web.Response(body=body, content_type="application/json")

    upstream.behaviour = escaped_text
    for _ in range(20):
        response = await client.post("/mcp", data=call_search(), headers=JSON)
        assert response.status == 200
        assert (await response.json())["result"]["content"][0]["text"].startswith("A answer")
    assert len(memo) == 0


# -- R2: SSE ------------------------------------------------------------------------------------------------------


def escaped_events(count: int, size: int):
    """``count`` distinct events of ``size`` bytes, three in four with a letter escape (parsed by the filter)."""
    filler = "z" * size

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        response = await start_sse(request)
        for number in range(count):
            escape = "\\u0041" if number % 4 else ""
            data = '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"' + escape + f"{number} " + filler + '"}}'
            await response.write(f"event: message\nid: {number}\ndata: {data}\n\n".encode())
        await response.write_eof()
        return response

    return behaviour


async def test_r2_relaying_a_100_mib_event_stream_raises_rss_by_at_most_32_mib(serve_gateway, upstream, issuer, only_search):
    gateway = await serve_gateway(upstream.url)
    await warm_up(gateway, issuer, upstream, escaped_events(20, 64 * 1024))
    count, size = 1600, 64 * 1024  # 100 MiB
    upstream.behaviour = escaped_events(count, size)
    events = 0
    async with aiohttp.ClientSession() as http, RssWatch(gateway.process.pid) as rss:
        async with http.post(f"{gateway.url}/mcp", data=call_search(), headers=headers_for(issuer)) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                events += pending.count(b"\n\n")
                pending = pending[pending.rfind(b"\n\n") + 2:] if b"\n\n" in pending else pending
    assert events == count
    assert rss.growth <= RSS_MARGIN, f"RSS grew by {rss.growth / MiB:.1f} MiB while relaying 100 MiB of events"


async def test_r2_an_sse_list_event_over_max_list_bytes_is_dropped_and_the_stream_ended(serve_gateway, upstream, issuer, only_search):
    gateway = await serve_gateway(upstream.url, upstream={"max_list_bytes": 256 * 1024})

    def stream_with(list_event: bytes):
        async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
            response = await start_sse(request)
            await response.write(b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"n":1}}\n\n')
            await response.write(b"event: message\ndata: " + list_event + b"\n\n")
            await response.write(b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"n":"after"}}\n\n')
            await response.write_eof()
            return response

        return behaviour

    async with aiohttp.ClientSession() as http:
        for request in (rpc("tools/list"), call_search()):
            upstream.behaviour = stream_with(tools_answer(400 * 1024))
            async with http.post(f"{gateway.url}/mcp", data=request, headers=headers_for(issuer)) as response:
                body = await response.read()
            assert b'"n":1' in body and b"drop_table" not in body and b'"tools"' not in body
            assert b"after" not in body  # the stream was ended there
        upstream.behaviour = stream_with(tools_answer(100 * 1024))  # under the bound: filtered as before
        async with http.post(f"{gateway.url}/mcp", data=rpc("tools/list"), headers=headers_for(issuer)) as response:
            body = await response.read()
        assert b"drop_table" not in body and b'"search"' in body and b"after" in body
    dropped = [line for line in gateway.log_text().splitlines() if "upstream_list_too_large" in line]
    assert len(dropped) == 2 and all("dropped an upstream SSE event" in line for line in dropped)


# -- R4: linear SSE framing ---------------------------------------------------------------------------------------


def test_r4_a_4_mib_event_in_2_kib_pieces_is_framed_in_linear_time():
    event = b"data: " + b"x" * (4 * MiB) + b"\n\n"
    splitter = EventSplitter()
    started = time.process_time()
    found = [e for start in range(0, len(event), 2048) for e in splitter.feed(event[start:start + 2048])]
    spent = time.process_time() - started
    assert found == [event] and not splitter.pending
    assert spent < 0.5, f"{spent:.2f} s of CPU for one 4 MiB event"  # quadratic framing took 2.2 s
    bounded = EventSplitter(max_event_bytes=1024)  # and the bound on one event still holds
    bounded.feed(b"data: " + b"x" * 1000)
    with pytest.raises(ValueError):
        bounded.feed(b"x" * 100)


_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
BOM = b"\xef\xbb\xbf"


class RescanningSplitter:
    """The framing semantics, stated the slow way: everything not yet framed is scanned again on each
    chunk. A CR at the end of what has arrived ends a line at once (no event waits for the next byte).
    A BOM is dropped at the start of the stream only."""

    def __init__(self):
        self.buffer = b""
        self.at_start = True

    def feed(self, chunk: bytes) -> list[bytes]:
        self.buffer += chunk
        if self.at_start:
            if len(self.buffer) < 3 and BOM.startswith(self.buffer):
                return []
            self.at_start = False
            if self.buffer.startswith(BOM):
                self.buffer = self.buffer[3:]
        events, start = [], 0
        for match in _EVENT_END.finditer(self.buffer):
            events.append(self.buffer[start:match.end()])
            start = match.end()
        self.buffer = self.buffer[start:]
        return events


LINE_ENDS = [b"\n", b"\r", b"\r\n"]
VALUE_BYTES = [b"a", b"b", b"{", b"}", b'"', b" ", "\u00e9".encode()]


def random_stream(rng: random.Random) -> bytes:
    parts = [rng.choice([BOM, b"", b"\n\n", b"\r\n"])]  # a BOM, or blank lines before one that is data
    for _ in range(rng.randint(1, 25)):
        for _ in range(rng.randint(1, 3)):
            field = rng.choice([b"data: ", b"data:", b"id: ", b"event: ", b": comment ", BOM + b"data: "])
            parts.append(field + b"".join(rng.choice(VALUE_BYTES) for _ in range(rng.randint(0, 9))) + rng.choice(LINE_ENDS))
        parts.append(rng.choice(LINE_ENDS))  # the blank line: \n\n, \r\r, \r\n\r\n, \n\r\n, \r\n\n, ...
    return b"".join(parts)


def random_chunks(rng: random.Random, stream: bytes) -> list[bytes]:
    chunks, at = [], 0
    while at < len(stream):
        size = rng.choice([1, 1, 2, 3, 4, 5, 8, 13, 64])
        chunks.append(stream[at:at + size])
        at += size
    return chunks


def meaningful(events: list[bytes]) -> list:
    """What a reader sees: parsed events, blank-only ones (nothing to dispatch) left out."""
    return [parse_event(e) for e in events if e.strip(b"\r\n")]


def test_r4_framing_matches_the_rescanning_semantics_for_random_chunkings():
    for seed in range(400):
        rng = random.Random(seed)
        stream = random_stream(rng)
        chunks = random_chunks(rng, stream)
        fast, slow = EventSplitter(), RescanningSplitter()
        got = [e for c in chunks for e in fast.feed(c)]
        assert got == [e for c in chunks for e in slow.feed(c)], (seed, chunks)
        assert fast.pending == bool(slow.buffer.strip()), seed


def test_r4_framing_does_not_depend_on_how_the_stream_is_cut():
    for seed in range(400):
        rng = random.Random(seed)
        stream = random_stream(rng)
        expected = EventSplitter().feed(stream)
        for cut in range(3):
            splitter = EventSplitter()
            got = [e for c in random_chunks(random.Random(seed * 10 + cut), stream) for e in splitter.feed(c)]
            # Every byte once, in order (a leading BOM dropped), and a reader sees the same events. (A CR
            # that ends a chunk ends its event at once; the LF after it then starts the next one.)
            framed = b"".join(got)
            assert stream.removeprefix(BOM).startswith(framed), seed
            assert splitter.pending == bool(stream.removeprefix(BOM)[len(framed):].strip()), seed
            assert meaningful(got) == meaningful(expected), seed




# -- R3 (last sentence): waiting for a pooled upstream connection is bounded by connect_timeout -------------------


async def test_r3_waiting_for_a_pooled_upstream_connection_counts_against_connect_timeout(start_gateway, upstream, gateway_logs):
    client = await start_gateway(upstream.url, upstream={"connect_timeout": "300ms", "response_timeout": "3s"})
    # The pool has 1,024 connections; one stands for all of them here (the connector reads its limit live).
    client.gateway.proxy.session.connector._limit = 1
    release = asyncio.Event()

    async def held(request: web.Request, received: Received) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), 10)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    upstream.behaviour = held
    holder = asyncio.create_task(client.post("/mcp", data=call_search(), headers=JSON))
    while not upstream.received:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    response = await client.post("/mcp", data=call_search(), headers=JSON)
    waited = time.monotonic() - started
    release.set()
    assert response.status == 504 and waited < 2, (response.status, waited)  # not until the pool frees up
    assert (await holder).status == 200
    assert "no connection to" in gateway_logs.text and "within 0.3s" in gateway_logs.text
