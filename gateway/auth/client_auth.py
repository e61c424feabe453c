"""How the gateway authenticates as an OAuth client wherever it calls the authorization server (O6): the
token endpoint (upstream client credentials and token exchange, U2) and the introspection endpoint (T9).

- ``client_secret_basic``: HTTP Basic with the id and secret form-urlencoded first (RFC 6749 §2.3.1);
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form body;
- ``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): a fresh JWT signed with the gateway's key,
  ``iss`` = ``sub`` = the client id, ``aud`` = the endpoint called (RFC 7523 §3 names the token endpoint;
  oidc-provider, Keycloak and Okta accept the endpoint's URL) unless ``assertion_audience`` says
  otherwise (draft-ietf-oauth-rfc7523bis asks for the issuer identifier), a random ``jti`` (servers
  refuse a replayed one), and a 60 s lifetime. No secret is shared with the authorization server: it
  holds the public key (registered, or fetched from the gateway's ``/.well-known/jwks.json``).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import quote

from gateway.auth.keys import SigningKey

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
CLIENT_AUTH_METHODS: tuple[ClientAuthMethod, ...] = ("client_secret_basic", "client_secret_post", "private_key_jwt")
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
ASSERTION_LIFETIME = 60  # seconds: long enough for clock skew, short enough to be useless if it leaks


class ClientAuthentication:
    """Adds the client's credentials to one request's form and headers."""

    def __init__(self, *, client_id: str, method: ClientAuthMethod, secret: str | None = None,
                 key: SigningKey | None = None, audience: str | None = None, clock: Callable[[], float] = time.time):
        if method == "private_key_jwt" and key is None:
            raise ValueError("private_key_jwt needs a private key")
        self.client_id = client_id
        self.method = method
        self.key = key
        self.audience = audience
        self.clock = clock
        self._basic = None
        if method == "client_secret_basic":
            pair = f"{quote(client_id, safe='')}:{quote(secret or '', safe='')}"
            self._basic = "Basic " + base64.b64encode(pair.encode()).decode()
        self._secret = secret or ""

    def apply(self, endpoint: str, form: dict[str, str], headers: dict[str, str]) -> None:
        """``endpoint``: the URL about to be called (the assertion's default audience)."""
        if self._basic is not None:
            headers["Authorization"] = self._basic
        elif self.method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret)
        else:
            form.update(client_id=self.client_id, client_assertion_type=CLIENT_ASSERTION_TYPE,
                        client_assertion=self.assertion(self.audience or endpoint))

    def assertion(self, audience: str) -> str:
        if self.key is None:
            raise ValueError("private_key_jwt needs a private key")
        now = int(self.clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": audience, "iat": now,
                  "exp": now + ASSERTION_LIFETIME, "jti": secrets.token_urlsafe(18)}
        return self.key.sign(claims, typ="JWT")
