"""M4: task ids (tasks extension, SEP-2663) belong to the principal that received them.

A real ``python -m gateway serve`` in front of a small tasks server on 127.0.0.1 that speaks the extension
on the wire (``tools/call`` answers ``resultType: "task"``; ``tasks/get``, ``tasks/update``,
``tasks/cancel`` by ``params.taskId``; 2025-11-25's ``tasks/list`` lists every task it holds, as a server
behind a gateway sees one caller). The server is a stand-in for the upstream, not the code under test.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.mcp.sessions import SessionBindings
from gateway.mcp.tasks import PURPOSE
from tests.factories import bearer
from tests.upstreams import Received, RecordingUpstream, sse_event

MODERN = "2026-07-28"
TASKS = {"io.modelcontextprotocol/tasks": {}}
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"extensions": TASKS}}


def task(task_id: str, status: str = "working", **extra) -> dict:
    return {"taskId": task_id, "status": status, "createdAt": "2026-12-01T10:00:00Z",
            "lastUpdatedAt": "2026-12-01T10:00:00Z", "ttlMs": 60000, "pollIntervalMs": 100, **extra}


class TasksServer:
    """Creates one task per tools/call (ids upstream-1, upstream-2, ...) and answers for them by id."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}

    async def __call__(self, request: web.Request, received: Received) -> web.StreamResponse:
        message = json.loads(received.body)
        method, params, rpc_id = message["method"], message.get("params", {}), message.get("id")
        if method == "tools/call":
            task_id = f"upstream-{len(self.tasks) + 1}"
            self.tasks[task_id] = task(task_id)
            result = {"resultType": "task", **self.tasks[task_id]}
        elif method == "tasks/list":
            result = {"tasks": list(self.tasks.values())}
        elif method == "subscriptions/listen":
            ids = params["notifications"].get("taskIds", [])
            ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                   "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": rpc_id}, "notifications": {"taskIds": ids}}}
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(sse_event(ack))
            for task_id in self.tasks:  # every task's status, as a careless shared server would send
                await response.write(sse_event({"jsonrpc": "2.0", "method": "notifications/tasks",
                                                "params": task(task_id, "completed", result={"content": []})}))
            await response.write_eof()
            return response
        elif params.get("taskId") in self.tasks:
            result = self.tasks[params["taskId"]] if method == "tasks/get" else {"resultType": "complete"}
        else:
            return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32602, "message": "Task not found"}})
        return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "result": result})


@pytest.fixture
async def tasks_upstream(aiohttp_server):
    server = TasksServer()
    recorder = RecordingUpstream(behaviour=server)
    running = await aiohttp_server(recorder.app())
    recorder.url = str(running.make_url("/mcp"))
    recorder.server = server
    return recorder


async def post(url: str, token: str, method: str, params: dict, *, mcp_name: str | None = None,
               rpc_id: int = 1) -> tuple[int, dict | str]:
    headers = {**bearer(token), "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if mcp_name is not None:
        headers["Mcp-Name"] = mcp_name
    body = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": {**params, "_meta": META}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/mcp", data=json.dumps(body), headers=headers) as response:
            if response.content_type == "text/event-stream":
                return response.status, await response.text()
            return response.status, await response.json(content_type=None)


def forwarded(upstream: RecordingUpstream, method: str) -> list[dict]:
    return [json.loads(r.body) for r in upstream.received if r.body and json.loads(r.body).get("method") == method]


async def create(url: str, token: str) -> str:
    status, body = await post(url, token, "tools/call", {"name": "build", "arguments": {}}, mcp_name="build")
    assert status == 200 and body["result"]["resultType"] == "task", body
    return body["result"]["taskId"]


async def test_M4_a_task_id_is_sealed_for_its_principal_and_unsealed_for_the_upstream(serve_gateway, tasks_upstream, issuer):
    gateway = await serve_gateway(tasks_upstream.url)
    alice = issuer.mint(sub="alice")
    handle = await create(gateway.url, alice)
    assert handle.startswith("g1.") and "upstream-1" not in handle  # the upstream's id never leaves
    for method in ("tasks/get", "tasks/update", "tasks/cancel"):
        params = {"taskId": handle, **({"inputResponses": {}} if method == "tasks/update" else {})}
        status, body = await post(gateway.url, alice, method, params, mcp_name=handle, rpc_id=5)
        assert status == 200 and "error" not in body, (method, body)
        assert forwarded(tasks_upstream, method)[-1]["params"]["taskId"] == "upstream-1"
        assert tasks_upstream.received[-1].headers["Mcp-Name"] == "upstream-1"  # SEP-2663 routing header, unsealed too
    status, body = await post(gateway.url, alice, "tasks/get", {"taskId": handle}, mcp_name=handle)
    assert body["result"]["taskId"] == handle  # the answer names the task by the caller's own handle


