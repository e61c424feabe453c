"""The demo as a user meets it: ``mcp-auth-gateway demo``'s parts on free 127.0.0.1 ports, its printed
walkthrough run command by command, and MCP clients through the gateway; then the demo issuer on its own.

The MCP server behind the gateway is the MCP Python SDK's (gateway/demo/mcp_server.py): these tests check
the demo's catalogue and wiring, not the SDK's protocol handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import jwt
import pytest
from aiohttp.test_utils import TestClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.demo.issuer import DemoIssuer, DemoUser, jwk_thumbprint
from gateway.demo.run import DemoUrls, running_demo, walkthrough
from tests.conftest import free_port

RESOURCE = "https://mcp.example.com/mcp"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
TOOLS = ["echo", "add", "get_time", "delete_records", "countdown"]
MODES = ["legacy", "2026-07-28"]  # the SDK client's initialize handshake (2025-11-25), and stateless 2026-07-28


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a text/event-stream body (the SDK writes one ``data:`` line per event)."""
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


# --- the demo's parts --------------------------------------------------------------------------------------

@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[DemoUrls]:
    """What ``mcp-auth-gateway demo`` starts, in this test's loop; audit events to a file, not stdout."""
    async with running_demo(free_port(), audit_file=tmp_path / "audit.jsonl") as urls:
        yield urls


async def token_for(demo: DemoUrls, user: str) -> str:
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": "password", "username": user, "password": user}
        async with http.post(f"{demo.issuer}/token", data=form) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["access_token"]


@contextlib.asynccontextmanager
async def sdk_client(demo: DemoUrls, user: str, mode: str) -> AsyncIterator[Client]:
    """The MCP Python SDK client at the gateway's URL, with a token for ``user`` from the demo issuer."""
    token = await token_for(demo, user)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(f"{demo.gateway}/mcp", http_client=http), mode=mode) as client:
            yield client


# --- the walkthrough, run as printed -----------------------------------------------------------------------

@dataclass
class Step:
    number: int
    title: str
    commands: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def walkthrough_steps(text: str) -> list[Step]:
    """The numbered steps and their command lines (continuations joined; ``#`` lines are comments)."""
    steps: list[Step] = []
    for line in text.replace("\\\n", " ").splitlines():
        if heading := re.fullmatch(r"  (\d+)\. (.+)", line):
            steps.append(Step(int(heading[1]), heading[2]))
        elif steps and line.startswith("     ") and not line.lstrip().startswith("#"):
            steps[-1].commands.append(line.strip())
    return steps


