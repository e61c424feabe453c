"""Z1: the Cedar request for one MCP message, built exactly as shared/design/cedar.md promises policy authors.

    principal  User::"<sub>"      attrs sub, iss, client_id, scopes, claims; parents Group::"<value>"
               (User::"<issuer name>/<sub>" with several issuers: Principal.entity_id, spec I7)
    action     Action::"<method>" the method as sent (other letter case is another, unknown, action)
    resource   Tool / Prompt / Resource::"<name or uri>" (parent Server), else Server::"<resource.name>"
    context    arguments, method, token_type, listing

Pure functions: a ``Principal`` and a ``Message`` in, plain dicts (Cedar JSON) out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.auth.principal import Principal
from gateway.mcp.jsonrpc import Message

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1

# Which entity type a method acts on, and the params key naming it.
RESOURCE_OF_METHOD = {
    "tools/call": ("Tool", "name"),
    "prompts/get": ("Prompt", "name"),
    "resources/read": ("Resource", "uri"),
    "resources/subscribe": ("Resource", "uri"),
    "resources/unsubscribe": ("Resource", "uri"),
}

def uid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": entity_type, "id": entity_id}


def cedar_value(value: Any) -> Any:
    """cedar.md's conversion: str, bool and 64-bit integers stay; other numbers become strings; lists become
    sets; objects records. ``None`` is dropped. Keys starting with ``__`` are dropped, because Cedar JSON
    reads ``__entity`` and ``__extn`` as entity references and extension values: a tool argument must not
    be able to smuggle an entity reference into a policy's context.
    """
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if LONG_MIN <= value <= LONG_MAX else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # 1.0 and 1e0 are the number 1 to every JSON reader the upstream may use, so they are a Long here
        # too; otherwise `forbid ... when { context.arguments.account == 1 }` could be dodged with 1.0.
        if value.is_integer() and LONG_MIN <= value <= LONG_MAX:
            return int(value)
        return str(value)
    if isinstance(value, list):
        return [converted for item in value if (converted := cedar_value(item)) is not None]
    if isinstance(value, Mapping):
        return {
            str(key): converted
            for key, item in value.items()
            if not str(key).startswith("__") and (converted := cedar_value(item)) is not None
        }
    return None


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """``realm_access.roles`` → ``claims["realm_access"]["roles"]``; a top-level key with dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def group_names(principal: Principal, group_claims: Iterable[str]) -> list[str]:
    names: list[str] = []
    for path in group_claims:
        value = claim_at(principal.claims, path)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        names.extend(v for v in values if isinstance(v, str) and v not in names)
    return names


def principal_entity(principal: Principal, group_claims: Iterable[str]) -> dict[str, Any]:
    return {
        "uid": uid("User", principal.entity_id),  # I7: issuer-qualified with several issuers
        "attrs": {
            "sub": principal.subject,
            "iss": principal.issuer,
            "client_id": principal.client_id,
            "scopes": sorted(principal.scopes),
            "claims": cedar_value(dict(principal.claims)),
        },
        "parents": [uid("Group", name) for name in group_names(principal, group_claims)],
    }


def resource_uid(message: Message, server: str) -> dict[str, str]:
    if message.method == "completion/complete" and message.name is not None:
        # cedar.md: decided against the prompt or resource it completes an argument of (params.ref).
        return uid("Prompt" if message.params["ref"]["type"] == "ref/prompt" else "Resource", message.name)
    kind = RESOURCE_OF_METHOD.get(message.method or "")
    if kind is not None:
        value = message.params.get(kind[1])
        if isinstance(value, str):
            return uid(kind[0], value)
        # A tools/call without a usable name is judged as a call on the server itself.
    return uid("Server", server)


def context_of(message: Message, principal: Principal, *, listing: bool = False) -> dict[str, Any]:
    arguments = message.params.get("arguments") if message.method in ("tools/call", "prompts/get") else None
    return {
        "arguments": cedar_value(arguments) if isinstance(arguments, Mapping) else {},
        "method": message.method or "",
        "token_type": principal.token_type,
        "listing": listing,
    }


def merge_entity(static: Mapping[str, Any] | None, built: dict[str, Any]) -> dict[str, Any]:
    """cedar.md: attributes and parents from entities.json are kept, not replaced, when a request builds the
    same entity. The request adds attributes the file does not have, and its parents."""
    if static is None:
        return built
    attrs = dict(built.get("attrs", {}))
    attrs.update(static.get("attrs", {}))
    parents = list(static.get("parents", []))
    parents.extend(p for p in built.get("parents", []) if p not in parents)
    return {"uid": built["uid"], "attrs": attrs, "parents": parents}
