"""The gateway's own signing keys (U3, O6): loaded from PEM, each with its algorithm and key id, and the JWKS
that publishes their public halves at ``/.well-known/jwks.json``.

Two uses: the identity assertion the upstream verifies (``gateway.upstream.identity``) and the client
assertion (``private_key_jwt``, RFC 7523) the gateway authenticates to the authorization server with
(``gateway.auth.client_auth``). A published JWK is built from the *public* key object, so a private member
(``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``) cannot appear in it, whatever the library would export.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

MIN_RSA_BITS = 2048
# RFC 7517 §4: what a public JWK may carry here; anything else (a private member above all) is left out.
PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"), "OKP": ("kty", "crv", "x")}


def algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:  # NIST SP 800-131A: shorter RSA keys are not for signing any more
            raise ValueError(f"an RSA key needs at least {MIN_RSA_BITS} bits, this one has {key.key_size}")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("the key must be an RSA, EC (P-256/384/521) or Ed25519 private key")


def key_id(public_key: Any) -> str:
    """22 characters: base64url of the first 16 bytes of SHA-256 over the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return jwt.utils.base64url_encode(hashlib.sha256(der).digest()[:16]).decode()


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: Any  # a cryptography private key object; never logged (no repr)
    algorithm: str
    kid: str

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Raises ``ValueError`` for anything but an unencrypted RSA, EC or Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError("not an unencrypted PEM private key") from exc
        return cls(key, algorithm_for(key), key_id(key.public_key()))

    def public_jwk(self) -> dict[str, str]:
        """RFC 7517 public JWK with ``kid``, ``alg`` and ``use: sig``."""
        public = self.private.public_key()
        exporter = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}
        kty = "RSA" if self.algorithm.startswith("RS") else "EC" if self.algorithm.startswith("ES") else "OKP"
        exported = json.loads(exporter[kty].to_jwk(public))
        jwk = {member: exported[member] for member in PUBLIC_MEMBERS[kty]}
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any], *, typ: str) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"typ": typ, "kid": self.kid})


def jwks_document(keys: Iterable[SigningKey]) -> bytes:
    """The JWKS (RFC 7517 §5) of ``keys``, each key once."""
    unique = {key.kid: key.public_jwk() for key in keys}
    return json.dumps({"keys": list(unique.values())}, indent=2).encode()
