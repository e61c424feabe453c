"""M4 against a real tasks server: server-everything's ``simulate-research-query`` (2025-11-25 tasks,
SEP-1686: ``tools/call`` with ``params.task``, ``CreateTaskResult`` in ``result.task``, ``tasks/get``,
``tasks/result``, ``tasks/cancel``, ``tasks/list``), through the gateway, by two principals.

The task id the upstream mints reaches its caller sealed (``g1.…``) and works for that caller only;
another principal, with a session of its own, gets 404 for it; and no ``tasks/list`` answer shows any
task, since the gateway cannot tell whose the upstream's are. Raw HTTP, so the test sees the wire.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.interop.test_inspector import authorization_code_token
from tests.interop.test_server_everything import client_credentials_token
from tests.interop.test_server_everything import everything_gateway, everything_server  # noqa: F401 (fixtures)

LEGACY = "2025-11-25"
RESEARCH = "simulate-research-query"


class Caller:
    """One principal's 2025-11-25 session through the gateway."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str):
        self.http, self.url, self.token = http, url, token
        self.session: str | None = None
        self.next_id = 0

    async def post(self, method: str, params: dict | None = None) -> tuple[int, dict]:
        self.next_id += 1
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json", "MCP-Protocol-Version": LEGACY}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        async with self.http.post(self.url, data=json.dumps(body), headers=headers) as response:
            text = await response.text()
            self.session = response.headers.get("Mcp-Session-Id", self.session)
            if response.content_type == "text/event-stream":
                answers = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
                text = json.dumps(next(a for a in answers if a.get("id") == self.next_id))
            return response.status, json.loads(text)

    async def open(self) -> Caller:
        status, _ = await self.post("initialize", {"protocolVersion": LEGACY, "capabilities": {},
                                                   "clientInfo": {"name": "tasks interop", "version": "1"}})
        assert status == 200 and self.session
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": LEGACY,
                   "Mcp-Session-Id": self.session}
        async with self.http.post(self.url, data=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                                  headers=headers) as response:
            assert response.status in (200, 202)
        return self


async def test_m4_interop_a_server_everything_task_belongs_to_the_principal_that_started_it(
        everything_gateway, authorization_server):
    url = everything_gateway.public_url
    async with aiohttp.ClientSession() as http:
        alice = await Caller(http, url, client_credentials_token(authorization_server, url)).open()
        other = await Caller(http, url, await authorization_code_token(authorization_server.issuer, url, "root", "mcp")).open()

        status, created = await alice.post("tools/call", {"name": RESEARCH, "arguments": {"topic": "gateways"},
                                                          "task": {"ttl": 60000}})
        assert status == 200, created
        handle = created["result"]["task"]["taskId"]
        assert handle.startswith("g1."), created  # sealed: the upstream's own id never reaches the client

        status, polled = await alice.post("tasks/get", {"taskId": handle})
        assert status == 200 and polled["result"]["taskId"] == handle, polled

        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            status, refused = await other.post(method, {"taskId": handle})
            assert status == 404 and refused["error"]["message"] == "Task not found", (method, refused)
            assert refused["id"] == other.next_id

        for caller in (other, alice):
            status, listed = await caller.post("tasks/list")
            assert status == 200 and listed["result"]["tasks"] == [], listed  # never another principal's
        assert "from a task list" in everything_gateway.log_text()  # the upstream did list the task: it was dropped

        for _ in range(100):  # four stages of a second each
            status, polled = await alice.post("tasks/get", {"taskId": handle})
            if polled["result"]["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        assert polled["result"]["status"] == "completed", polled
        status, result = await alice.post("tasks/result", {"taskId": handle})
        assert status == 200 and "gateways" in json.dumps(result["result"]["content"]), result
        related = result["result"].get("_meta", {}).get("io.modelcontextprotocol/related-task")
        assert related is None or related["taskId"] == handle, related
