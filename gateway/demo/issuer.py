"""A DEVELOPMENT token issuer for the demo and the tests.

    ########################################################################################
    #  DEMONSTRATION ONLY. NOT AN AUTHORIZATION SERVER. NEVER EXPOSE IT, NEVER TRUST IT.    #
    #  There is no real authentication: every password is the user name, anyone who can     #
    #  reach the token endpoint gets a token for any demo user, and the signing keys live   #
    #  in memory and die with the process.                                                   #
    ########################################################################################

Owns the demo's users (``DemoUser``), two signing keys made at construction (RSA-2048 for RS256, the
default, and EC P-256 for ES256; each ``kid`` is the key's RFC 7638 JWK thumbprint), and an aiohttp app:

- ``GET /.well-known/oauth-authorization-server`` and ``/.well-known/openid-configuration``: RFC 8414
  metadata advertising only what is implemented (the password grant, no authorization endpoint);
- ``GET /jwks``: the public keys;
- ``POST /token``: RFC 6749 §4.3 resource owner password grant, with RFC 8707 ``resource``, answering
  RFC 9068 JWT access tokens (``typ: at+jwt``).

The issuer identifier is only known once a port is bound, so the app is built by
``create_app(issuer_url)``, which also fixes the identifier for ``mint``. Bind the port first (or pick
a free one), then create the app. ``mint`` signs a token directly, without HTTP, for tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

CLIENT_ID: Final = "demo-cli"
TOKEN_LIFETIME: Final = 3600  # /token: long enough to follow the walkthrough at leisure
JWKS_MAX_AGE: Final = 300
NO_STORE: Final = MappingProxyType({"Cache-Control": "no-store", "Pragma": "no-cache"})  # RFC 6749 §5.1

Algorithm = Literal["RS256", "ES256"]
TokenErrorCode = Literal[
    "invalid_request", "invalid_client", "invalid_grant", "unsupported_grant_type", "invalid_scope", "invalid_target",
]

# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS: Final = MappingProxyType({"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")})


@dataclass(frozen=True, slots=True)
class DemoUser:
    groups: tuple[str, ...]
    scopes: tuple[str, ...]
    email: str


DEMO_USERS: Final[Mapping[str, DemoUser]] = MappingProxyType({
    "alice": DemoUser(groups=("admins",), scopes=("mcp", "mcp.admin"), email="alice@example.com"),
    "bob": DemoUser(groups=("engineering",), scopes=("mcp",), email="bob@example.com"),
    "carol": DemoUser(groups=(), scopes=("mcp",), email="carol@example.com"),
})


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace; base64url without padding."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    alg: Algorithm
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public_jwk: Mapping[str, Any]  # with kid, use and alg

    @property
    def kid(self) -> str:
        return self.public_jwk["kid"]

    @classmethod
    def generate(cls, alg: Algorithm) -> SigningKey:
        if alg == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        jwk.update(kid=jwk_thumbprint(jwk), use="sig", alg=alg)
        return cls(alg, private, MappingProxyType(jwk))


class TokenError(Exception):
    """An RFC 6749 §5.2 error answer of the token endpoint."""

    def __init__(self, error: TokenErrorCode, description: str, status: int = 400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> web.Response:
        body = {"error": self.error, "error_description": self.description}
        return web.json_response(body, status=self.status, headers=NO_STORE)


def _issuer_identifier(issuer_url: str) -> str:
    """RFC 8414 §2: https (http allowed on loopback for the demo), no query, no fragment; served at the root."""
    parts = urlsplit(issuer_url)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"issuer_url must be https, or http on a loopback address: {issuer_url!r}")
    if parts.query or parts.fragment or parts.path not in {"", "/"}:
        raise ValueError(f"issuer_url must be an origin without path, query or fragment: {issuer_url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _is_resource_indicator(value: str) -> bool:
    """RFC 8707 §2: an absolute URI without a fragment."""
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and not parts.fragment and "#" not in value


class DemoIssuer:
    """Demo users, signing keys and the issuer's HTTP endpoints. DEMONSTRATION ONLY (see the module docstring).

    ``resource`` is the default audience of every token (the gateway's public MCP URL). ``clock`` gives
    the time in seconds, so tests can mint tokens in the past or the future.
    """

    def __init__(
        self,
        *,
        resource: str,
        users: Mapping[str, DemoUser] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not _is_resource_indicator(resource):
            raise ValueError(f"resource must be an absolute URI without fragment: {resource!r}")
        self.resource = resource
        self.users: Mapping[str, DemoUser] = MappingProxyType(dict(DEMO_USERS if users is None else users))
        self.clock = clock
        self.keys: Mapping[Algorithm, SigningKey] = MappingProxyType({
            "RS256": SigningKey.generate("RS256"),
            "ES256": SigningKey.generate("ES256"),
        })
        self._issuer_url: str | None = None

    @property
    def issuer_url(self) -> str:
        """The issuer identifier (``iss``); set by ``create_app``."""
        if self._issuer_url is None:
            raise RuntimeError("DemoIssuer.create_app(issuer_url) must be called before the issuer URL is known")
        return self._issuer_url

    @property
    def scopes_supported(self) -> list[str]:
        return sorted({scope for user in self.users.values() for scope in user.scopes})

    # --- tokens ----------------------------------------------------------------------------------------

    def mint(
        self,
        username: str,
        *,
        scopes: Iterable[str] | str | None = None,
        audience: str | Iterable[str] | None = None,
        lifetime: int = 300,
        algorithm: Algorithm = "RS256",
        **overrides: Any,
    ) -> str:
        """An RFC 9068 access token for ``username``, signed with the ``algorithm`` key.

        ``scopes`` (a list or a space-separated string) defaults to all the user's scopes and is not
        checked against them, so tests can mint what ``/token`` would refuse. ``audience`` defaults to
        ``resource``. Each of ``overrides`` replaces a claim; ``None`` removes it (``exp=None``).
        """
        user = self.users.get(username)
        if user is None:
            raise KeyError(f"no demo user {username!r}; the demo users are {', '.join(self.users)}")
        if scopes is None:
            scopes = user.scopes
        elif isinstance(scopes, str):
            scopes = scopes.split()
        if audience is None:
            audience = self.resource
        elif not isinstance(audience, str):
            audience = list(audience)
            audience = audience[0] if len(audience) == 1 else audience
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "sub": username,
            "aud": audience,
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": CLIENT_ID,
            "scope": " ".join(scopes),
            "groups": list(user.groups),
            "email": user.email,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self.keys[algorithm]
        # RFC 9068 §2.1: typ "at+jwt" tells access tokens apart from ID tokens.
        return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})

    # --- documents -------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 §2 metadata. Only what is implemented: no authorization endpoint, so no response types."""
        issuer = self.issuer_url
        return {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/jwks",
            "token_endpoint": f"{issuer}/token",
            "grant_types_supported": ["password"],
            "response_types_supported": [],
            "scopes_supported": self.scopes_supported,
            "token_endpoint_auth_methods_supported": ["none"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(key.public_jwk) for key in self.keys.values()]}

    # --- HTTP ------------------------------------------------------------------------------------------

    def create_app(self, issuer_url: str) -> web.Application:
        """The issuer's aiohttp app, served at the root of ``issuer_url`` (e.g. ``http://127.0.0.1:8081``).

        Fixes the issuer identifier: calling it again with a different URL raises ``ValueError``.
        """
        identifier = _issuer_identifier(issuer_url)
        if self._issuer_url not in (None, identifier):
            raise ValueError(f"this issuer is already {self._issuer_url}; one issuer has one identifier")
        self._issuer_url = identifier
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", self._serve_metadata)
        app.router.add_get("/.well-known/openid-configuration", self._serve_metadata)
        app.router.add_get("/jwks", self._serve_jwks)
        app.router.add_post("/token", self._serve_token)
        return app

    async def _serve_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.metadata())

    async def _serve_jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks(), headers={"Cache-Control": f"max-age={JWKS_MAX_AGE}"})

    async def _serve_token(self, request: web.Request) -> web.Response:
        try:
            token, scopes = await self._grant(request)
        except TokenError as exc:
            return exc.response()
        body = {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "scope": " ".join(scopes)}
        return web.json_response(body, headers=NO_STORE)

    async def _grant(self, request: web.Request) -> tuple[str, tuple[str, ...]]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise TokenError("invalid_request", "the body must be application/x-www-form-urlencoded")
        form = await request.post()
        # RFC 6749 §3.2: parameters are not repeated; RFC 8707 §2 lets resource be.
        for name in set(form) - {"resource"}:
            if len(form.getall(name)) > 1:
                raise TokenError("invalid_request", f"{name} is repeated")
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise TokenError("invalid_request", "grant_type is missing")
        if grant_type != "password":
            raise TokenError("unsupported_grant_type", "this demo issuer only implements grant_type=password")
        client_id = form.get("client_id", CLIENT_ID)
        if client_id != CLIENT_ID:
            raise TokenError("invalid_client", f"the only client is {CLIENT_ID}")
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise TokenError("invalid_request", "username and password are required")
        user = self.users.get(username)
        # DEMONSTRATION ONLY: the password is the user name.
        if user is None or not secrets.compare_digest(password.encode(), username.encode()):
            raise TokenError("invalid_grant", "unknown user or wrong password (the demo password is the user name)")
        scope = form.get("scope")
        scopes = tuple(dict.fromkeys(scope.split())) if isinstance(scope, str) and scope.strip() else user.scopes
        refused = [name for name in scopes if name not in user.scopes]
        if refused:
            raise TokenError("invalid_scope", f"{username} may not have {' '.join(refused)}")
        resources = [value for value in form.getall("resource", []) if isinstance(value, str)]
        for resource in resources:
            if not _is_resource_indicator(resource):
                raise TokenError("invalid_target", "resource must be an absolute URI without fragment (RFC 8707)")
        audience = resources or None
        return self.mint(username, scopes=scopes, audience=audience, lifetime=TOKEN_LIFETIME), scopes
