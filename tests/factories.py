"""Keys, tokens and a test issuer, minted fresh per test (Envoy's test_common.h habit).

``TestIssuer`` is a real aiohttp server on 127.0.0.1 serving RFC 8414 metadata, a JWKS and an RFC 7662
introspection endpoint, and counting every fetch so tests can say "10 verifications, 1 key fetch".
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

RESOURCE = "https://mcp.example.com/mcp"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str = "rsa-1", alg: str = "RS256") -> SigningKey:
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "ec-1") -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def ed25519(cls, kid: str = "ed-1") -> SigningKey:
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg.startswith(("RS", "PS")):
            jwk = json.loads(RSAAlgorithm.to_jwk(public))
        elif self.alg.startswith("ES"):
            jwk = json.loads(ECAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(OKPAlgorithm.to_jwk(public))
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes no library would sign (alg none, forged headers)."""
    return ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)))


@dataclass
class TestIssuer:
    """An identity provider for tests: keys, metadata, JWKS, introspection, all on loopback."""

    __test__ = False  # not a pytest test class

    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.rsa(), SigningKey.ec()])
    url: str = ""
    jwks_fetches: int = 0
    metadata_fetches: int = 0
    introspections: int = 0
    jwks_cache_control: str = "max-age=300"
    jwks_status: int = 200
    introspection_status: int = 200
    introspection_delay: float = 0.0
    opaque_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    introspection_credentials: tuple[str, str] = ("gateway", "gateway-secret")
    last_introspection_auth: str | None = None

    # -- the server --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/introspect", self._introspect)
        return app

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks",
            "token_endpoint": f"{self.url}/token",
            "introspection_endpoint": f"{self.url}/introspect",
            "response_types_supported": ["code"],
        }

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_fetches += 1
        return web.json_response(self.metadata())

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.jwks_status != 200:
            return web.Response(status=self.jwks_status)
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]}, headers={"Cache-Control": self.jwks_cache_control})

    async def _introspect(self, request: web.Request) -> web.Response:
        import asyncio

        self.introspections += 1
        if self.introspection_delay:
            await asyncio.sleep(self.introspection_delay)
        if self.introspection_status != 200:
            return web.Response(status=self.introspection_status)
        form = await request.post()
        self.last_introspection_auth = request.headers.get("Authorization")
        client, secret = self.introspection_credentials
        basic = "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()
        if request.headers.get("Authorization") != basic and (form.get("client_id"), form.get("client_secret")) != (client, secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        answer = self.opaque_tokens.get(str(form.get("token")))
        return web.json_response(answer if answer is not None else {"active": False})

    # -- tokens ------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url, "sub": "alice", "aud": RESOURCE, "exp": now + 300, "iat": now, "nbf": now,
            "jti": secrets.token_hex(8), "client_id": "test-client", "scope": "mcp",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, *, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A signed RFC 9068 access token. ``claims`` override the defaults; a value of None removes one."""
        key = key or self.keys[0]
        header = {"typ": "at+jwt", "kid": key.kid}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.alg, headers=header)

    def mint_raw(self, payload_json: str, *, key: SigningKey | None = None, headers: dict[str, Any] | None = None) -> str:
        """A signed token whose payload is exactly ``payload_json``: for bodies ``json.dumps`` will not write
        (``1e400``, ``NaN`` spelled by hand, duplicate keys). The header is the one ``mint`` uses."""
        from jwt import api_jws

        key = key or self.keys[0]
        header = {"typ": "at+jwt", "kid": key.kid}
        header.update(headers or {})
        return api_jws.encode(payload_json.encode(), key.private, algorithm=key.alg, headers=header)

    def mint_compact(self, header: bytes, payload: bytes, *, key: SigningKey | None = None) -> str:
        """A JWS in compact form from exactly these header and payload bytes, validly signed: for headers no
        library writes (UTF-16, a BOM, duplicate members)."""
        from jwt.algorithms import get_default_algorithms

        key = key or self.keys[0]
        signing_input = f"{b64url(header)}.{b64url(payload)}"
        signature = get_default_algorithms()[key.alg].sign(signing_input.encode(), key.private)
        return f"{signing_input}.{b64url(signature)}"

    def raw_claims(self, **raw: str) -> str:
        """The default claims as JSON, with each ``name=literal`` written verbatim: ``raw_claims(exp="NaN")``
        gives ``{..., "exp": NaN, ...}``."""
        claims = self.claims(**{name: f"\x00raw:{name}" for name in raw})
        text = json.dumps(claims)
        for name, literal in raw.items():
            text = text.replace(json.dumps(f"\x00raw:{name}"), literal)
        return text

    def opaque(self, **answer: Any) -> str:
        """An opaque token whose introspection answer is ``active`` with the default claims, overridden."""
        token = secrets.token_urlsafe(32)
        body = {"active": True, **self.claims(), "token_type": "Bearer"}
        body.update(answer)
        self.opaque_tokens[token] = {k: v for k, v in body.items() if v is not None}
        return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
