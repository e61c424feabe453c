"""O6 against a real authorization server (oidc-provider): ``private_key_jwt`` (RFC 7523) wherever the gateway
authenticates to it (client credentials and token exchange for the upstream, introspection), and the
gateway's ``/.well-known/jwks.json`` as the client's ``jwks_uri``.

Each test registers its own client by dynamic registration, with ``token_endpoint_auth_method:
private_key_jwt`` and ``jwks_uri`` pointing at the gateway it is about to start: oidc-provider fetches the
gateway's published keys to verify its client assertions, so the JWKS is proven usable by a real consumer.
"""

from __future__ import annotations

import json

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.interop.test_upstream_credentials import INIT, claims_of

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")


def write_key(path, key) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(path)


async def register(authorization_server, **metadata) -> str:
    """Dynamic client registration (RFC 7591) of a private_key_jwt client; its client_id."""
    body = {"token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials", TOKEN_EXCHANGE],
            "response_types": [], "redirect_uris": [], **metadata}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{authorization_server.issuer}/reg", json=body) as response:
            answer = await response.json()
            assert response.status == 201, answer
            assert answer["token_endpoint_auth_method"] == "private_key_jwt"
            return answer["client_id"]


@pytest.fixture
def served_gateway(aiohttp_server, make_config, authorization_server, upstream):
    """A gateway in this process on a port chosen first (its JWKS URL goes into the registration)."""
    from gateway.app import Gateway
    from tests.conftest import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def start(*, auth: dict | None = None, introspection: dict | None = None, identity_key: str | None = None):
        upstream_section: dict = {"auth": auth or {"type": "none"}}
        if identity_key:
            upstream_section["identity_assertion"] = {"key_file": identity_key}
        auth_section: dict = {"issuers": [{"issuer": authorization_server.issuer}]}
        if introspection:
            auth_section["introspection"] = introspection
        config = make_config(upstream.url, server={"public_url": f"{base}/mcp"}, auth=auth_section, upstream=upstream_section)
        gateway = Gateway(config)
        await aiohttp_server(gateway.create_app(), port=port)
        return gateway

    start.base = base
    start.jwks_uri = f"{base}/.well-known/jwks.json"
    return start


