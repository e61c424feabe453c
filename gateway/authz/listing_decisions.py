"""P2, Z4: a list's items decided in groups, in one Cedar call.

Z4 checks each listed item as if it were called (cedar.md): ``tools/list`` keeps the tools for which
``Action::"tools/call"`` on ``Tool::"<name>"`` is allowed, with empty arguments and ``context.listing``.
One Cedar call per item costs about 80 µs, so a cold list of 5,000 tools cost 400 ms. Most of those calls
are the same question asked again: Cedar cannot read an entity id as a string (no ``like``, no ``.id``, no
conversion; ``resource like "x"`` is a type error whatever the id), so two items of one list can only be
told apart by

- an entity literal in a policy (``resource == Tool::"a"``, ``resource in [Tool::"a", ...]``,
  ``[Tool::"a"].contains(resource)``, a template link's value), compared with ``==`` / ``in`` / ``contains``;
- the entity data: a static entity from ``authorization.entities`` that names the item (as a parent, inside
  an attribute or a tag; the item's own entry naming itself in its data counts);
- the attributes, parents and tags of the item's entity as the request builds it
  (``Authorizer.listed_entity``: a static entity that *is* the item is merged there, and so are the tool
  annotations and titles learned from the upstream (A1) that some policy reads, so items whose learned
  attributes differ fall into different groups; a named item's cache key has its learned stamp).

Everything else in the request (principal, action, context) is the same for every item of one list.

So ``analyse`` reads the policy set once per policy load (the PST, ``PolicySet.to_pst``) and the static
entities, and collects every entity uid they name (an entity's own ``uid`` aside): an item whose uid is
among them is *named* and is decided on its own. The other items are grouped by ``_shape``: the
attributes, parents and tags of their built entity (everything of it but its id), and each group is
decided once, for a representative that no policy or entity names: the first member's request with its
id replaced by a fresh one (so a group's answer never depends on which item came first).
Named items and representatives go to Cedar together (``Authorizer.evaluate_all``: one
``is_authorized_batch`` call; its decision cache applies), except where a batch could decide otherwise
than single calls: Cedar evaluates a batch against the union of its requests' entities, so when a policy
reads a literal's data (``Tool::"a".sensitive``, ``Tool::"a" in ...``) or a static entity refers to an
entity of the listed type, each named item gets a call of its own (``Analysis.observed``).

Anything the analysis does not know (a PST node or operator not in the lists below, which a newer Cedar
could add, or entity data it cannot read) makes it give up for that policy set: every item is then decided
on its own, still in one batch, and that is logged once at debug level. ``tests/test_listing_decisions.py``
proves the grouped answers equal the per-item ones on a corpus built to break them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from cedarpy import pst

from gateway.authz.entities import RESOURCE_OF_METHOD, merge_entity, principal_entity, uid
from gateway.mcp.jsonrpc import Message

if TYPE_CHECKING:
    from gateway.auth.principal import Principal
    from gateway.authz.cedar import Authorizer, CedarRequest, LoadedPolicies

log = logging.getLogger(__name__)

# The PST nodes and operators whose meaning the analysis knows. Of these, only an EntityUid can tell two
# entities of one type apart (``==``, ``in``, ``contains``... against a literal): no operator reads an id.
# A node or operator outside these lists (a newer Cedar) makes the analysis give up: per-item decisions.
_KNOWN_NODES = frozenset({
    pst.PolicySet, pst.Template, pst.TemplateLink, pst.When, pst.Unless,
    pst.ScopeAny, pst.ScopeEq, pst.ScopeIn, pst.ScopeIs, pst.ScopeIsIn, pst.ActionEq, pst.ActionIn,
    pst.EntityUid, pst.EntityType, pst.Slot, pst.Var, pst.BoolLit, pst.LongLit, pst.StringLit, pst.EntityLit,
    pst.UnaryOp, pst.BinaryOp, pst.GetAttr, pst.HasAttr, pst.Like, pst.Char, pst.Wildcard, pst.Is,
    pst.IfThenElse, pst.Set, pst.Record,
})
_KNOWN_UNARY = frozenset({
    "not", "neg", "is_empty", "datetime", "decimal", "duration", "ip", "is_ipv4", "is_ipv6", "is_loopback",
    "is_multicast", "to_date", "to_time", "to_milliseconds", "to_seconds", "to_minutes", "to_hours", "to_days",
})
_KNOWN_BINARY = frozenset({
    "eq", "not_eq", "less", "less_eq", "greater", "greater_eq", "and", "or", "add", "sub", "mul", "in",
    "contains", "contains_all", "contains_any", "get_tag", "has_tag", "is_in_range", "offset",
    "duration_since", "decimal_less_than", "decimal_less_eq", "decimal_greater", "decimal_greater_eq",
})

Uid = tuple[str, str]  # (entity type as Cedar writes it, "Ns::Tool" with a namespace; id)


class Unanalysable(ValueError):
    """The policy set or the entity data holds something whose effect on ids the analysis does not know."""


def policy_uids(node: Any) -> tuple[set[Uid], set[str]]:
    """Every entity uid a PST names (scopes, conditions, sets, records, template links), and the types of
    those whose entity *data* a policy may read (a literal anywhere under the base of ``.attr``, ``has``,
    ``getTag``/``hasTag``, or the left of ``in`` / ``is ... in``). Strict: an unknown node type, operator
    or leaf raises ``Unanalysable``."""
    found: set[Uid] = set()
    read: set[str] = set()
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        value, reading = stack.pop()
        if isinstance(value, (str, bool, int)) or value is None:
            continue
        if isinstance(value, Mapping):
            stack.extend((item, reading) for item in value.keys())
            stack.extend((item, reading) for item in value.values())
            continue
        if isinstance(value, tuple):
            stack.extend((item, reading) for item in value)
            continue
        kind = type(value)
        if kind not in _KNOWN_NODES or not is_dataclass(value):
            raise Unanalysable(f"policy node {kind.__name__}")
        if kind is pst.EntityUid:
            found.add((str(value.type), value.id))
            if reading:
                read.add(str(value.type))
            continue
        if kind is pst.UnaryOp and value.op not in _KNOWN_UNARY:
            raise Unanalysable(f"unary operator {value.op!r}")
        if kind is pst.BinaryOp:
            if value.op not in _KNOWN_BINARY:
                raise Unanalysable(f"binary operator {value.op!r}")
            if value.op in _READS_LEFT:
                stack.append((value.left, True))
                stack.append((value.right, reading))
                continue
        elif kind is pst.GetAttr or kind is pst.HasAttr or (kind is pst.Is and value.in_expr is not None):
            # ``{k: Tool::"a"}.k`` reads a record literal, no entity's data (``{...}.k.attr`` is read above it)
            stack.append((value.base, reading if type(value.base) is pst.Record else True))
            stack.extend((getattr(value, f.name), reading) for f in fields(value) if f.name != "base")
            continue
        stack.extend((getattr(value, f.name), reading) for f in fields(value))
    return found, read


_READS_LEFT = frozenset({"in", "get_tag", "has_tag"})


def data_uids(value: Any) -> set[Uid]:
    """Every entity uid in Cedar entity JSON: uids, parents, ``__entity`` references in attributes and tags,
    and any ``{"type": ..., "id": ...}`` object (an implicit reference when a schema is used) -- over-
    collecting only costs a Cedar call."""
    found: set[Uid] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        # dict and list first: entity JSON is made of them (json.loads, cedar_value); other mappings and
        # sequences are read the same way, only more slowly (P2: this reads every static entity).
        if type(item) is dict or (type(item) is not list and isinstance(item, Mapping)):
            if "__expr" in item:  # the old expression escape: cannot be read without evaluating it
                raise Unanalysable("an __expr in entity data")
            kind, ident = item.get("type"), item.get("id")
            if isinstance(kind, str) and isinstance(ident, str):
                found.add((kind, ident))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def entity_data_uids(entity: Any) -> set[Uid]:
    """The uids an entity's *data* names (``data_uids`` of everything but its own ``uid``): an entity
    that is a listed item but that nothing else names, not even itself, is told apart from the others
    only by its attributes and parents, which its group's shape holds (``_shape``)."""
    if isinstance(entity, Mapping):
        return data_uids([value for key, value in entity.items() if key != "uid"])
    return data_uids(entity)


