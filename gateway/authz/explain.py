"""``mcp-auth-gateway policy explain``: why a request would be allowed or denied, offline.

Builds exactly the Cedar request the gateway would build for a token with the given claims sending the
given JSON-RPC message (with several issuers, the claims' ``iss`` names the issuer whose name qualifies
the principal id, spec I7), evaluates it against the configured policies, and reports the decision, the
policies that decided, any evaluation errors, the scopes involved, and the entities and context used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.auth.principal import principal_from_claims, principal_namespace
from gateway.auth.scopes import ScopeRequirements
from gateway.authz.cedar import Authorizer, PolicyStore
from gateway.config import Config
from gateway.mcp.jsonrpc import parse_body


def explain(config: Config, claims_file: Path, request_file: Path) -> dict[str, Any]:
    claims = json.loads(claims_file.read_text(encoding="utf-8"))
    if not isinstance(claims, dict):
        raise ValueError(f"{claims_file}: must be a JSON object of token claims")
    # I7: the principal id the gateway would build: qualified by the issuer's name when there are several.
    try:
        namespace = principal_namespace(config.auth.issuers, claims)
    except ValueError as exc:
        raise ValueError(f"{claims_file}: {exc}") from exc
    principal = principal_from_claims(claims, token_type="jwt", namespace=namespace)
    batch = parse_body(request_file.read_bytes(), "application/json")
    store = PolicyStore(config.authorization)
    authorizer = Authorizer(store, config.authorization, server_name=config.resource.name or "mcp")
    needed = ScopeRequirements(config.auth).needed(batch.messages)
    report: dict[str, Any] = {
        "policy_version": store.current.version,
        "scopes": {
            "needed": list(needed),
            "token_has": sorted(principal.scopes),
            "missing": [s for s in needed if s not in principal.scopes],
        },
        "messages": [],
    }
    for message in batch.messages:
        if not message.evaluated:
            report["messages"].append({"method": message.method, "kind": message.kind,
                                       "decision": "not evaluated (initialize, ping, notifications and responses pass)"})
            continue
        cedar_request = authorizer.build(principal, message)
        decision = authorizer.evaluate(cedar_request)
        report["messages"].append({
            "method": message.method,
            "decision": "allow" if decision.allowed else "deny",
            "reason": decision.reason,
            "deciding_policies": list(decision.policies),
            "errors": list(decision.errors),
            "request": cedar_request.as_request(),
            "entities": cedar_request.entities,
        })
    allowed = not report["scopes"]["missing"] and all(m["decision"] != "deny" for m in report["messages"])
    report["result"] = "allow" if allowed else "deny"
    return report
