"""Who is calling: the ``Principal`` that a verified token (or an introspection answer) yields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

TokenKind = Literal["jwt", "introspected"]

# Claims that become attributes of their own; everything else is kept in `claims` (shared/design/cedar.md).
STANDARD_CLAIMS = frozenset({"sub", "iss", "client_id", "azp", "scope", "scp"})
# Where identity providers put the OAuth client's id: RFC 9068 client_id, OIDC azp, Okta cid, Entra v1 appid.
CLIENT_ID_CLAIMS = ("client_id", "azp", "cid", "appid")


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    issuer: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    token_type: TokenKind = "jwt"
    expires_at: float | None = None


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """T10: ``scope`` is space-separated (RFC 9068 §2.2.3, RFC 7662 §2.2); ``scp`` is an array (Entra, Okta)."""
    scopes: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        scopes.update(scope.split())
    elif isinstance(scope, list):
        scopes.update(s for s in scope if isinstance(s, str))
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        scopes.update(scp.split())
    return frozenset(scopes)


def principal_from_claims(claims: Mapping[str, Any], *, token_type: TokenKind) -> Principal:
    client_id = next((claims[c] for c in CLIENT_ID_CLAIMS if isinstance(claims.get(c), str) and claims[c]), "")
    exp = claims.get("exp")
    return Principal(
        issuer=str(claims.get("iss", "")),
        subject=str(claims.get("sub", "")),
        client_id=client_id if isinstance(client_id, str) else "",
        scopes=scopes_of(claims),
        claims=MappingProxyType({k: v for k, v in claims.items() if k not in STANDARD_CLAIMS}),
        token_type=token_type,
        expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
    )
