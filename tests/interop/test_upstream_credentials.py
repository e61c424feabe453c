"""U2 against a real authorization server (oidc-provider): client credentials and RFC 8693 token exchange.

The gateway runs in-process in front of a recording upstream; its credentials come from oidc-provider.
The upstream must see exactly the configured credential and never the client's token.
"""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import pytest

from tests.factories import RESOURCE

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def client_token(authorization_server, client_id: str = "gateway-test-opaque", secret: str = "gateway-secret", *, jwt_client: str | None = None) -> str:
    """A client's access token for the gateway's resource (JWT from gateway-test, opaque from -opaque)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.token_endpoint, data={
            "grant_type": "client_credentials", "resource": RESOURCE, "scope": "mcp",
        }, headers={"Authorization": aiohttp.encode_basic_auth(jwt_client or client_id, secret)}) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["access_token"]


@pytest.fixture
def oauth_gateway(start_gateway, authorization_server, upstream):
    async def start(auth: dict):
        return await start_gateway(upstream.url, authenticated=False, auth={
            "issuers": [{"issuer": authorization_server.issuer}],
            "introspection": {"client_id": "gateway-introspect", "client_secret": "introspect-secret"},
        }, upstream={"auth": auth})
    return start


async def call_all(client, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.post("/mcp", json=INIT, headers=headers)
    assert response.status == 200, await response.text()
    session = {"Mcp-Session-Id": response.headers["Mcp-Session-Id"]}
    assert (await client.get("/mcp", headers={**headers, **session, "Accept": "text/event-stream"})).status == 200
    assert (await client.delete("/mcp", headers={**headers, **session})).status == 200


async def test_u2_client_credentials_token_from_real_as_is_sent_and_reused(oauth_gateway, authorization_server, upstream):
    client = await oauth_gateway({
        "type": "client_credentials", "token_endpoint": authorization_server.token_endpoint,
        "client_id": "gateway-test", "client_secret": "gateway-secret", "scope": "mcp", "resource": upstream.url,
    })
    token = await client_token(authorization_server, jwt_client="gateway-test")
    await call_all(client, token)
    presented = {r.headers["Authorization"] for r in upstream.received}
    assert len(presented) == 1  # one gateway token, reused across POST, GET and DELETE
    gateway_token = presented.pop().removeprefix("Bearer ")
    assert gateway_token != token and token not in str([r.headers for r in upstream.received])
    claims = claims_of(gateway_token)
    assert claims["aud"] == upstream.url and claims["sub"] == "gateway-test" and claims["iss"] == authorization_server.issuer
    endpoint = client.gateway.token_endpoint
    assert endpoint.calls == 1
    # Shortly before expiry it is refreshed: move the credential's clock past the token's lifetime.
    client.gateway.credential.clock = lambda: time.monotonic() + 7200
    await client.post("/mcp", json=INIT, headers={"Authorization": f"Bearer {token}"})
    assert endpoint.calls == 2


async def test_u2_token_exchange_sends_the_exchanged_token_and_caches_it_per_client_token(oauth_gateway, authorization_server, upstream):
    client = await oauth_gateway({
        "type": "token_exchange", "token_endpoint": authorization_server.token_endpoint,
        "client_id": "gateway-test", "client_secret": "gateway-secret", "resource": upstream.url, "scope": "mcp",
    })
    first = await client_token(authorization_server, jwt_client="gateway-test")
    await call_all(client, first)
    exchanged = {r.headers["Authorization"].removeprefix("Bearer ") for r in upstream.received}
    assert len(exchanged) == 1
    [upstream_token] = exchanged
    claims = claims_of(upstream_token)
    assert claims["aud"] == upstream.url
    assert claims["sub"] == claims_of(first)["sub"]  # the caller, not the gateway
    assert claims["act"] == {"sub": "gateway-test"}
    assert first not in str([r.headers for r in upstream.received])
    assert client.gateway.token_endpoint.calls == 1  # cached under the client token's hash

    second = await client_token(authorization_server)  # another client token (opaque, introspected)
    await client.post("/mcp", json=INIT, headers={"Authorization": f"Bearer {second}"})
    assert client.gateway.token_endpoint.calls == 2
    assert second not in str([r.headers for r in upstream.received])


async def test_u2_token_exchange_refused_by_the_as_is_502(oauth_gateway, authorization_server, upstream):
    client = await oauth_gateway({
        "type": "token_exchange", "token_endpoint": authorization_server.token_endpoint,
        "client_id": "gateway-test", "client_secret": "wrong-secret", "resource": upstream.url,
    })
    token = await client_token(authorization_server, jwt_client="gateway-test")
    response = await client.post("/mcp", json=INIT, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 502
    assert "WWW-Authenticate" not in response.headers
    assert upstream.received == []


# -- the real SDK client and server, across POST, GET (SSE) and DELETE ----------------------------------------


@pytest.mark.parametrize("kind", ["static", "client_credentials", "token_exchange"])
async def test_u2_sdk_server_sees_only_the_configured_credential_on_every_method(
    kind, aiohttp_server, make_config, authorization_server, recording_upstream, tmp_path,
):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from gateway.app import Gateway
    from tests.conftest import free_port

    port = free_port()
    public_url = f"http://127.0.0.1:{port}/mcp"
    auth = {"static": {"type": "static", "value": "Bearer static-upstream-key"},
            "client_credentials": {"type": "client_credentials", "client_id": "gateway-test", "client_secret": "gateway-secret",
                                   "token_endpoint": authorization_server.token_endpoint, "resource": recording_upstream.url},
            "token_exchange": {"type": "token_exchange", "client_id": "gateway-test", "client_secret": "gateway-secret",
                               "token_endpoint": authorization_server.token_endpoint, "resource": recording_upstream.url}}[kind]
    config = make_config(recording_upstream.url, server={"public_url": public_url},
                         auth={"issuers": [{"issuer": authorization_server.issuer}]}, upstream={"auth": auth})
    gateway = Gateway(config)
    await aiohttp_server(gateway.create_app(), port=port)

    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.token_endpoint, data={"grant_type": "client_credentials", "resource": public_url, "scope": "mcp"},
                             headers={"Authorization": aiohttp.encode_basic_auth("gateway-test", "gateway-secret")}) as response:
            client_token = (await response.json())["access_token"]

    already = len(recording_upstream.requests())
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {client_token}"}, timeout=30) as http:
        async with streamable_http_client(public_url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                result = await session.call_tool("countdown", {"n": 2})  # progress over SSE
                assert result.content[0].text == "liftoff"
    seen = recording_upstream.requests()[already:]
    assert {"POST", "DELETE"} <= {r["method"] for r in seen}
    credentials = {tuple(r["headers"].get("authorization", [])) for r in seen}
    assert len(credentials) == 1
    [(credential,)] = credentials
    if kind == "static":
        assert credential == "Bearer static-upstream-key"
    else:
        claims = claims_of(credential.removeprefix("Bearer "))
        assert claims["aud"] == recording_upstream.url
        assert ("act" in claims) == (kind == "token_exchange")
    assert client_token not in json.dumps(seen)