class Shell:
    """Runs the few shell forms the walkthrough prints, with aiohttp standing in for curl.

    ``NAME=$(...)``, ``NAME='...'``, ``$NAME`` in arguments, pipes into ``python3 -c`` (run for real, with
    this interpreter), and curl with -s -i -N -X -H -d -w. Anything else fails the test: the walkthrough
    printed something this runner, and maybe a user's shell, cannot follow.
    """

    def __init__(self, http: aiohttp.ClientSession):
        self.http = http
        self.env: dict[str, str] = {}

    async def run(self, line: str) -> str:
        if assignment := re.fullmatch(r"(\w+)=\$\((.*)\)", line):
            self.env[assignment[1]] = (await self.run(assignment[2])).strip()
            return ""
        words = shlex.split(line)
        if len(words) == 1 and (assignment := re.fullmatch(r"(\w+)=(.*)", words[0], re.S)):
            self.env[assignment[1]] = assignment[2]
            return ""
        output = ""
        for part in line.split(" | "):
            argv = [re.sub(r"\$(\w+)", lambda m: self.env[m[1]], word) for word in shlex.split(part)]
            if argv[0] == "curl":
                output = await self.curl(argv[1:])
            elif argv[:2] == ["python3", "-c"] and len(argv) == 3:
                output = await self.python(argv[2], output)
            else:
                raise AssertionError(f"the walkthrough prints a command this test cannot run: {part}")
        return output

    async def curl(self, args: list[str]) -> str:
        method, headers, data, include, write_out, url = None, {}, [], False, "", None
        words = iter(args)
        for word in words:
            if word in ("-s", "-N"):
                continue
            elif word == "-i":
                include = True
            elif word == "-X":
                method = next(words)
            elif word == "-H":
                name, value = next(words).split(": ", 1)
                headers[name] = value
            elif word == "-d":
                data.append(next(words))
            elif word == "-w":
                write_out = next(words).replace("\\n", "\n")
            elif not word.startswith("-") and url is None:
                url = word
            else:
                raise AssertionError(f"curl option not understood here: {word}")
        if data and "Content-Type" not in headers:
            headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
        body = "&".join(data).encode() if data else None
        async with self.http.request(method or ("POST" if data else "GET"), url, data=body, headers=headers) as response:
            text = await response.text()
            head = ""
            if include:
                lines = [f"HTTP/1.1 {response.status} {response.reason}"]
                lines += [f"{name}: {value}" for name, value in response.headers.items()]
                head = "\r\n".join(lines) + "\r\n\r\n"
            return head + text + write_out.replace("%{http_code}", str(response.status))

    async def python(self, code: str, stdin: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate(stdin.encode())
        assert process.returncode == 0, err.decode()
        return out.decode()


def tool_lines(output: str) -> dict[str, list[str]]:
    """Step 6's output: tool name -> [title words..., true annotations...]."""
    return {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}


async def test_every_walkthrough_command_gives_what_its_step_says(demo):
    steps = walkthrough_steps(walkthrough(demo.gateway, demo.issuer))
    assert [step.number for step in steps] == list(range(1, 10))
    async with aiohttp.ClientSession() as http:
        shell = Shell(http)
        for step in steps:
            for command in step.commands:
                step.outputs.append(await shell.run(command))
    s = {step.number: step for step in steps}

    # 1. No token: 401 and a challenge that points at the metadata.
    [challenge] = s[1].outputs
    assert challenge.startswith("HTTP/1.1 401 ")
    prm_url = f"{demo.gateway}/.well-known/oauth-protected-resource/mcp"
    assert f'WWW-Authenticate: Bearer resource_metadata="{prm_url}"' in challenge
    assert prm_url in s[2].commands[0]

    # 2. The PRM names the gateway's MCP URL and the demo issuer.
    metadata = json.loads(s[2].outputs[0])
    assert metadata["resource"] == f"{demo.gateway}/mcp" and metadata["authorization_servers"] == [demo.issuer]

    # 3. Tokens for bob and alice.
    for name in ("bob", "alice"):
        assert jwt.decode(shell.env[name.upper()], options={"verify_signature": False})["sub"] == name

    # 4. Allowed: bob's echo, answered as an SSE event.
    [answer] = sse_messages(s[4].outputs[0])
    assert answer["id"] == 2 and answer["result"]["content"] == [{"type": "text", "text": "hello"}]
    assert answer["result"]["isError"] is False

    # 5. Denied: bob's delete_records, 403.
    body, status = s[5].outputs[0].rstrip("\n").rsplit("\n", 1)
    assert status == "HTTP 403" and json.loads(body)["id"] == 3 and "error" in json.loads(body)
    assert "(HTTP 403)" in s[5].title

    # 6. The tool lists differ, with titles and the annotations that are true.
    bob, alice = (tool_lines(output) for output in s[6].outputs if output)  # after the TOOLS= assignment
    assert list(bob) == [name for name in TOOLS if name != "delete_records"]
    assert list(alice) == TOOLS
    assert alice["delete_records"] == ["Delete", "records", "destructiveHint", "idempotentHint"]
    assert alice["echo"] == ["Echo", "idempotentHint", "readOnlyHint"]
    assert "readOnlyHint" in alice["countdown"] and "destructiveHint" not in alice["countdown"]

    # 7. alice may delete from logs; the forbid on prod_* stops even her.
    [deleted] = sse_messages(s[7].outputs[0])
    assert re.fullmatch(r"deleted \d+ records from logs", deleted["result"]["content"][0]["text"])
    body, status = s[7].outputs[1].rstrip("\n").rsplit("\n", 1)
    assert status == "HTTP 403" and json.loads(body)["id"] == 7
    assert "prod_orders" in s[7].commands[1] and "(HTTP 403)" in s[7].title

    # 8. Progress over SSE: five progress events, then the result.
    messages = sse_messages(s[8].outputs[0])
    assert [m["params"]["progress"] for m in messages[:-1]] == [1, 2, 3, 4, 5]
    assert {m["method"] for m in messages[:-1]} == {"notifications/progress"}
    assert messages[-1]["result"]["content"][0]["text"] == "Liftoff! Counted down from 5."

    # 9. The resource.
    [read] = sse_messages(s[9].outputs[0])
    [contents] = read["result"]["contents"]
    assert contents["uri"] == "demo://readme" and "demo MCP server" in contents["text"]


def test_the_walkthrough_names_the_running_parts():
    text = walkthrough("http://127.0.0.1:8123", "http://127.0.0.1:9123")
    assert "gateway (the MCP endpoint): http://127.0.0.1:8123/mcp" in text
    assert "DEMONSTRATION ONLY" in text and "http://127.0.0.1:9123/token" in text


# --- the demo server, as MCP clients see it through the gateway --------------------------------------------

@pytest.mark.parametrize("mode", MODES)
async def test_the_tool_list_has_titles_and_annotations_and_follows_the_policies(demo, mode):
    async with sdk_client(demo, "alice", mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    async with sdk_client(demo, "bob", mode) as client:
        bobs = [tool.name for tool in (await client.list_tools()).tools]
    assert list(tools) == TOOLS and bobs == [name for name in TOOLS if name != "delete_records"]
    hints = {name: (t.title, t.annotations.title, t.annotations.read_only_hint, t.annotations.destructive_hint,
                    t.annotations.idempotent_hint, t.annotations.open_world_hint) for name, t in tools.items()}
    assert hints == {
        "echo": ("Echo", "Echo", True, False, True, False),
        "add": ("Add two integers", "Add two integers", True, False, True, False),
        "get_time": ("Current time", "Current time", True, False, True, False),
        "delete_records": ("Delete records", "Delete records", False, True, True, False),
        "countdown": ("Countdown", "Countdown", True, False, True, False),
    }
    assert tools["echo"].input_schema["required"] == ["text"]
    assert tools["countdown"].input_schema["properties"]["n"].items() >= {"minimum": 1, "maximum": 10, "default": 3}.items()


@pytest.mark.parametrize("mode", MODES)
async def test_bob_may_call_read_only_tools_and_not_delete_records(demo, mode):
    async with sdk_client(demo, "bob", mode) as client:
        assert (await client.call_tool("echo", {"text": "hello"})).content[0].text == "hello"
        assert (await client.call_tool("add", {"a": 2, "b": 40})).structured_content == {"result": 42}
        with pytest.raises(MCPError, match="Forbidden"):
            await client.call_tool("delete_records", {"table": "logs", "confirm": True})


async def test_alice_may_delete_records_but_not_from_prod_tables(demo):
    async with sdk_client(demo, "alice", "legacy") as client:
        deleted = await client.call_tool("delete_records", {"table": "logs", "confirm": True})
        assert not deleted.is_error and deleted.content[0].text.endswith(" records from logs")
        unconfirmed = await client.call_tool("delete_records", {"table": "logs", "confirm": False})
        assert unconfirmed.is_error and "pass confirm: true" in unconfirmed.content[0].text
        with pytest.raises(MCPError, match="Forbidden"):
            await client.call_tool("delete_records", {"table": "prod_orders", "confirm": True})


@pytest.mark.parametrize("mode", MODES)
async def test_countdown_progress_reaches_the_client_through_the_gateway(demo, mode):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with sdk_client(demo, "bob", mode) as client:
        result = await client.call_tool("countdown", {"n": 3}, progress_callback=on_progress)
    assert result.content[0].text == "Liftoff! Counted down from 3."
    assert progress == [(1, 3, "3..."), (2, 3, "2..."), (3, 3, "1...")]


async def test_countdown_events_are_relayed_as_they_happen_not_buffered(demo):
    token = await token_for(demo, "bob")
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "countdown", "arguments": {"n": 5}, "_meta": {"progressToken": "p"}}}
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{demo.gateway}/mcp", json=call, headers={**JSON_HEADERS, "Authorization": f"Bearer {token}"}) as response:
            assert response.content_type == "text/event-stream"
            first = await response.content.readuntil(b"\r\n\r\n")  # the SDK ends SSE lines with CRLF
            first_at = time.monotonic() - started
            rest = await response.read()
    elapsed = time.monotonic() - started
    assert sse_messages(first.decode())[0]["params"]["progress"] == 1
    assert len(sse_messages((first + rest).decode())) == 6
    # The countdown takes 5 x 0.2 s; its first event arrives long before the end.
    assert elapsed >= 1.0 and first_at < elapsed - 0.5


