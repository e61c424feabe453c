"""``mcp-auth-gateway policy explain``: why a request would be allowed or denied, offline.

Builds exactly the Cedar request the gateway would build for a token with the given claims sending the
given JSON-RPC message (with several issuers, the claims' ``iss`` names the issuer whose name qualifies
the principal id, spec I7), evaluates it against the configured policies, and reports the decision, the
policies that decided, any evaluation errors, the scopes involved, and the entities and context used.

With ``tools_list`` (a ``tools/list`` answer, or its ``tools`` array, as the upstream sends it) the tools'
annotations and titles are learned first, as the gateway learns them from the lists it relays (A1), and
each tools/call reports the learned attributes it used. With ``authorization.candidate_policies`` each
message also reports the candidate set's decision (A5).

``offline_authorizer`` and ``principal_for`` are the pieces a command needs to decide without a server
(``policy test`` uses them too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.auth.principal import Principal, principal_from_claims, principal_namespace
from gateway.auth.scopes import ScopeRequirements
from gateway.authz.cedar import Authorizer, Decision, PolicyStore
from gateway.config import Config
from gateway.mcp.jsonrpc import parse_body


def principal_for(config: Config, claims: dict[str, Any], *, where: str = "claims") -> Principal:
    """The principal the gateway builds for a token with these claims (I7: issuer-qualified id when several)."""
    try:
        namespace = principal_namespace(config.auth.issuers, claims)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return principal_from_claims(claims, token_type="jwt", namespace=namespace)


def offline_authorizer(config: Config, tools: list[Any] | None = None) -> Authorizer:
    """The gateway's Authorizer (enforced and candidate policies, tool pins) without a server; ``tools`` are
    learned as a relayed tools/list answer would be. Raises ``PolicyLoadError`` for broken policies."""
    authorizer = Authorizer(PolicyStore(config.authorization), config.authorization,
                            server_name=config.resource.name or "mcp")
    if tools:
        authorizer.catalogue.learn(tools)
    return authorizer


def tools_of(document: Any, where: str) -> list[Any]:
    """The tools of a tools/list answer (a JSON-RPC response, its result, or the tools array)."""
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        document = document["result"]
    if isinstance(document, dict):
        document = document.get("tools")
    if not isinstance(document, list):
        raise ValueError(f"{where}: not a tools/list answer (no tools array)")
    return document


def decision_report(decision: Decision) -> dict[str, Any]:
    return {"decision": "allow" if decision.allowed else "deny", "reason": decision.reason,
            "deciding_policies": list(decision.policies), "errors": list(decision.errors)}


def explain(config: Config, claims_file: Path, request_file: Path, tools_file: Path | None = None) -> dict[str, Any]:
    claims = json.loads(claims_file.read_text(encoding="utf-8"))
    if not isinstance(claims, dict):
        raise ValueError(f"{claims_file}: must be a JSON object of token claims")
    principal = principal_for(config, claims, where=str(claims_file))
    batch = parse_body(request_file.read_bytes(), "application/json")
    tools = tools_of(json.loads(tools_file.read_text(encoding="utf-8")), str(tools_file)) if tools_file else None
    authorizer = offline_authorizer(config, tools)
    store = authorizer.store
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
        decision = authorizer.decide(principal, message)
        entry: dict[str, Any] = {"method": message.method, **decision_report(decision)}
        if message.method == "tools/call" and message.name is not None:
            # A1: what the gateway learned of the tool, and which of it the policies read (and so Cedar saw).
            learned = authorizer.catalogue.attributes(message.name)
            entry["learned_tool_attributes"] = {
                "listed": learned is not None,
                "annotations": learned.get("annotations") if learned else None,
                "title": learned.get("title") if learned else None,
                "read_by_policies": list(store.current.learned_read),
                "definition_changed": authorizer.catalogue.is_changed(message.name),  # A2
            }
        if decision.candidate is not None:
            entry["candidate"] = decision_report(decision.candidate)  # A5: never enforced
        entry["request"] = cedar_request.as_request()
        entry["entities"] = cedar_request.entities
        report["messages"].append(entry)
    allowed = not report["scopes"]["missing"] and all(m["decision"] != "deny" for m in report["messages"])
    report["result"] = "allow" if allowed else "deny"
    return report