@dataclass(frozen=True, slots=True)
class Analysis:
    named: dict[str, frozenset[str]]  # entity type -> the ids of that type a policy or static entity names
    # Types whose entities' data one request could read about another's resource: a literal of the type
    # under a data read, or a static entity referring to one (a parent, an attribute). Named items of such
    # a type are decided each in its own Cedar call: a batch evaluates against the union of its requests'
    # entities (Authorizer._evaluate_batch), and the per-item decision would not see the others.
    observed: frozenset[str]
    fresh: str  # a prefix for representative ids: no policy or static entity names an id starting with it


def analyse(policies: LoadedPolicies) -> Analysis:
    """Once per policy load. Raises ``Unanalysable`` (or whatever cedarpy raises) when it cannot be sure."""
    named, observed = policy_uids(policies.policy_set.to_pst())
    entities = list(policies.static.values())
    if policies.base_entities is not None:
        entities.extend(json.loads(str(policies.base_entities)))
    for entity in entities:
        # An entity's own uid is not a name: a static entity describing a tool is that tool's attributes
        # and parents, which its group's shape holds; a reference to itself in its data is one, though.
        own = entity_data_uids(entity)
        named |= own
        itself = entity.get("uid") if isinstance(entity, Mapping) else None
        observed.update(kind for kind, ident in own if itself != {"type": kind, "id": ident})
    by_type: dict[str, set[str]] = {}
    for kind, ident in named:
        by_type.setdefault(kind, set()).add(ident)
    while True:
        fresh = f"gateway-unnamed-{uuid.uuid4().hex}-"
        if not any(ident.startswith(fresh) for _, ident in named):
            break
    return Analysis({kind: frozenset(ids) for kind, ids in by_type.items()}, frozenset(observed), fresh)


