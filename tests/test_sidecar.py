"""A sidecar rehearsal: the pod of deploy/kubernetes/base, played out with real processes on loopback.

What is taken from the rendered base manifest, unchanged:
- the gateway's command: the image's ENTRYPOINT (deploy/Dockerfile) plus the container's ``args``, and
  its environment: the image's ENV plus the container's ``env`` (MCP_AUTH_GATEWAY_CONFIG among them);
- the files it reads: gateway.yaml, the policies, schema and entities and the Secret, laid out as the
  kubelet mounts them (a subPath file; directories in the atomic-writer layout with ``..data``);
- the MCP server's environment (HOST=127.0.0.1 and PORT), for the demo MCP server standing in for it;
- the probes (path, port name, periodSeconds, scaled down by SCALE) and the preStop sleep (scaled too).

What is rewritten, and why:
- mount paths (/etc/mcp-auth-gateway/..., /var/run/secrets/gateway) move under tmp_path, in the
  configuration, the args and the environment: the test cannot write to /etc;
- server.host 0.0.0.0 -> 127.0.0.1, server.port 8080 and server.admin_port 9090 -> free ports: the
  rehearsal must not listen on every interface of the machine, and 8080 or 9090 may be taken; the probes
  and the /metrics reads go to the port their manifest names (the container port `admin`, O1);
- the MCP server's PORT (3000) -> a free port, and upstream.url's port with it (still 127.0.0.1);
- the issuer (https://idp.example.com) -> a loopback TestIssuer (tests/factories.py) serving metadata and
  JWKS, so the gateway becomes ready and tokens can be minted; public_url, the scopes, the policies,
  shutdown_grace, logging and audit stay as rendered.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import free_port
from tests.factories import TestIssuer, bearer
from tests.test_deploy import (
    config_path_of,
    dockerfile_env,
    dockerfile_instruction,
    env_of,
    gateway_container,
    materialize_mounts,
    mcp_server_container,
    pod_spec,
    rendered,
    rendered_gateway_config,
    rewrite_paths,
    volume_files,
    write_atomic_dir,
)

# Kubernetes seconds -> rehearsal seconds: a 5 s probe period becomes 0.1 s.
SCALE = 0.02

DEMO_MCP_SERVER = """\
from gateway.demo.mcp_server import main
main()  # the demo's MCP Python SDK server on $HOST:$PORT
"""


@dataclass
class Pod:
    root: Path
    config: dict[str, Any]
    gateway: asyncio.subprocess.Process
    mcp_server: asyncio.subprocess.Process
    url: str
    admin_url: str
    probes: dict[str, dict[str, Any]]
    pre_stop: float
    policies_dir: Path
    policy_files: dict[str, bytes]
    logs: list[Path] = field(default_factory=list)

    def probe_url(self, kind: str) -> str:
        """Where the kubelet sends the ``kind`` probe: the container port its manifest names."""
        return {"http": self.url, "admin": self.admin_url}[self.probes[kind]["httpGet"]["port"]]

    def log_text(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')}" for path in self.logs if path.exists())


async def probe(url: str, path: str, timeout: float = 1.0) -> int | None:
    """One kubelet-style HTTP probe on a fresh connection: the status, or None when nothing answers."""
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


async def wait_for_port(port: int, process: asyncio.subprocess.Process, what: str) -> None:
    for _ in range(200):
        if process.returncode is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{what} is not listening on 127.0.0.1:{port}")


async def start_pod(tmp_path: Path, issuer: TestIssuer) -> Pod:
    docs = rendered("base")
    gateway_spec = gateway_container(docs)
    mcp_spec = mcp_server_container(docs)
    root = tmp_path / "pod"
    mounts = materialize_mounts(docs, gateway_spec, root)

    # The MCP server, bound where the manifest tells it to (loopback), on a free port instead of 3000.
    mcp_env = env_of(mcp_spec)
    assert mcp_env["HOST"] == "127.0.0.1"
    mcp_port = free_port()
    mcp_log = tmp_path / "mcp-server.log"
    mcp_server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEMO_MCP_SERVER, cwd="/",
        env={"PATH": os.environ["PATH"], **mcp_env, "PORT": str(mcp_port)},
        stdout=mcp_log.open("wb"), stderr=asyncio.subprocess.STDOUT,
    )

    # The gateway's configuration as the ConfigMap has it, with the rewrites of the module docstring.
    config = rewrite_paths(rendered_gateway_config(docs), mounts)
    assert config["upstream"]["url"].startswith(f"http://127.0.0.1:{mcp_env['PORT']}/")
    config["upstream"]["url"] = re.sub(r":\d+/", f":{mcp_port}/", config["upstream"]["url"], count=1)
    assert len(config["auth"]["issuers"]) == 1
    config["auth"]["issuers"][0]["issuer"] = issuer.url
    port, admin_port = free_port(), free_port()
    assert config["server"]["admin_port"] == next(p["containerPort"] for p in gateway_spec["ports"] if p["name"] == "admin")
    config["server"].update(host="127.0.0.1", port=port, admin_port=admin_port)
    config_file = Path(rewrite_paths(config_path_of(gateway_spec), mounts))
    config_file.write_text(yaml.safe_dump(config))

    # The gateway: ENTRYPOINT + args, image ENV + container env, WORKDIR /.
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT")[-1])
    program = Path(sys.executable).parent / entrypoint[0]
    argv = [str(program), *entrypoint[1:], *rewrite_paths(gateway_spec.get("args", []), mounts)]
    image_env = {key: value for key, value in dockerfile_env().items() if key != "PATH"}
    env = {"PATH": os.environ["PATH"], **image_env, **rewrite_paths(env_of(gateway_spec), mounts)}
    assert Path(env["MCP_AUTH_GATEWAY_CONFIG"]) == config_file
    gateway_log = tmp_path / "gateway.log"
    gateway = await asyncio.create_subprocess_exec(
        *argv, cwd="/", env=env, stdout=gateway_log.open("wb"), stderr=asyncio.subprocess.STDOUT,
    )

    policies_mount = next(m for m in gateway_spec["volumeMounts"] if m["mountPath"] == rendered_gateway_config(docs)["authorization"]["policies"])
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    pod = Pod(
        root=root, config=config, gateway=gateway, mcp_server=mcp_server, url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        probes={"readiness": gateway_spec["readinessProbe"], "liveness": gateway_spec["livenessProbe"]},
        pre_stop=gateway_spec.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0),
        policies_dir=mounts[policies_mount["mountPath"]],
        policy_files=volume_files(docs, volumes[policies_mount["name"]]),
        logs=[gateway_log, mcp_log],
    )
    try:
        await wait_for_port(mcp_port, mcp_server, "the MCP server")
        for probe_spec in pod.probes.values():
            assert probe_spec["httpGet"]["port"] == "admin"  # the named port: the admin listener (O1)
    except BaseException:
        await stop_pod(pod)
        raise
    return pod


async def wait_ready(pod: Pod) -> None:
    """Poll /readyz as the kubelet does (scaled period) until it passes, as a rollout would wait."""
    readiness = pod.probes["readiness"]
    period = readiness.get("periodSeconds", 10) * SCALE
    for _ in range(int(15 / period)):
        if pod.gateway.returncode is not None:
            raise AssertionError(f"the gateway exited with {pod.gateway.returncode}\n{pod.log_text()}")
        if await probe(pod.probe_url("readiness"), readiness["httpGet"]["path"]) == 200:
            assert await probe(pod.probe_url("liveness"), pod.probes["liveness"]["httpGet"]["path"]) == 200
            return
        await asyncio.sleep(period)
    raise AssertionError(f"the gateway never became ready\n{pod.log_text()}")


async def stop_pod(pod: Pod) -> None:
    for process in (pod.gateway, pod.mcp_server):
        if process.returncode is None:
            process.kill()
        await process.wait()


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[len(b"data: "):]) for line in body.splitlines() if line.startswith(b"data: ")]


async def test_e3_sidecar_sigterm_during_a_streamed_tool_call_drains_and_exits_0(tmp_path, issuer):
    pod = await start_pod(tmp_path, issuer)
    try:
        await wait_ready(pod)
        readiness = pod.probes["readiness"]
        period = readiness.get("periodSeconds", 10) * SCALE
        token = issuer.mint(aud=pod.config["server"]["public_url"], scope=" ".join(pod.config["auth"]["required_scopes"]))
        call_body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "countdown", "arguments": {"n": 10}, "_meta": {"progressToken": "p1"}}}
        async with aiohttp.ClientSession(headers=bearer(token)) as http:
            # The countdown streams one progress event every 0.2 s for 2 s, then the result.
            call = await http.post(f"{pod.url}/mcp", json=call_body, headers={"Accept": "application/json, text/event-stream"})
            assert call.status == 200, await call.text()
            assert call.headers["Content-Type"].startswith("text/event-stream")
            body = await asyncio.wait_for(call.content.readuntil(b"\r\n\r\n"), 5)  # the SDK ends SSE lines in CRLF

            # The pod is deleted: the kubelet runs the preStop sleep, then sends SIGTERM; it keeps probing.
            await asyncio.sleep(pod.pre_stop * SCALE)
            assert b"Liftoff" not in body, "SIGTERM must arrive while the call is still streaming"
            pod.gateway.send_signal(signal.SIGTERM)
            after_sigterm: list[int | None] = []

            async def kubelet() -> None:
                while pod.gateway.returncode is None:
                    await asyncio.sleep(period)
                    after_sigterm.append(await probe(pod.probe_url("readiness"), readiness["httpGet"]["path"]))

            prober = asyncio.create_task(kubelet())
            body += await asyncio.wait_for(call.content.read(), 10)
            exit_code = await asyncio.wait_for(pod.gateway.wait(), 30)
            await prober

        messages = sse_messages(body)
        assert [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"] == list(range(1, 11))
        result = messages[-1]
        assert result["id"] == 1 and result["result"]["content"][0]["text"] == "Liftoff! Counted down from 10.", messages
        assert exit_code == 0, pod.log_text()
        # Readiness never passed again once SIGTERM arrived (a refused connection counts as not ready).
        assert after_sigterm and 200 not in after_sigterm, after_sigterm
        assert await probe(pod.probe_url("liveness"), pod.probes["liveness"]["httpGet"]["path"]) is None  # the gateway is gone
        # The MCP server outlives the gateway's drain (its own preStop sleep is longer).
        assert pod.mcp_server.returncode is None
        logs = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
        assert any(line.get("message") == "stopped" for line in logs), pod.log_text()
    finally:
        await stop_pod(pod)


async def test_z2_sidecar_policy_configmap_update_applies_without_restart(tmp_path, issuer):
    pod = await start_pod(tmp_path, issuer)
    try:
        await wait_ready(pod)
        token = issuer.mint(aud=pod.config["server"]["public_url"], scope=" ".join(pod.config["auth"]["required_scopes"]))
        echo = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}

        async with aiohttp.ClientSession(headers=bearer(token)) as http:
            async def call_echo() -> int:
                async with http.post(f"{pod.url}/mcp", json=echo, headers={"Accept": "application/json, text/event-stream"}) as response:
                    await response.read()
                    return response.status

            async def metric(name: str) -> str:
                async with http.get(f"{pod.admin_url}/metrics") as response:
                    return "\n".join(line for line in (await response.text()).splitlines() if line.startswith(name))

            async def eventually(check, what: str) -> None:
                for _ in range(100):
                    if await check():
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{what}\n{pod.log_text()}")

            assert await call_echo() == 200  # everyone may call read-only tools

            # kubectl apply of the policies ConfigMap with one more file: the kubelet swaps ..data in place.
            forbid = b'@id("no-echo")\nforbid (principal, action == Action::"tools/call", resource == Tool::"echo");\n'
            write_atomic_dir(pod.policies_dir, {**pod.policy_files, "no-echo.cedar": forbid})

            async def echo_forbidden() -> bool:
                return await call_echo() == 403

            await eventually(echo_forbidden, "the updated policies were not applied")
            assert 'result="applied"} 1.0' in await metric("mcp_gateway_policy_reloads_total")
            assert await metric("mcp_gateway_policy_version") == "mcp_gateway_policy_version 2.0"

            # A broken update is refused; the set in force stays, and so does readiness.
            write_atomic_dir(pod.policies_dir, {**pod.policy_files, "no-echo.cedar": forbid, "broken.cedar": b"permit (oops"})

            async def refused() -> bool:
                return 'result="refused"} 1.0' in await metric("mcp_gateway_policy_reloads_total")

            await eventually(refused, "the broken policies were not refused")
            assert await call_echo() == 403
            assert await probe(pod.probe_url("readiness"), pod.probes["readiness"]["httpGet"]["path"]) == 200
        assert pod.gateway.returncode is None, "hot reload, not a restart"
    finally:
        await stop_pod(pod)