@pytest.mark.parametrize("mode", MODES)
async def test_the_resource_and_the_prompt(demo, mode):
    async with sdk_client(demo, "bob", mode) as client:
        [resource] = (await client.list_resources()).resources
        assert (resource.uri, resource.name, resource.title, resource.mime_type) == \
            ("demo://readme", "readme", "About this demo", "text/plain")
        [contents] = (await client.read_resource("demo://readme")).contents
        assert "demo MCP server of mcp-auth-gateway" in contents.text
        [prompt] = (await client.list_prompts()).prompts
        assert (prompt.name, prompt.title, [a.name for a in prompt.arguments]) == ("summarize", "Summarize", ["text"])
        message = (await client.get_prompt("summarize", {"text": "MCP is a protocol."})).messages[0]
        assert message.role == "user" and "MCP is a protocol." in message.content.text


async def test_the_mcp_server_keeps_the_sdks_dns_rebinding_protection(demo):
    """Directly, a foreign Host or a browser Origin is refused; the gateway still gets through (it sends
    the upstream's Host and no Origin), as every other test here shows."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with aiohttp.ClientSession() as http:
        async with http.post(demo.upstream, json=body, headers={**JSON_HEADERS, "Host": "evil.example"}) as response:
            assert response.status == 421
        async with http.post(demo.upstream, json=body, headers={**JSON_HEADERS, "Origin": "http://evil.example"}) as response:
            assert response.status == 403


async def test_leaving_the_demo_closes_all_three_ports(tmp_path):
    async with running_demo(free_port(), audit_file=tmp_path / "audit.jsonl") as urls:
        pass
    for url in (urls.gateway, urls.issuer, urls.upstream):
        host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")])
async def test_the_demo_command_stops_cleanly_on_a_signal(sig):
    port = free_port()
    program = Path(sys.executable).parent / "mcp-auth-gateway"
    process = await asyncio.create_subprocess_exec(
        str(program), "demo", "--port", str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        seen = b""
        while b"Ctrl-C stops everything" not in seen:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, f"the demo exited before printing its walkthrough:\n{seen.decode()}"
            seen += line
        async with aiohttp.ClientSession() as http:  # the demo answers before it is stopped
            async with http.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp") as response:
                assert response.status == 200
        process.send_signal(sig)
        rest = await asyncio.wait_for(process.stderr.read(), 15)
        assert await process.wait() == 0, rest.decode()
        assert b"Traceback" not in rest, rest.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- the demo issuer -------------------------------------------------------------------------------------

@dataclass
class ServedIssuer:
    issuer: DemoIssuer
    http: TestClient  # bound to the issuer's port


@pytest.fixture
async def served(aiohttp_client) -> ServedIssuer:
    """The issuer on a real port, chosen before the app is made: the issuer URL is part of the app."""
    issuer = DemoIssuer(resource=RESOURCE)
    port = free_port()
    http = await aiohttp_client(issuer.create_app(f"http://127.0.0.1:{port}"), server_kwargs={"port": port})
    return ServedIssuer(issuer, http)


async def verify(served: ServedIssuer, token: str, *, audience: str = RESOURCE) -> dict[str, Any]:
    """Checks ``token`` as a resource server would: keys from the served JWKS, RFC 9068 typ."""
    keys = jwt.PyJWKSet.from_dict(await (await served.http.get("/jwks")).json())
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = keys[header["kid"]]
    return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience, issuer=served.issuer.issuer_url,
                      options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})


async def test_issuer_metadata_advertises_only_what_is_implemented(served):
    url = served.issuer.issuer_url
    oauth = await (await served.http.get("/.well-known/oauth-authorization-server")).json()
    oidc = await (await served.http.get("/.well-known/openid-configuration")).json()
    assert oauth == oidc
    assert oauth["issuer"] == url and oauth["jwks_uri"] == f"{url}/jwks" and oauth["token_endpoint"] == f"{url}/token"
    assert oauth["grant_types_supported"] == ["password"]
    assert oauth["response_types_supported"] == []
    assert "authorization_endpoint" not in oauth
    assert oauth["scopes_supported"] == ["mcp", "mcp.admin"]
    assert oauth["token_endpoint_auth_methods_supported"] == ["none"]


async def test_jwks_has_rsa_and_ec_keys_named_by_thumbprint_and_is_cacheable(served):
    response = await served.http.get("/jwks")
    assert response.headers["Cache-Control"] == "max-age=300"
    keys = (await response.json())["keys"]
    assert sorted((k["kty"], k["alg"], k["use"]) for k in keys) == [("EC", "ES256", "sig"), ("RSA", "RS256", "sig")]
    for key in keys:
        assert key["kid"] == jwk_thumbprint(key)
        assert "d" not in key  # public parts only


def test_jwk_thumbprint_matches_rfc_7638_example():
    # RFC 7638 §3.1's example key and its thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
             "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
             "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_token_endpoint_issues_an_rfc_9068_token_that_verifies_against_the_jwks(served):
    response = await served.http.post("/token", data={"grant_type": "password", "username": "alice", "password": "alice"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "mcp mcp.admin" and body["expires_in"] > 0
    claims = await verify(served, body["access_token"])
    assert claims["sub"] == "alice" and claims["aud"] == RESOURCE and claims["client_id"] == "demo-cli"
    assert claims["scope"] == "mcp mcp.admin" and claims["groups"] == ["admins"] and claims["email"] == "alice@example.com"
    assert claims["nbf"] == claims["iat"] and claims["exp"] == claims["iat"] + body["expires_in"]
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "RS256"


async def test_token_endpoint_narrows_scope_and_honours_resource(served):
    other = "https://other.example.com/mcp"
    response = await served.http.post("/token", data={
        "grant_type": "password", "username": "alice", "password": "alice", "scope": "mcp", "resource": other,
    })
    body = await response.json()
    assert body["scope"] == "mcp"
    claims = await verify(served, body["access_token"], audience=other)
    assert claims["aud"] == other and claims["scope"] == "mcp"


@pytest.mark.parametrize(("form", "status", "error"), [
    ({"grant_type": "password", "username": "bob", "password": "alice"}, 400, "invalid_grant"),
    ({"grant_type": "password", "username": "mallory", "password": "mallory"}, 400, "invalid_grant"),
    ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
    ({"grant_type": "password", "username": "bob", "password": "bob", "scope": "mcp mcp.admin"}, 400, "invalid_scope"),
    ({"grant_type": "password", "username": "bob", "password": "bob", "resource": "mcp#frag"}, 400, "invalid_target"),
    ({"username": "bob", "password": "bob"}, 400, "invalid_request"),
])
async def test_token_endpoint_errors_follow_rfc_6749(served, form, status, error):
    response = await served.http.post("/token", data=form)
    assert response.status == status
    assert (await response.json())["error"] == error


async def test_mint_defaults_to_the_users_scopes_and_the_resource(served):
    claims = await verify(served, served.issuer.mint("carol"))
    assert claims["scope"] == "mcp" and claims["groups"] == [] and claims["exp"] - claims["iat"] == 300


async def test_mint_with_es256_verifies_with_the_ec_key(served):
    token = served.issuer.mint("bob", algorithm="ES256", scopes="mcp extra", audience=["a://x", RESOURCE])
    claims = await verify(served, token)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims["scope"] == "mcp extra" and claims["aud"] == ["a://x", RESOURCE]


def test_mint_overrides_replace_and_remove_claims():
    issuer = DemoIssuer(resource=RESOURCE, users={"dave": DemoUser(groups=("ops",), scopes=("mcp",), email="d@example.com")}, clock=lambda: 1_000)
    issuer.create_app("http://127.0.0.1:9")
    token = issuer.mint("dave", lifetime=60, jti=None, email="x@example.com")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "jti" not in claims and claims["email"] == "x@example.com"
    assert (claims["iat"], claims["exp"], claims["groups"]) == (1_000, 1_060, ["ops"])
    with pytest.raises(KeyError):
        issuer.mint("alice")


def test_mint_needs_the_issuer_url_and_the_url_is_fixed_once():
    issuer = DemoIssuer(resource=RESOURCE)
    with pytest.raises(RuntimeError):
        issuer.mint("alice")
    issuer.create_app("http://127.0.0.1:9/")
    assert issuer.issuer_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError):
        issuer.create_app("http://127.0.0.1:10")
    with pytest.raises(ValueError):
        DemoIssuer(resource=RESOURCE).create_app("http://example.com")
