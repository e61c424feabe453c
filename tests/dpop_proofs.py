"""A DPoP client for tests (RFC 9449 §4.2): a key pair and the proofs it signs with PyJWT.

``DpopKey.proof(...)`` makes a good proof by default; every argument exists so a test can make one bad
thing about it (``htm="GET"``, ``iat=now - 600``, ``header={"alg": "none"}``...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.factories import b64url, unsigned_token


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638, written out independently of the gateway's."""
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    text = "{" + ",".join(f'"{name}":"{jwk[name]}"' for name in members) + "}"
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


@dataclass
class DpopKey:
    alg: str
    private: Any

    @classmethod
    def ec(cls) -> DpopKey:
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def rsa(cls, bits: int = 2048) -> DpopKey:
        return cls("RS256", rsa.generate_private_key(public_exponent=65537, key_size=bits))

    def public_jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        return json.loads(algorithm.to_jwk(self.private.public_key()))

    def private_jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        return json.loads(algorithm.to_jwk(self.private))

    @property
    def jkt(self) -> str:
        return thumbprint(self.public_jwk())

    def claims(self, *, htm: str, htu: str, token: str | None, **overrides: Any) -> dict[str, Any]:
        claims = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token is not None:
            claims["ath"] = ath(token)
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def proof(self, htu: str, token: str | None = None, *, htm: str = "POST", header: dict[str, Any] | None = None,
              signer: DpopKey | None = None, **claims: Any) -> str:
        """A proof signed by ``signer`` (default: this key) carrying this key's public jwk."""
        headers = {"typ": "dpop+jwt", "jwk": self.public_jwk()}
        headers.update(header or {})
        headers = {k: v for k, v in headers.items() if v is not None}
        signer = signer or self
        alg = headers.pop("alg", signer.alg)
        body = self.claims(htm=htm, htu=htu, token=token, **claims)
        if alg == "none":
            return unsigned_token({"alg": "none", **headers}, body)
        if alg.startswith("HS"):
            return jwt.encode(body, secrets.token_bytes(32), algorithm=alg, headers=headers)
        return jwt.encode(body, signer.private, algorithm=alg, headers=headers)


def dpop_headers(token: str, proof: str | None) -> dict[str, str]:
    headers = {"Authorization": f"DPoP {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return headers
