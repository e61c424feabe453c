"""The gateway's own credentials and identity towards the upstream (U1-U3), over real sockets."""

from __future__ import annotations

import asyncio
import os

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.factories import RESOURCE, bearer
from tests.upstreams import status

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


async def send_all_methods(client, token: str) -> None:
    """POST (opening a session), GET (the SSE stream) and DELETE, as an MCP client does."""
    response = await client.post("/mcp", json=INIT, headers=bearer(token))
    session = {"Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
    await client.get("/mcp", headers={**bearer(token), **session, "Accept": "text/event-stream"})
    await client.delete("/mcp", headers={**bearer(token), **session})


async def test_u2_static_credential_replaces_the_client_token_on_every_method(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, upstream={"auth": {"type": "static", "value": "Bearer upstream-secret"}})
    token = issuer.mint()
    await send_all_methods(client, token)
    assert [r.method for r in upstream.received] == ["POST", "GET", "DELETE"]
    for received in upstream.received:
        assert received.headers.getall("Authorization") == ["Bearer upstream-secret"]
        assert token not in str(received.headers)


async def test_u2_static_credential_in_another_header(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, upstream={"auth": {"type": "static", "header": "X-Api-Key", "value": "k-123"}})
    await client.post("/mcp", json=INIT, headers=bearer(issuer.mint()))
    received = upstream.received[0].headers
    assert received["X-Api-Key"] == "k-123" and "Authorization" not in received


async def test_u2_static_value_file_is_reread_when_it_changes(upstream, start_gateway, issuer, tmp_path):
    secret = tmp_path / "upstream-token"
    secret.write_text("Bearer first\n")
    client = await start_gateway(upstream.url, authenticated=False, upstream={"auth": {"type": "static", "value_file": str(secret)}})
    token = issuer.mint()
    await client.post("/mcp", json=INIT, headers=bearer(token))
    secret.write_text("Bearer second\n")  # a rotated Kubernetes Secret
    os.utime(secret, ns=(1, 10**18))
    await asyncio.sleep(1.1)
    await client.post("/mcp", json=INIT, headers=bearer(token))
    assert [r.headers["Authorization"] for r in upstream.received] == ["Bearer first", "Bearer second"]


async def test_u2_no_credential_means_no_authorization_header(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False)
    await client.post("/mcp", json=INIT, headers=bearer(issuer.mint()))
    assert "Authorization" not in upstream.received[0].headers


async def test_u3_identity_headers_carry_claims_and_cannot_be_spoofed(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, upstream={"identity_headers": {
        "X-MCP-Subject": "sub", "X-MCP-Client": "client_id", "X-MCP-Groups": "groups", "X-MCP-Scopes": "scope"}})
    await client.post("/mcp", json=INIT, headers={
        **bearer(issuer.mint(sub="alice", client_id="cli", groups=["eng", "ops"], scope="mcp mcp.read")),
        "X-MCP-Subject": "admin", "x-mcp-groups": "admins"})
    received = upstream.received[0].headers
    assert received.getall("X-MCP-Subject") == ["alice"]
    assert received.getall("X-MCP-Groups") == ["eng,ops"]
    assert received["X-MCP-Client"] == "cli" and received["X-MCP-Scopes"] == "mcp mcp.read"


async def test_u3_identity_header_values_cannot_inject_lines(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, upstream={"identity_headers": {"X-MCP-Name": "name"}})
    await client.post("/mcp", json=INIT, headers=bearer(issuer.mint(name="eve\r\nX-Admin: true")))
    received = upstream.received[0].headers
    assert received["X-MCP-Name"] == "eveX-Admin: true" and "X-Admin" not in received


@pytest.fixture
def assertion_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "assertion-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key, path


async def test_u3_identity_assertion_verifies_with_the_gateway_key_and_names_the_caller(upstream, start_gateway, issuer, assertion_key):
    key, path = assertion_key
    client = await start_gateway(upstream.url, authenticated=False, upstream={"identity_assertion": {"key_file": str(path), "ttl": "60s"}})
    token = issuer.mint(sub="alice", client_id="cli", scope="mcp")
    await client.post("/mcp", json=INIT, headers={**bearer(token), "X-MCP-Identity": "forged"})
    [assertion] = upstream.received[0].headers.getall("X-MCP-Identity")
    assert assertion != "forged"
    claims = jwt.decode(assertion, key.public_key(), algorithms=["ES256"], audience=upstream.url, issuer=RESOURCE)
    assert claims["sub"] == "alice" and claims["client_id"] == "cli" and claims["scope"] == "mcp"
    assert claims["subject_issuer"] == issuer.url
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(assertion)["typ"] == "mcp-identity+jwt"
    assert token not in str(upstream.received[0].headers)


async def test_u4_upstream_challenge_about_gateway_credential_is_502(upstream, start_gateway, issuer):
    upstream.behaviour = status(401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    client = await start_gateway(upstream.url, authenticated=False, upstream={"auth": {"type": "static", "value": "Bearer stale"}})
    response = await client.post("/mcp", json=INIT, headers=bearer(issuer.mint()))
    assert response.status == 502
    assert "WWW-Authenticate" not in response.headers


async def test_u2_unreachable_token_endpoint_is_502_not_401(upstream, start_gateway, issuer):
    from tests.conftest import free_port

    client = await start_gateway(upstream.url, authenticated=False, upstream={"auth": {
        "type": "client_credentials", "token_endpoint": f"http://127.0.0.1:{free_port()}/token",
        "client_id": "gw", "client_secret": "s"}})
    response = await client.post("/mcp", json=INIT, headers=bearer(issuer.mint()))
    assert response.status == 502
    assert "WWW-Authenticate" not in response.headers
    assert upstream.received == []
