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
