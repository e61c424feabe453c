"""A6 (RFC 9470): some calls need a stronger or more recent user authentication than the token shows.

``auth.step_up`` rules name tools (``tools/call`` by tool name or glob) or MCP methods (names or globs) and
what they need: ``acr_values`` (the token's ``acr`` must be one of them) and/or ``max_age`` (its
``auth_time`` must be at most that many seconds ago). Every rule that matches a message applies, so two
rules on one tool both count: their acr values are intersected, and the shortest ``max_age`` wins. A
request that fails them gets ``401`` with ``error="insufficient_user_authentication"``, ``acr_values`` and
``max_age`` (gateway.edge.challenge), and the client asks its authorization server for a new token with
those parameters.

The check runs after the policy decision (gateway.endpoint): a caller that may not call a tool at all gets
the policy's ``403``, not an invitation to authenticate again for nothing, and lists are never affected:
a tool that needs step-up is still listed to the callers who may use it. ``acr`` and ``auth_time`` come
from the verified token (or the introspection answer, RFC 9470 §6.2), never from anything else the client
sends.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.config import StepUpRule
from gateway.errors import Forbidden, InsufficientUserAuthentication
from gateway.mcp.jsonrpc import MAX_SAFE_INTEGER, Message

DEFAULT_LEEWAY = 60.0


@dataclass(frozen=True, slots=True)
class Requirement:
    """What one request needs of the user's authentication: the union of the rules that match it."""

    acr_values: tuple[str, ...] | None  # None: any acr; else one of these (never empty: see unsatisfiable)
    max_age: int | None
    rules: tuple[int, ...]  # the indexes of the matching rules in auth.step_up, for the log
    unsatisfiable: bool = False  # two matching rules share no acr value


def _matches(patterns: Sequence[str], value: str) -> bool:
    return any(value == pattern or fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


class StepUpRules:
    def __init__(self, rules: Sequence[StepUpRule], *, leeways: Mapping[str, float] | None = None,
                 clock: Callable[[], float] = time.time):
        self.rules = tuple(rules)
        self.leeways = dict(leeways or {})  # issuer -> leeway for an auth_time slightly in the future
        self.clock = clock

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _applies(self, rule: StepUpRule, message: Message) -> bool:
        if message.method is None:  # a response the client sends
            return False
        if rule.methods:
            return _matches(rule.methods, message.method)
        return message.method == "tools/call" and message.name is not None and _matches(rule.tools, message.name)

    def requirement(self, messages: Iterable[Message]) -> Requirement | None:
        """What these messages need together, or None when no rule matches any of them."""
        matched: list[int] = []
        for message in messages:
            matched.extend(i for i, rule in enumerate(self.rules) if i not in matched and self._applies(rule, message))
        if not matched:
            return None
        acr: list[str] | None = None
        ages: list[int] = []
        for index in sorted(matched):
            rule = self.rules[index]
            if rule.acr_values:
                acr = list(rule.acr_values) if acr is None else [value for value in acr if value in rule.acr_values]
            if rule.max_age is not None:
                ages.append(rule.max_age)
        return Requirement(
            acr_values=tuple(acr) if acr is not None else None,
            max_age=min(ages) if ages else None,
            rules=tuple(sorted(matched)),
            unsatisfiable=acr is not None and not acr,
        )

    def check(self, principal: Principal, messages: Iterable[Message], *, scopes: tuple[str, ...] = ()) -> None:
        """Raises ``InsufficientUserAuthentication`` (401) when the token does not satisfy the rules that
        match ``messages``; ``scopes`` (what the request needs) go into the challenge, so the new
        authorization asks for them again (RFC 9470 §3)."""
        if not self.rules:
            return
        needed = self.requirement(messages)
        if needed is None:
            return
        rules = ", ".join(f"auth.step_up[{i}]" for i in needed.rules)
        if needed.unsatisfiable:
            # No token can pass: say so in the log; the client gets a plain 403 rather than a loop of logins.
            raise Forbidden("step_up_unsatisfiable", f"{rules} share no acr value")
        problem = self._problem(principal, needed)
        if problem is not None:
            reason, detail = problem
            raise InsufficientUserAuthentication(
                reason, f"{detail} ({rules})", acr_values=needed.acr_values or (), max_age=needed.max_age, scopes=scopes)

    def _problem(self, principal: Principal, needed: Requirement) -> tuple[str, str] | None:
        claims = principal.claims
        if needed.acr_values is not None:
            acr = claims.get("acr")
            if acr is None or acr == "":
                return "step_up_acr_missing", "the token has no acr claim"
            if not isinstance(acr, str):  # a list or a number: RFC 9470 and OIDC make acr one string
                return "step_up_acr_invalid", f"the token's acr is a {type(acr).__name__}, not a string"
            if acr not in needed.acr_values:
                return "step_up_acr_not_accepted", f"acr {acr[:64]!r} is not one of {' '.join(needed.acr_values)}"
        if needed.max_age is not None:
            auth_time = claims.get("auth_time")
            if auth_time is None:
                return "step_up_auth_time_missing", "the token has no auth_time claim"
            if (isinstance(auth_time, bool) or not isinstance(auth_time, (int, float))
                    or abs(auth_time) > MAX_SAFE_INTEGER or not math.isfinite(auth_time)):  # 10**400 - now overflows
                return "step_up_auth_time_invalid", "auth_time is not a number"
            age = self.clock() - auth_time
            if age < -self.leeways.get(principal.issuer, DEFAULT_LEEWAY):
                return "step_up_auth_time_in_future", f"auth_time is {-age:.0f}s in the future"
            if age > needed.max_age:
                return "step_up_auth_too_old", f"authenticated {age:.0f}s ago, more than max_age {needed.max_age}s"
        return None