# The analyses of the last few policy sets loaded, by identity: one per policy load, shared by every
# Authorizer of the process. Each entry holds its policy set, so an id is not reused while it is kept.
_analyses: dict[int, tuple[LoadedPolicies, Analysis | None]] = {}
_ANALYSES_KEPT = 8


def analysis_of(authorizer: Authorizer, policies: LoadedPolicies) -> Analysis | None:
    """The analysis of this policy set (made on its first use), or None: decide every item on its own."""
    known = _analyses.get(id(policies))
    if known is not None and known[0] is policies:
        return known[1]
    try:
        result: Analysis | None = analyse(policies)
    except Exception as exc:  # Unanalysable, or cedarpy cannot give the PST (syntax newer than its nodes)
        log.debug("list items are decided one by one under policy version %d: %s", policies.version, exc)
        result = None
    if len(_analyses) >= _ANALYSES_KEPT:
        _analyses.clear()
    _analyses[id(policies)] = (policies, result)
    return result


_GROUP = object()  # marks a group's entry in Authorizer._list_cache (item entries have a name there)


def _shape(entity: Mapping[str, Any], default_parents: list[dict[str, str]]) -> str:
    """What, besides its id, the built entity of a listed item gives Cedar: its group. Everything but the
    ``uid`` (attributes, parents, tags, and whatever ``listed_entity`` adds later, learned annotations
    say), so two items share a group only if their entities differ in nothing but the id."""
    rest = {key: value for key, value in entity.items() if key != "uid"}
    if rest == {"attrs": {}, "parents": default_parents}:
        return ""  # the usual case, an item nothing describes: no serialization
    return json.dumps(rest, sort_keys=True)


def allowed_items(authorizer: Authorizer, principal: Principal, principal_key: bytes, list_method: str,
                  names: Iterable[str]) -> frozenset[str]:
    """Which of ``names``, listed by a ``list_method`` answer, ``principal`` may use (Z4), with one decision
    per named item and per group of alike items, made in one Cedar call."""
    from gateway.authz.cedar import LIST_CHECKS, CedarRequest

    policies = authorizer.store.current
    call_method, param = LIST_CHECKS[list_method]
    kind = RESOURCE_OF_METHOD[call_method][0]
    unique = list(dict.fromkeys(names))

    def request_for(name: str) -> CedarRequest:
        return authorizer.build(principal, Message(kind="request", method=call_method, params={param: name}), listing=True)

    analysis = analysis_of(authorizer, policies)
    if analysis is None:
        decisions = authorizer.evaluate_all([request_for(name) for name in unique])
        return frozenset(name for name, decision in zip(unique, decisions, strict=True) if decision.allowed)

    named = analysis.named.get(kind, frozenset())
    # The principal is the same for every item; still, an id its entity names is decided on its own.
    mentioned = data_uids(merge_entity(policies.static.get(("User", principal.entity_id)),
                                       principal_entity(principal, authorizer.group_claims)))
    if mentioned:
        named = named | {ident for entity_type, ident in mentioned if entity_type == kind}
    default_parents = [uid("Server", authorizer.server_name)]
    singles: list[str] = []
    groups: dict[str, list[str]] = {}
    for name in unique:
        if name in named:
            singles.append(name)
        else:
            groups.setdefault(_shape(authorizer.listed_entity(uid(kind, name), policies), default_parents), []).append(name)

    # Cedar evaluates a batch against the union of its requests' entities (Authorizer._evaluate_batch).
    # A representative's entity has an id nothing names, so no other request can see it; a named item's
    # can be seen when a policy or static entity reads an entity of its type (Analysis.observed): then
    # each named item is decided in a call of its own, as the per-item path decides it.
    isolate = kind in analysis.observed or any(entity_type == kind for entity_type, _ in mentioned)
    together: list[tuple[Any, list[str], CedarRequest]] = []  # (cache key or None, the names it decides, request)
    alone: list[tuple[Any, list[str], CedarRequest]] = []
    cache = authorizer._list_cache
    version = policies.version
    allowed: set[str] = set()
    learned = authorizer.catalogue.stamp if kind == "Tool" else _no_stamp  # A1: attributes learned per tool
    for name in singles:
        key = (principal_key, version, list_method, name, learned(name))
        verdict = cache.get(key)
        if verdict is None:
            (alone if isolate else together).append((key, [name], request_for(name)))
        elif verdict:
            allowed.add(name)
    for index, (shape, members) in enumerate(groups.items()):
        key = (principal_key, version, list_method, _GROUP, shape)
        verdict = cache.get(key)
        if verdict is None:
            fresh = f"{analysis.fresh}{index}"
            representative = None if fresh in named else \
                _representative(request_for(members[0]), request_for(fresh), shape, default_parents)
            if representative is None:  # not built as this module expects: decide these items one by one
                _warn_once(policies.version)
                (alone if isolate else together).extend((None, [name], request_for(name)) for name in members)
            else:
                together.append((key, members, representative))
        elif verdict:
            allowed.update(members)
    for call in [together, *([entry] for entry in alone)]:
        if not call:
            continue
        for (key, members, _), decision in zip(call, authorizer.evaluate_all([entry[2] for entry in call]), strict=True):
            if key is not None:
                cache[key] = decision.allowed
            if decision.allowed:
                allowed.update(members)
    return frozenset(allowed)


