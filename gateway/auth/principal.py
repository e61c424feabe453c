"""Who is calling: the ``Principal`` that a verified token (or an introspection answer) yields.

I7: principals from different issuers are different principals. With one configured issuer the Cedar
principal is ``User::"<sub>"``; with several it is ``User::"<issuer name>/<sub>"`` (shared/design/cedar.md),
so the same ``sub`` from two identity providers never shares static entities, policies or cached
decisions. ``Principal.entity_id`` is that id; ``subject`` and ``issuer`` stay the raw claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway.config import IssuerConfig

TokenKind = Literal["jwt", "introspected"]

# Claims that become attributes of their own; everything else is kept in `claims` (shared/design/cedar.md).
STANDARD_CLAIMS = frozenset({"sub", "iss", "client_id", "azp", "scope", "scp"})
# Where identity providers put the OAuth client's id: RFC 9068 client_id, OIDC azp, Okta cid, Entra v1 appid.
CLIENT_ID_CLAIMS = ("client_id", "azp", "cid", "appid")


@dataclass(frozen=True, slots=True, kw_only=True, weakref_slot=True)  # (weak: Authorizer's digests never keep one alive)
class Principal:
    issuer: str
    subject: str
    entity_id: str  # the Cedar principal's id: principal_id(subject, the issuer's namespace)
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


def principal_id(subject: str, namespace: str | None) -> str:
    """I7: ``<sub>`` with one issuer, ``<namespace>/<sub>`` with several. A namespace (an issuer's name) has
    no ``/``, so the first ``/`` always ends it: ``corp/x/y`` is sub ``x/y`` from corp, nobody else."""
    return subject if namespace is None else f"{namespace}/{subject}"


def principal_namespaces(issuers: Sequence[IssuerConfig]) -> dict[str, str | None]:
    """Issuer URL → the namespace of its principals: ``None`` for a lone issuer (its name, if any, is not
    used: cedar.md keeps ``User::"<sub>"``), else its configured ``name``.

    The configuration loader already refuses several issuers without names; this refuses them again for
    configurations built in code, because a missing name would merge two issuers' principals.
    """
    if len(issuers) == 1:
        return {issuers[0].issuer: None}
    namespaces: dict[str, str | None] = {}
    for index, issuer in enumerate(issuers):
        if not issuer.name or "/" in issuer.name or issuer.name in namespaces.values():
            raise ValueError(f"auth.issuers[{index}].name: a unique name without '/' is required when several issuers are configured (I7)")
        namespaces[issuer.issuer] = issuer.name
    return namespaces


def principal_namespace(issuers: Sequence[IssuerConfig], claims: Mapping[str, Any]) -> str | None:
    """I7, for tools that start from claims rather than a verified token (``policy explain``, ``policy
    test``): the namespace the gateway would give the principal, chosen by the claims' ``iss`` when several
    issuers are configured. ``ValueError`` when ``iss`` then names none of them."""
    namespaces = principal_namespaces(issuers)
    if len(namespaces) == 1:
        return None
    issuer = claims.get("iss")
    if isinstance(issuer, str) and issuer in namespaces:
        return namespaces[issuer]
    raise ValueError(f"iss {str(issuer)[:100]!r} is not one of auth.issuers; with several issuers it decides the principal id")


def principal_from_claims(claims: Mapping[str, Any], *, token_type: TokenKind, namespace: str | None = None) -> Principal:
    """The caller a verified token (or introspection answer) names. ``namespace``: its issuer's, for I7."""
    client_id = next((claims[c] for c in CLIENT_ID_CLAIMS if isinstance(claims.get(c), str) and claims[c]), "")
    exp = claims.get("exp")
    subject = str(claims.get("sub", ""))
    return Principal(
        issuer=str(claims.get("iss", "")),
        subject=subject,
        entity_id=principal_id(subject, namespace),
        client_id=client_id if isinstance(client_id, str) else "",
        scopes=scopes_of(claims),
        claims=MappingProxyType({k: v for k, v in claims.items() if k not in STANDARD_CLAIMS}),
        token_type=token_type,
        expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
    )
