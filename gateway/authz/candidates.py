"""A5: candidate policies (``authorization.candidate_policies``), evaluated beside the enforced set, never enforced.

``Authorizer`` holds the candidate set as a second ``Authorizer`` (``Authorizer.candidate``) over its own
``PolicyStore`` (kind ``candidate``: a set that does not load is logged and left out, never stopping the
gateway), sharing the enforced one's tool catalogue. ``Authorizer.decide_all`` attaches the candidate's
decision to each enforced one (``Decision.candidate``); for lists, ``CandidateListingCheck`` decides each
whole list with both and reports the items they disagree on. Disagreements are counted by method, a
bounded label (``KNOWN_METHODS``, else ``other``), for the metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.authz.cedar import ACTION_GROUPS, LIST_CHECKS
from gateway.config import AuthorizationConfig

if TYPE_CHECKING:
    from gateway.authz.cedar import Authorizer

log = logging.getLogger(__name__)

# The disagreement metric's method label is a bounded vocabulary; anything else counts as "other".
KNOWN_METHODS = frozenset({"tools/call", *LIST_CHECKS, *(m for members in ACTION_GROUPS.values() for m in members)})


def candidate_config(config: AuthorizationConfig) -> AuthorizationConfig | None:
    """A5: the candidate set is read like the enforced one, with the same schema and entities."""
    if config.candidate_policies is None:
        return None
    return AuthorizationConfig(policies=config.candidate_policies, schema=config.schema, entities=config.entities,
                               group_claims=config.group_claims, reload=config.reload)


class CandidateListingCheck:
    """A5: the enforced list check, with the candidate set deciding every whole list beside it."""

    __slots__ = ("_authorizer", "_enforced", "_candidate", "_report")

    def __init__(self, authorizer: Authorizer, enforced: Any, candidate: Any,
                 report: Callable[[str, list[str], list[str]], None] | None):
        self._authorizer, self._enforced, self._candidate, self._report = authorizer, enforced, candidate, report

    def __call__(self, list_method: str, name: str) -> bool:
        return name in self.check_many(list_method, (name,))

    def check_many(self, list_method: str, names: Any) -> frozenset[str]:
        names = list(names)
        shown = self._enforced.check_many(list_method, names)
        try:
            other = self._candidate.check_many(list_method, names)
        except Exception:  # noqa: BLE001 - the candidate set must never change what is enforced
            log.exception("candidate policies failed to decide a list; enforcement is unaffected")
            return shown
        if other != shown:
            only_enforced = sorted(shown - other)
            only_candidate = sorted(other - shown)
            self._authorizer.count_disagreement(list_method, len(only_enforced) + len(only_candidate))
            if self._report is not None:
                self._report(list_method, only_enforced, only_candidate)
        return shown