async def client_token(authorization_server, resource: str, client_id: str = "gateway-test") -> str:
    """A caller's token for the gateway (a JWT from gateway-test, an opaque one from gateway-test-opaque)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.token_endpoint, data={"grant_type": "client_credentials", "resource": resource, "scope": "mcp"},
                             headers={"Authorization": aiohttp.encode_basic_auth(client_id, "gateway-secret")}) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["access_token"]


async def post(url: str, token: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=INIT, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            return response


async def test_O6_client_credentials_with_private_key_jwt_from_the_gateways_own_jwks(served_gateway, authorization_server, upstream, tmp_path):
    client_id = await register(authorization_server, jwks_uri=served_gateway.jwks_uri)
    key = write_key(tmp_path / "client-key.pem", ec.generate_private_key(ec.SECP256R1()))
    gateway = await served_gateway(auth={
        "type": "client_credentials", "token_endpoint": authorization_server.token_endpoint, "client_id": client_id,
        "auth_method": "private_key_jwt", "private_key_file": key, "scope": "mcp", "resource": upstream.url})
    token = await client_token(authorization_server, f"{served_gateway.base}/mcp")
    response = await post(f"{served_gateway.base}/mcp", token)
    assert response.status == 200
    [presented] = {r.headers["Authorization"] for r in upstream.received}
    claims = claims_of(presented.removeprefix("Bearer "))
    assert claims["client_id"] == client_id and claims["aud"] == upstream.url
    assert gateway.token_endpoint.calls == 1
    # A second assertion (new jti) is accepted too: refresh past the token's lifetime.
    import time
    gateway.credential.clock = lambda: time.monotonic() + 7200
    assert (await post(f"{served_gateway.base}/mcp", token)).status == 200
    assert gateway.token_endpoint.calls == 2


async def test_O6_token_exchange_and_introspection_with_private_key_jwt(served_gateway, authorization_server, upstream, tmp_path):
    client_id = await register(authorization_server, jwks_uri=served_gateway.jwks_uri)
    key = write_key(tmp_path / "client-key.pem", ed25519.Ed25519PrivateKey.generate())
    gateway = await served_gateway(
        auth={"type": "token_exchange", "token_endpoint": authorization_server.token_endpoint, "client_id": client_id,
              "auth_method": "private_key_jwt", "private_key_file": key, "resource": upstream.url,
              "assertion_audience": authorization_server.issuer},  # rfc7523bis: the issuer identifier
        introspection={"client_id": client_id, "auth_method": "private_key_jwt", "private_key_file": key})
    opaque = await client_token(authorization_server, f"{served_gateway.base}/mcp", "gateway-test-opaque")  # opaque: introspected with a client assertion
    assert opaque.count(".") != 2
    response = await post(f"{served_gateway.base}/mcp", opaque)
    assert response.status == 200
    assert gateway.introspector.calls == 1 and gateway.token_endpoint.calls == 1
    [presented] = {r.headers["Authorization"] for r in upstream.received}
    claims = claims_of(presented.removeprefix("Bearer "))
    assert claims["act"] == {"sub": client_id} and claims["aud"] == upstream.url
    assert opaque not in json.dumps([dict(r.headers) for r in upstream.received])


async def test_O6_an_assertion_signed_with_another_key_is_refused_by_the_as(served_gateway, authorization_server, upstream, tmp_path):
    registered = ec.generate_private_key(ec.SECP256R1())
    from gateway.auth.keys import SigningKey

    jwk = SigningKey.from_pem(registered.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption())).public_jwk()
    client_id = await register(authorization_server, jwks={"keys": [jwk]})
    other = write_key(tmp_path / "other-key.pem", ec.generate_private_key(ec.SECP256R1()))
    gateway = await served_gateway(introspection={"client_id": client_id, "auth_method": "private_key_jwt", "private_key_file": other})
    response = await post(f"{served_gateway.base}/mcp", await client_token(authorization_server, f"{served_gateway.base}/mcp", "gateway-test-opaque"))
    assert response.status == 503  # the verifier is unavailable to us: never a 401 for the client
    assert gateway.introspector.calls == 1 and upstream.received == []


async def test_O6_jwks_publishes_the_public_keys_only(served_gateway, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    identity = write_key(tmp_path / "identity.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    client = write_key(tmp_path / "client.pem", ec.generate_private_key(ec.SECP384R1()))
    gateway = await served_gateway(identity_key=identity, introspection={
        "client_id": "gw", "auth_method": "private_key_jwt", "private_key_file": client, "endpoint": "http://127.0.0.1:9/introspect"})
    async with aiohttp.ClientSession() as http:
        async with http.get(served_gateway.jwks_uri) as response:
            assert response.status == 200 and response.content_type == "application/json"
            text = await response.text()
    keys = json.loads(text)["keys"]
    assert [(k["kty"], k["alg"], k["use"]) for k in keys] == [("RSA", "RS256", "sig"), ("EC", "ES384", "sig")]
    for jwk in keys:
        assert not set(PRIVATE_MEMBERS) & set(jwk), jwk
    # The identity assertion names its key by kid, and verifies with the published key.
    [assertion_source] = [i for i in gateway.endpoint.forwarder.identity]
    from gateway.auth.principal import Principal

    assertion = assertion_source.sign(Principal(issuer="https://idp", subject="alice", entity_id="alice", client_id="c", scopes=frozenset({"mcp"})))
    header = jwt.get_unverified_header(assertion)
    published = jwt.PyJWKSet.from_dict({"keys": keys})[header["kid"]]
    assert jwt.decode(assertion, published.key, algorithms=["RS256"], audience=gateway.config.upstream.url)["sub"] == "alice"