def _no_stamp(name: str) -> int:
    return 0


_warned: set[int] = set()


def _warn_once(version: int) -> None:
    if version not in _warned:
        _warned.add(version)
        log.warning("list items decided one by one (policy version %d): a listed item's request is not built "
                    "as gateway.authz.listing_decisions expects", version)


def _representative(member: CedarRequest, fresh: CedarRequest, shape: str,
                    default_parents: list[dict[str, str]]) -> CedarRequest | None:
    """The group's request: ``member``'s (the first of the group) with its id replaced by ``fresh``'s.

    A tripwire first, against a request builder that changes under this module: apart from the item's
    own entity, the member's request and one built for the fresh id must be the same (so the item's name
    reaches Cedar nowhere else, in the context say), and the member's entity must have its group's shape.
    None when not."""
    from gateway.authz.cedar import CedarRequest

    def split(request: CedarRequest) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        own = [entity for entity in request.entities if entity["uid"] == request.resource]
        return (own[0] if len(own) == 1 else None), [e for e in request.entities if e["uid"] != request.resource]

    (mine, others), (_, fresh_others) = split(member), split(fresh)
    if (mine is None or _shape(mine, default_parents) != shape or others != fresh_others
            or member.context != fresh.context or member.principal != fresh.principal or member.action != fresh.action
            or member.resource["type"] != fresh.resource["type"]):
        return None
    entities = [{**entity, "uid": fresh.resource} if entity is mine else entity for entity in member.entities]
    return CedarRequest(principal=member.principal, action=member.action, resource=fresh.resource,
                        context=member.context, entities=entities)


class ListingCheck:
    """``Authorizer.item_check``'s answer: ``check(list_method, name) -> bool`` for one item (memoized per
    item, as before), and ``check.check_many(list_method, names)`` for a whole list at once (P2)."""

    __slots__ = ("_authorizer", "_principal", "_key")

    def __init__(self, authorizer: Authorizer, principal: Principal, principal_key: bytes):
        self._authorizer = authorizer
        self._principal = principal
        self._key = principal_key

    def __call__(self, list_method: str, name: str) -> bool:
        stamp = self._authorizer.catalogue.stamp(name) if list_method == "tools/list" else 0  # A1
        key = (self._key, self._authorizer.store.current.version, list_method, name, stamp)
        verdict = self._authorizer._list_cache.get(key)
        if verdict is None:
            verdict = name in self.check_many(list_method, (name,))
            self._authorizer._list_cache[key] = verdict
        return verdict

    def check_many(self, list_method: str, names: Iterable[str]) -> frozenset[str]:
        return allowed_items(self._authorizer, self._principal, self._key, list_method, names)

    async def check_many_async(self, list_method: str, names: Iterable[str]) -> None:
        """R4: make (and cache) the decisions ``check_many`` needs, ``LIST_PIECE`` items at a time, yielding
        the event loop between pieces (cedarpy holds the GIL, so a thread would not help). A group decided
        in one piece is a cache hit in the next."""
        unique = list(dict.fromkeys(names))
        for start in range(0, len(unique), LIST_PIECE):
            if start:
                await asyncio.sleep(0)
            allowed_items(self._authorizer, self._principal, self._key, list_method, unique[start:start + LIST_PIECE])


# Items decided between two yields of the event loop (check_many_async): with a small policy set a piece
# costs well under a millisecond; with thousands of policies naming items, some tens of milliseconds.
LIST_PIECE = 32
