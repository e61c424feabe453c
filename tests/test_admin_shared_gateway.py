"""O7 rehearsal: the shared gateway of deploy/kubernetes/overlays/shared, played out with real processes.

Two replicas of the rendered Deployment, started as the pod starts the gateway (the image's ENTRYPOINT
plus the container's args and env), read the rendered gateway.yaml and the same session key (one Secret,
mounted by every pod), in front of one stateful MCP upstream that stands in for the MCP server "elsewhere".
A client opens a session through one replica and carries on through the other, as a Service without
session affinity sends it; a replica that goes away (scale-down, node drain) takes no session with it;
a replica with another key (a forgotten Secret) refuses the session instead of mixing it up.

Rewritten, as in tests/test_sidecar.py: mount paths move under tmp_path, host and ports become
127.0.0.1 and free ports, the issuer becomes a loopback TestIssuer and upstream.url the stand-in's URL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.conftest import free_port
from tests.factories import TestIssuer, bearer
from tests.test_deploy import (
    EXTERNAL_SECRETS,
    SHARED,
    config_path_of,
    dockerfile_env,
    dockerfile_instruction,
    env_of,
    gateway_container,
    materialize_mounts,
    rendered,
    rendered_gateway_config,
    rewrite_paths,
)
from tests.upstreams import Received, RecordingUpstream

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "rehearsal", "version": "1"}}}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def stateful_upstream() -> RecordingUpstream:
    """An MCP server that keeps sessions: initialize makes a new one, anything else needs a known one (404)."""
    sessions: set[str] = set()
    counter = itertools.count(1)

    async def behaviour(request: web.Request, received: Received) -> web.StreamResponse:
        message = json.loads(received.body)
        if message["method"] == "initialize":
            session = f"upstream-session-{next(counter)}"
            sessions.add(session)
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "elsewhere", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result}, headers={"Mcp-Session-Id": session})
        if request.headers.get("Mcp-Session-Id") not in sessions:
            return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "error": {"code": -32001, "message": "no such session"}}, status=404)
        text = f"{message['params']['arguments']['text']} in {request.headers['Mcp-Session-Id']}"
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": text}]}})

    return RecordingUpstream(behaviour=behaviour)


async def start_replica(root: Path, mounts: dict[str, Path], name: str, *, upstream_url: str, issuer: TestIssuer,
                        key_file: Path | None = None) -> tuple[asyncio.subprocess.Process, str, str, Path]:
    docs = rendered(SHARED)
    spec = gateway_container(docs)
    config = rewrite_paths(rendered_gateway_config(docs), mounts)
    port, admin_port = free_port(), free_port()
    config["server"].update(host="127.0.0.1", port=port, admin_port=admin_port)
    if key_file is not None:
        config["server"]["session_key_file"] = str(key_file)
    config["upstream"]["url"] = upstream_url
    config["auth"]["issuers"][0]["issuer"] = issuer.url
    # Each replica reads its own copy of the ConfigMap's file (the ports differ); the same place otherwise.
    config_file = Path(rewrite_paths(config_path_of(spec), mounts))
    own_config = config_file.with_name(f"{name}.yaml")
    own_config.write_text(yaml.safe_dump(config))
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT")[-1])
    args = [own_config.as_posix() if a == config_file.as_posix() else a for a in rewrite_paths(spec.get("args", []), mounts)]
    env = {"PATH": os.environ["PATH"], **{k: v for k, v in dockerfile_env().items() if k != "PATH"},
           **rewrite_paths(env_of(spec), mounts), "MCP_AUTH_GATEWAY_CONFIG": str(own_config)}
    log = root / f"{name}.log"
    process = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / entrypoint[0]), *entrypoint[1:], *args,
                                                   cwd="/", env=env, stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT)
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    readiness = spec["readinessProbe"]["httpGet"]
    assert readiness["port"] == "admin"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if process.returncode is not None:
                break
            try:
                async with http.get(f"{admin_url}{readiness['path']}") as response:
                    if response.status == 200:
                        return process, url, admin_url, log
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(f"replica {name} never became ready:\n{log.read_text(errors='replace')}")


async def post(url: str, token: str, body: dict, session: str | None = None) -> tuple[int, dict, str | None]:
    headers = {**JSON, **bearer(token), **({"Mcp-Session-Id": session} if session else {})}
    async with aiohttp.ClientSession() as http:  # a new connection each time, as behind a Service
        async with http.post(f"{url}/mcp", data=json.dumps(body), headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith("{") else {}, response.headers.get("Mcp-Session-Id")


def echo(text: str, rpc_id: int) -> dict:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}


async def test_O7_a_session_moves_between_two_replicas_with_the_same_session_key(tmp_path, issuer, aiohttp_server):
    upstream = stateful_upstream()
    server = await aiohttp_server(upstream.app())
    upstream_url = str(server.make_url("/mcp"))
    docs = rendered(SHARED)
    root = tmp_path / "cluster"
    mounts = materialize_mounts(docs, gateway_container(docs), root)  # one Secret, mounted by every replica
    key_file = Path(rewrite_paths(rendered_gateway_config(docs)["server"]["session_key_file"], mounts))
    assert key_file.name in next(iter(EXTERNAL_SECRETS.values())) and len(key_file.read_bytes()) >= 32

    replicas = [await start_replica(root, mounts, name, upstream_url=upstream_url, issuer=issuer) for name in ("replica-a", "replica-b")]
    try:
        (a, a_url, _, _), (b, b_url, _, _) = replicas
        alice = issuer.mint(sub="alice", aud=rendered_gateway_config(docs)["server"]["public_url"], scope="mcp")
        status, _, session = await post(a_url, alice, INIT)
        assert status == 200 and session and session.startswith("g1."), session
        assert "upstream-session-1" not in session  # the client sees the wrapped id only

        # No affinity: the calls alternate between the replicas, all in the one upstream session.
        for rpc_id, url in enumerate([b_url, a_url, b_url, b_url], start=2):
            status, body, _ = await post(url, alice, echo(f"call {rpc_id}", rpc_id), session)
            assert status == 200, body
            assert body["result"]["content"][0]["text"] == f"call {rpc_id} in upstream-session-1"
        assert [r.headers.get("Mcp-Session-Id") for r in upstream.received[1:]] == ["upstream-session-1"] * 4

        # A replica goes away (scale-down, a drained node): the session goes on through the other.
        a.terminate()
        assert await asyncio.wait_for(a.wait(), 30) == 0
        status, body, _ = await post(b_url, alice, echo("after a left", 9), session)
        assert status == 200 and body["result"]["content"][0]["text"] == "after a left in upstream-session-1"

        # The binding is to the principal: bob cannot use alice's session through any replica.
        bob = issuer.mint(sub="bob", aud=rendered_gateway_config(docs)["server"]["public_url"], scope="mcp")
        assert (await post(b_url, bob, echo("hijack", 10), session))[0] == 404

        # A replica without the shared key (its own Secret) refuses the session (404: clients start anew).
        stray_key = tmp_path / "stray-key"
        stray_key.write_bytes(os.urandom(32))
        replicas.append(await start_replica(root, mounts, "replica-stray", upstream_url=upstream_url, issuer=issuer, key_file=stray_key))
        before = len(upstream.received)
        assert (await post(replicas[-1][1], alice, echo("stray", 11), session))[0] == 404
        assert len(upstream.received) == before, "a refused session id never reaches the upstream"
    finally:
        for process, *_ in replicas:
            if process.returncode is None:
                process.kill()
            await process.wait()