async def test_M4_another_principal_using_the_id_gets_404_and_nothing_is_forwarded(serve_gateway, tasks_upstream, issuer):
    gateway = await serve_gateway(tasks_upstream.url)
    handle = await create(gateway.url, issuer.mint(sub="alice"))
    bob = issuer.mint(sub="bob")
    seen = len(tasks_upstream.received)
    for method in ("tasks/get", "tasks/update", "tasks/cancel", "tasks/result"):
        status, body = await post(gateway.url, bob, method, {"taskId": handle, "inputResponses": {}}, rpc_id=9)
        assert status == 404, (method, status, body)
        assert body["jsonrpc"] == "2.0" and body["id"] == 9 and body["error"]["message"] == "Task not found", body
    status, body = await post(gateway.url, bob, "subscriptions/listen", {"notifications": {"taskIds": [handle]}})
    assert status == 404
    assert len(tasks_upstream.received) == seen  # refused at the gateway
    assert {r["reason"] for r in gateway.audit() if r["outcome"] == "deny"} == {"task_unknown"}


@pytest.mark.parametrize("forged", [
    "upstream-1",  # the raw upstream id: possession is not authorization (SEP-2567)
    "g1.AAAAAAAAAAB1cHN0cmVhbS0x.AAAAAAAAAAAAAAAAAAAAAA",  # a well-formed seal with a made-up MAC
    "tampered", "g1.", "g1.x.y", "g1.////.AAAA",
])
async def test_M4_a_forged_or_tampered_task_id_gets_404(serve_gateway, tasks_upstream, issuer, forged):
    gateway = await serve_gateway(tasks_upstream.url)
    alice = issuer.mint(sub="alice")
    handle = await create(gateway.url, alice)
    if forged == "tampered":
        forged = handle[:-2] + ("AA" if not handle.endswith("AA") else "BA")
    seen = len(tasks_upstream.received)
    status, body = await post(gateway.url, alice, "tasks/get", {"taskId": forged})
    assert status == 404 and body["error"]["message"] == "Task not found", body
    assert len(tasks_upstream.received) == seen


def issuer_principal(issuer):
    from gateway.auth.principal import Principal
    return Principal(issuer=issuer.url, subject="alice", entity_id="alice", client_id="", scopes=frozenset())


async def test_M4_a_session_id_never_passes_as_a_task_id(serve_gateway, tasks_upstream, issuer, tmp_path):
    """Same key (server.session_key_file), same principal, same upstream id: only the purpose differs."""
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    gateway = await serve_gateway(tasks_upstream.url, server={"session_key_file": str(key)})
    alice = issuer.mint(sub="alice")
    await create(gateway.url, alice)
    principal = issuer_principal(issuer)
    as_session = SessionBindings(b"s" * 32).wrap("upstream-1", principal)
    as_task = SessionBindings(b"s" * 32).sibling(PURPOSE).seal("upstream-1", principal)
    assert (await post(gateway.url, alice, "tasks/get", {"taskId": as_session}))[0] == 404
    status, body = await post(gateway.url, alice, "tasks/get", {"taskId": as_task})
    assert status == 200 and body["result"]["status"] == "working", body  # the same seal with the task purpose works


async def test_M4_tasks_list_and_task_notifications_never_show_another_principals_tasks(serve_gateway, tasks_upstream, issuer):
    gateway = await serve_gateway(tasks_upstream.url)
    alice, bob = issuer.mint(sub="alice"), issuer.mint(sub="bob")
    await create(gateway.url, alice)
    mine = await create(gateway.url, bob)
    status, body = await post(gateway.url, bob, "tasks/list", {})
    direct = tasks_upstream.server.tasks
    assert status == 200 and len(direct) == 2
    assert body["result"]["tasks"] == [], body  # the gateway cannot tell whose they are: none is shown
    status, text = await post(gateway.url, bob, "subscriptions/listen", {"notifications": {"taskIds": [mine]}})
    assert status == 200
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert forwarded(tasks_upstream, "subscriptions/listen")[-1]["params"]["notifications"]["taskIds"] == ["upstream-2"]
    ack, *updates = events
    assert ack["params"]["notifications"]["taskIds"] == [mine]
    assert [u["params"]["taskId"] for u in updates] == [mine]  # alice's upstream-1 was dropped
    assert "upstream-1" not in text and "upstream-2" not in text


