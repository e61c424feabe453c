"""O6: the gateway's client authentication to the authorization server, its keys and their configuration.
The real authorization server's side is in tests/interop/test_private_key_jwt.py."""

from __future__ import annotations

import base64

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.client_auth import CLIENT_ASSERTION_TYPE, ClientAuthentication
from gateway.auth.keys import SigningKey, jwks_document
from gateway.config import ConfigError, parse_config

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


KEYS = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES512": lambda: ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("alg", KEYS)
def test_O6_published_jwk_has_kid_alg_use_and_no_private_member(alg):
    key = SigningKey.from_pem(pem(KEYS[alg]()))
    jwk = key.public_jwk()
    assert jwk["alg"] == alg and jwk["use"] == "sig" and jwk["kid"] == key.kid
    assert not PRIVATE_MEMBERS & set(jwk)
    assert "PRIVATE" not in repr(key) and "private" not in jwks_document([key]).decode().lower()
    # The published key verifies what the private key signs.
    token = key.sign({"sub": "x"}, typ="JWT")
    assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg])["sub"] == "x"


def test_O6_short_rsa_keys_and_other_curves_are_refused():
    for weak in (rsa.generate_private_key(public_exponent=65537, key_size=1024), ec.generate_private_key(ec.SECP256K1())):
        with pytest.raises(ValueError):
            SigningKey.from_pem(pem(weak))


def test_O6_jwks_lists_a_key_used_twice_once():
    key = SigningKey.from_pem(pem(KEYS["ES256"]()))
    assert jwks_document([key, key]).count(key.kid.encode()) == 1


def test_O6_private_key_jwt_assertion_claims():
    key = SigningKey.from_pem(pem(KEYS["ES256"]()))
    auth = ClientAuthentication(client_id="mcp-gateway", method="private_key_jwt", key=key, clock=lambda: 1_000_000)
    form, headers = {"grant_type": "client_credentials"}, {}
    auth.apply("https://as.example.com/token", form, headers)
    assert headers == {} and "client_secret" not in form
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE and form["client_id"] == "mcp-gateway"
    claims = jwt.decode(form["client_assertion"], key.private.public_key(), algorithms=["ES256"],
                        audience="https://as.example.com/token", options={"verify_exp": False})
    assert claims["iss"] == claims["sub"] == "mcp-gateway"
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] == 1_000_000 and len(claims["jti"]) >= 20
    assert jwt.get_unverified_header(form["client_assertion"])["kid"] == key.kid
    again: dict[str, str] = {}
    auth.apply("https://as.example.com/token", again, {})
    assert jwt.decode(again["client_assertion"], options={"verify_signature": False})["jti"] != claims["jti"]


def test_O6_assertion_audience_replaces_the_endpoint():
    key = SigningKey.from_pem(pem(KEYS["EdDSA"]()))
    auth = ClientAuthentication(client_id="gw", method="private_key_jwt", key=key, audience="https://as.example.com")
    form: dict[str, str] = {}
    auth.apply("https://as.example.com/introspect", form, {})
    assert jwt.decode(form["client_assertion"], options={"verify_signature": False})["aud"] == "https://as.example.com"


def test_O6_secret_methods_unchanged():
    basic, post = ClientAuthentication(client_id="a b", method="client_secret_basic", secret="s:é"), \
        ClientAuthentication(client_id="gw", method="client_secret_post", secret="s")
    headers: dict[str, str] = {}
    basic.apply("https://as/token", {}, headers)
    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")) == b"a%20b:s%3A%C3%A9"  # RFC 6749 §2.3.1
    form: dict[str, str] = {}
    post.apply("https://as/token", form, {})
    assert form == {"client_id": "gw", "client_secret": "s"}


# -- configuration ---------------------------------------------------------------------------------------


def config(tmp_path, *, upstream_auth=None, introspection=None):
    (tmp_path / "p.cedar").write_text("permit (principal, action, resource);\n")
    data = {"server": {"public_url": "https://gw.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "p.cedar"}}
    if upstream_auth:
        data["upstream"]["auth"] = upstream_auth
    if introspection:
        data["auth"]["introspection"] = introspection
    return parse_config(data, source="gateway.yaml", base_dir=tmp_path)


def problems(tmp_path, **sections) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, **sections)
    return caught.value.problems


CC = {"type": "client_credentials", "token_endpoint": "https://idp.example.com/token", "client_id": "gw"}


def test_O6_private_key_jwt_configuration_loads_the_key(tmp_path):
    (tmp_path / "key.pem").write_bytes(pem(KEYS["ES256"]()))
    loaded = config(tmp_path, upstream_auth={**CC, "auth_method": "private_key_jwt", "private_key_file": "key.pem",
                                             "assertion_audience": "https://idp.example.com"},
                    introspection={"client_id": "gw", "auth_method": "private_key_jwt", "private_key_file": "key.pem"})
    assert loaded.upstream.auth.private_key is not None and loaded.upstream.auth.client_secret is None
    assert loaded.upstream.auth.assertion_audience == "https://idp.example.com"
    assert loaded.auth.introspection.private_key.kid == loaded.upstream.auth.private_key.kid
    assert "BEGIN" not in repr(loaded)


def test_O6_private_key_jwt_configuration_problems_name_the_key(tmp_path):
    (tmp_path / "not-a-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    (tmp_path / "public.pem").write_bytes(KEYS["ES256"]().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    found = problems(tmp_path, upstream_auth={**CC, "auth_method": "private_key_jwt", "client_secret": "s"},
                     introspection={"client_id": "gw", "auth_method": "private_key_jwt", "private_key_file": "not-a-key.pem"})
    assert "gateway.yaml: upstream.auth.client_secret: not used with auth_method private_key_jwt" in found
    assert "gateway.yaml: upstream.auth.private_key: required (or private_key_file)" in found
    assert any(p.startswith("gateway.yaml: auth.introspection.private_key_file: not an unencrypted PEM private key") for p in found)
    assert any("auth.introspection.private_key_file" in p for p in problems(
        tmp_path, introspection={"client_id": "gw", "auth_method": "private_key_jwt", "private_key_file": "public.pem"}))
    found = problems(tmp_path, upstream_auth={**CC, "client_secret": "s", "private_key_file": "public.pem"},
                     introspection={"client_id": "gw", "client_secret": "s", "assertion_audience": "x"})
    assert "gateway.yaml: upstream.auth.private_key_file: not used with auth_method client_secret_basic" in found
    assert "gateway.yaml: auth.introspection.assertion_audience: not used with auth_method client_secret_basic" in found
    found = problems(tmp_path, upstream_auth={"type": "static", "value": "x", "auth_method": "private_key_jwt"})
    assert "gateway.yaml: upstream.auth.auth_method: not used with type static" in found


def test_O6_identity_assertion_key_is_checked_by_the_loader(tmp_path):
    (tmp_path / "weak.pem").write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    (tmp_path / "p.cedar").write_text("permit (principal, action, resource);\n")
    data = {"server": {"public_url": "https://gw.example.com/mcp"},
            "upstream": {"url": "http://127.0.0.1:3000/mcp", "identity_assertion": {"key_file": "weak.pem"}},
            "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "p.cedar"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="gateway.yaml", base_dir=tmp_path)
    assert caught.value.problems == [f"gateway.yaml: upstream.identity_assertion.key_file: {tmp_path / 'weak.pem'}: "
                                     "an RSA key needs at least 2048 bits, this one has 1024"]