@pytest.mark.parametrize("method, params", [
    ("tasks/result", {"taskId": "{mine}", "TASKID": "upstream-1"}),
    ("tasks/get", {"taskId": "{mine}", "task_id": "upstream-1"}),
    ("subscriptions/listen", {"notifications": {"taskIds": ["{mine}"], "TaskIds": ["upstream-1"]}}),
    ("subscriptions/listen", {"notifications": {"taskIds": ["{mine}"]}, "Notifications": {"taskIds": ["upstream-1"]}}),
])
async def test_M4_another_spelling_of_the_task_id_member_is_refused(serve_gateway, tasks_upstream, issuer, method, params):
    """A case-insensitive (Go) upstream would read ``TASKID`` as the task id: the gateway's reading and the
    upstream's must not differ (I2), so the request is refused before anything is forwarded."""
    gateway = await serve_gateway(tasks_upstream.url)
    bob = issuer.mint(sub="bob")
    await create(gateway.url, issuer.mint(sub="alice"))  # upstream-1 is alice's
    mine = await create(gateway.url, bob)
    seen = len(tasks_upstream.received)
    status, body = await post(gateway.url, bob, method, json.loads(json.dumps(params).replace("{mine}", mine)))
    assert status == 400, body
    assert len(tasks_upstream.received) == seen


# -- the answer side, frame by frame (pure: gateway.mcp.tasks on bytes) -------------------------------------

from gateway.mcp.jsonrpc import parse_body  # noqa: E402
from gateway.mcp.tasks import TaskBindings  # noqa: E402
from gateway.mcp.sessions import BoundHandles  # noqa: E402


def answers_for(request: dict, principal=None):
    from gateway.auth.principal import Principal
    principal = principal or Principal(issuer="https://issuer", subject="alice", entity_id="alice", client_id="", scopes=frozenset())
    bindings = TaskBindings(BoundHandles(b"k" * 32, purpose=PURPOSE))
    batch, known = bindings.unwrap_requests(parse_body(json.dumps(request).encode(), "application/json"), principal)
    return bindings, principal, bindings.answers(principal, known, batch)


CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "build", "arguments": {}}}


def test_M4_a_2025_11_25_create_task_result_is_sealed_and_related_task_meta_follows():
    bindings, alice, answers = answers_for(CALL)
    legacy = {"jsonrpc": "2.0", "id": 1, "result": {"task": task("raw-7"),
              "_meta": {"io.modelcontextprotocol/related-task": {"taskId": "raw-7"}}}}
    out = json.loads(answers.filter_json_body(json.dumps(legacy).encode()))
    handle = out["result"]["task"]["taskId"]
    assert handle.startswith("g1.") and bindings._handles.open(handle, alice) == "raw-7"
    assert out["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == handle


def test_M4_an_answer_to_a_request_that_creates_nothing_never_seals_an_id():
    _, _, answers = answers_for({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"resultType": "task", **task("raw-9")}}).encode()
    assert json.loads(answers.filter_json_body(body))["result"]["taskId"] == "raw-9"  # useless through the gateway


def test_M4_unreadable_or_foreign_task_frames_fail_closed():
    _, _, answers = answers_for(CALL)
    assert answers.filter_event(b'data: {"taskId": \n\n') is None  # not JSON: dropped
    foreign = {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": task("someone-elses")}
    assert answers.filter_event(f"data: {json.dumps(foreign)}\n\n".encode()) is None
    plain = b'data: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"a task to do"}]}}\n\n'
    assert answers.filter_event(plain) is plain  # nothing that names a task: the bytes pass untouched


def test_M4_an_event_too_large_to_read_is_dropped_not_passed():
    """R2: a frame over upstream.max_list_bytes that may name a task is not parsed, and not passed unread."""
    from gateway.auth.principal import Principal
    alice = Principal(issuer="https://issuer", subject="alice", entity_id="alice", client_id="", scopes=frozenset())
    bindings = TaskBindings(BoundHandles(b"k" * 32, purpose=PURPOSE))
    batch = parse_body(json.dumps(CALL).encode(), "application/json")
    created = {"jsonrpc": "2.0", "id": 1, "result": {"resultType": "task", **task("raw-1", statusMessage="x" * 2000)}}
    event = f"data: {json.dumps(created)}\n\n".encode()
    assert bindings.answers(alice, {}, batch).filter_event(event) is not None  # read and sealed
    assert bindings.answers(alice, {}, batch, max_bytes=1024).filter_event(event) is None


def test_M4_two_handles_for_one_task_in_one_batch_both_reach_it():
    from gateway.auth.principal import Principal
    alice = Principal(issuer="https://issuer", subject="alice", entity_id="alice", client_id="", scopes=frozenset())
    bindings = TaskBindings(BoundHandles(b"k" * 32, purpose=PURPOSE))
    first, second = bindings.seal("raw-1", alice), BoundHandles(b"k" * 32, purpose=PURPOSE, clock=lambda: time.time() - 5).seal("raw-1", alice)
    assert first != second
    body = [{"jsonrpc": "2.0", "id": i, "method": "tasks/get", "params": {"taskId": h}} for i, h in enumerate((first, second))]
    batch, known = bindings.unwrap_requests(parse_body(json.dumps(body).encode(), "application/json"), alice)
    assert [m["params"]["taskId"] for m in json.loads(batch.canonical)] == ["raw-1", "raw-1"]
    assert known == {"raw-1": first}
