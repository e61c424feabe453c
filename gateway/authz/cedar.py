"""Z1-Z3: the Cedar policy store and the decisions made with it.

``load_policies`` reads ``authorization.policies`` (a ``.cedar`` file or a folder of them), the optional
schema and static entities, and parses them once into cedarpy handles. Every problem names its file and
line: cedarpy's own parse errors carry no position, so each file is split into its statements and the
first statement that does not parse is reported. With a schema, policies are validated against it.

``PolicyStore`` holds the current ``LoadedPolicies`` and swaps in a new one atomically when the files
change (Z2); a set that does not load is refused, logged, and the old one stays. ``Authorizer`` makes
decisions; it fails closed: a policy that errors while evaluating makes the decision a denial, because
Cedar would otherwise skip the erroring policy, and a skipped ``forbid`` is an allow.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cedarpy
from cedarpy import pst

from gateway.auth.principal import Principal
from gateway.authz.entities import (
    context_of,
    merge_entity,
    principal_entity,
    resource_uid,
    uid,
)
from gateway.config import AuthorizationConfig
from gateway.memo import ByteBoundedMemo, ByteBudgetCache
from gateway.authz.pins import PinsError, PinStore
from gateway.mcp.catalogue import DefinitionChange, ToolCatalogue
from gateway.mcp.jsonrpc import Message
from gateway.mcp.lists import LIST_CHECKS  # Z4: a listed item is decided as if it were used

log = logging.getLogger(__name__)


_POLICY_ID = re.compile(r"\b(policy\d+)\b")

# Entity types a request builds itself; entities.json may describe them too (merged per request, cedar.md).
REQUEST_BUILT_TYPES = frozenset({"User", "Tool", "Prompt", "Resource", "Server"})

# A3 (cedar.md): the action groups, used when no schema is given; with a schema, the schema's action
# hierarchy is used instead (what the policies were validated against is what they are evaluated with).
# tools/call is in no group: decide it per tool.
ACTION_GROUPS: dict[str, tuple[str, ...]] = {
    "read": ("tools/list", "prompts/list", "prompts/get", "resources/list", "resources/templates/list",
             "resources/read", "completion/complete"),
    "subscribe": ("resources/subscribe", "resources/unsubscribe", "subscriptions/listen"),
    "housekeeping": ("logging/setLevel", "server/discover"),
    "tasks": ("tasks/get", "tasks/update", "tasks/cancel", "tasks/result", "tasks/list"),
}
# A1: attributes the gateway learns from the upstream's tools/list answers (gateway.mcp.catalogue).
LEARNED_ATTRIBUTES = ("annotations", "title")


class PolicyLoadError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """Cedar policies end at a ``;`` outside strings and comments. Returns each with its first line."""
    statements: list[Statement] = []
    start = 0
    start_line: int | None = None
    line = 1
    i = 0
    in_string = False
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif char == '"':
            in_string = True
        elif char == ";":
            statements.append(Statement(text[start:i + 1], start_line or line))
            start, start_line = i + 1, None
            i += 1
            continue
        if char == "\n":
            line += 1
        elif start_line is None and not char.isspace():
            start_line = line
        i += 1
    if text[start:].strip() and start_line is not None:
        # Only comments may follow the last ';'.
        rest = "\n".join(part.split("//", 1)[0] for part in text[start:].splitlines()).strip()
        if rest:
            statements.append(Statement(text[start:], start_line))
    return statements


def _parse_file(path: Path, text: str, problems: list[str]) -> list[Statement]:
    statements = split_statements(text)
    try:
        cedarpy.PolicySet.from_str(text)
        return statements
    except ValueError as whole_error:
        for statement in statements:
            try:
                cedarpy.PolicySet.from_str(statement.text)
            except ValueError as exc:
                problems.append(f"{path}:{statement.line}: {exc}")
                return []
        problems.append(f"{path}: {whole_error}")
        return []


@dataclass(frozen=True, slots=True)
class LoadedPolicies:
    version: int
    policy_set: cedarpy.PolicySet
    labels: tuple[str, ...]  # positional policy id N -> "file.cedar:line"
    base_entities: cedarpy.Entities | None  # static entities of types requests never build (Group, ...), if any
    static: dict[tuple[str, str], dict[str, Any]]  # static entities of request-built types, merged per request
    policy_count: int
    fingerprint: tuple[Any, ...] = field(default=())
    # A1: the learned Tool attributes some policy reads (by name, in `.attr`, `has` or `["attr"]`); all of
    # them when the policy set cannot be read that way. Unread ones are left off the entities, so list
    # items that differ only there are still decided together (gateway.authz.listing_decisions).
    learned_read: tuple[str, ...] = LEARNED_ATTRIBUTES

    def label(self, policy_id: str, annotation: str | None = None) -> str:
        return policy_label(self.labels, policy_id, annotation)


def policy_label(labels: tuple[str, ...] | list[str], policy_id: str, annotation: str | None = None) -> str:
    """A policy's name in logs and audit events: its ``@id`` annotation, else ``file.cedar:line``."""
    if annotation:
        return annotation
    if policy_id.startswith("policy") and policy_id[6:].isdigit() and int(policy_id[6:]) < len(labels):
        return labels[int(policy_id[6:])]
    return policy_id


def policy_files(config: AuthorizationConfig) -> list[Path]:
    if config.policies.is_dir():
        return sorted(p for p in config.policies.glob("*.cedar") if p.is_file() and not p.name.startswith("."))
    return [config.policies]


def fingerprint(config: AuthorizationConfig) -> tuple[Any, ...]:
    """What changes when any input changes (Kubernetes ConfigMaps swap a symlink: stat follows it)."""
    parts: list[Any] = []
    for path in [*policy_files(config), config.schema, config.entities]:
        if path is None:
            continue
        try:
            stat = os.stat(path)
            parts.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            parts.append((str(path), None))
    return tuple(parts)


def action_entities(schema: cedarpy.Schema | None, static: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A3: every Action entity with its parents: the schema's hierarchy, else ``ACTION_GROUPS``; parents
    that entities.json gives an Action are added to it."""
    if schema is not None:
        actions = {e["uid"]["id"]: e for e in json.loads(str(cedarpy.Entities.from_json_str("[]", schema)))}
    else:
        actions = {group: {"uid": uid("Action", group), "attrs": {}, "parents": []} for group in ACTION_GROUPS}
        for group, members in ACTION_GROUPS.items():
            for member in members:
                actions[member] = {"uid": uid("Action", member), "attrs": {}, "parents": [uid("Action", group)]}
    for entity in static:
        key = entity["uid"]["id"]
        actions[key] = merge_entity(entity, actions.get(key, {"uid": entity["uid"], "attrs": {}, "parents": []}))
    return list(actions.values())


def attributes_read(policy_set: cedarpy.PolicySet) -> tuple[str, ...]:
    """Which of ``LEARNED_ATTRIBUTES`` a policy reads. Over-approximates: any `.x`, `has x` or `["x"]` on
    anything counts; a set whose syntax tree cannot be had reads them all."""
    try:
        stack: list[Any] = [policy_set.to_pst()]
    except Exception:  # noqa: BLE001 - a newer syntax than cedarpy's tree: assume everything is read
        return LEARNED_ATTRIBUTES
    names: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, pst.GetAttr):
            names.add(node.attr)
        elif isinstance(node, pst.HasAttr):
            names.update(node.attrs)
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (tuple, list)):
            stack.extend(node)
        elif is_dataclass(node):
            stack.extend(getattr(node, f.name) for f in fields(node))
    return tuple(name for name in LEARNED_ATTRIBUTES if name in names)


def load_policies(config: AuthorizationConfig, version: int = 1) -> LoadedPolicies:
    """Parse and validate everything; ``PolicyLoadError`` lists each problem with file and line."""
    problems: list[str] = []
    stamp = fingerprint(config)
    files = policy_files(config)
    if not files:
        problems.append(f"{config.policies}: no .cedar files")
    texts: list[str] = []
    labels: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        statements = _parse_file(path, text, problems)
        texts.append(text)
        labels.extend(f"{path.name}:{s.line}" for s in statements)

    schema = None
    if config.schema is not None:
        try:
            schema_text = config.schema.read_text(encoding="utf-8")
            schema = cedarpy.Schema.from_json_str(schema_text) if config.schema.suffix == ".json" else cedarpy.Schema.from_str(schema_text)
        except (OSError, ValueError) as exc:
            problems.append(f"{config.schema}: {exc}")

    static: dict[tuple[str, str], dict[str, Any]] = {}
    base_list: list[dict[str, Any]] = []
    static_actions: list[dict[str, Any]] = []
    if config.entities is not None:
        try:
            document = json.loads(config.entities.read_text(encoding="utf-8"))
            if not isinstance(document, list):
                raise ValueError("must be a JSON array of entities")
            cedarpy.Entities.from_json_str(json.dumps(document), schema)  # validates the file as a whole
            for entity in document:
                key = (entity["uid"]["type"], entity["uid"]["id"])
                if key[0] in REQUEST_BUILT_TYPES:
                    static[key] = entity
                elif key[0] == "Action":
                    static_actions.append(entity)
                else:
                    base_list.append(entity)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{config.entities}: {exc}")

    if problems:
        raise PolicyLoadError(problems)
    all_text = "\n".join(texts)
    policy_set = cedarpy.PolicySet.from_str(all_text)
    if len(policy_set) != len(labels):  # the splitter and Cedar disagree: keep ids rather than wrong lines
        labels = [f"policy{i}" for i in range(len(policy_set))]
    if schema is not None:
        result = cedarpy.validate_policies(all_text, schema)
        if not result.validation_passed:
            annotations = result.id_annotations_by_policy_id
            for error in result.errors:
                where = _file_of(policy_label(labels, error.policy_id), files) if error.policy_id else str(config.policies)
                named = f" (@id {annotations[error.policy_id]!r})" if error.policy_id in annotations else ""
                problems.append(f"{where}{named}: {error.error}")
            raise PolicyLoadError(problems)
    # A3: every decision (lists and cached ones included) sees the Action entities and their groups.
    try:
        base_list.extend(action_entities(schema, static_actions))
    except (ValueError, KeyError, TypeError) as exc:
        raise PolicyLoadError([f"{config.schema or config.entities}: action entities: {exc}"]) from exc
    return LoadedPolicies(
        version=version,
        policy_set=policy_set,
        labels=tuple(labels),
        base_entities=cedarpy.Entities.from_json_str(json.dumps(base_list)),
        static=static,
        policy_count=len(policy_set),
        fingerprint=stamp,
        learned_read=attributes_read(policy_set),
    )


def _file_of(label: str, files: list[Path]) -> str:
    name = label.split(":", 1)[0]
    for path in files:
        if path.name == name:
            return f"{path.parent}/{label}"
    return label


class PolicyStore:
    """The current policies; replaced atomically by ``reload_if_changed`` (Z2).

    ``kind="candidate"`` (A5): a set that does not load at start is logged and left out (``current`` is
    None) instead of stopping the start; a later valid edit brings it in. Enforcement never depends on it."""

    def __init__(self, config: AuthorizationConfig, *, kind: Literal["enforced", "candidate"] = "enforced"):
        self.config = config
        self.kind = kind
        self.reloads = 0
        self.failed_reloads = 0
        self._refused: tuple[Any, ...] | None = None
        # Called with the new policies after each swap (the authorizer drops what it cached for the old set).
        self.on_reload: list[Callable[[LoadedPolicies], None]] = []
        self.current: LoadedPolicies = None  # type: ignore[assignment] # set below, or None for a candidate
        try:
            self.current = load_policies(config)
        except PolicyLoadError as exc:
            if kind == "enforced":
                raise
            self._refused = fingerprint(config)
            self.failed_reloads += 1
            log.error("candidate policies refused; no candidate set is evaluated until they load:\n%s", exc)
            return
        log.info("loaded %d %s Cedar policies (version %d)", self.current.policy_count, kind, self.current.version,
                 extra={"fields": {"policy_version": self.current.version, "policy_kind": kind}})

    def reload_if_changed(self) -> bool:
        stamp = fingerprint(self.config)
        current = self.current
        if (current is not None and stamp == current.fingerprint) or stamp == self._refused:
            return False
        version = current.version if current is not None else 0
        try:
            loaded = load_policies(self.config, version + 1)
        except PolicyLoadError as exc:
            self._refused = stamp
            self.failed_reloads += 1
            log.error("%s policy change refused; version %d stays in force:\n%s", self.kind, version, exc,
                      extra={"fields": {"policy_version": version, "policy_kind": self.kind}})
            return False
        self.current = loaded  # one reference swap: a decision sees the old set or the new, never a mix
        self._refused = None
        self.reloads += 1
        log.info("%s policies reloaded: version %d, %d policies", self.kind, loaded.version, loaded.policy_count,
                 extra={"fields": {"policy_version": loaded.version, "policy_kind": self.kind}})
        for listener in self.on_reload:
            listener(loaded)
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die; the old policies stay
                log.exception("policy reload check failed")


DecisionReason = Literal["allowed", "denied_by_policy", "no_policy_permits", "policy_error", "tool_definition_changed"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: DecisionReason
    policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    policy_version: int = 0
    candidate: Decision | None = None  # A5: what authorization.candidate_policies decided (never enforced)

    def audit_fields(self) -> dict[str, Any]:
        """The candidate's decision for an audit event (nothing without candidate policies)."""
        candidate = self.candidate
        if candidate is None:
            return {}
        return {"candidate_decision": "allow" if candidate.allowed else "deny", "candidate_reason": candidate.reason,
                "candidate_policies": candidate.policies, "candidate_policy_version": candidate.policy_version}


class CedarRequest:
    """Everything one decision reads; also what ``policy explain`` prints. Not changed once made.

    ``entities`` are given, or built on first use by ``make_entities`` (P1: ``Authorizer.build`` does that,
    since a decision found in the cache needs no entity dicts). ``key``, when set, stands for everything
    the decision reads besides the policy set (``Authorizer.build`` says what); without it the decision
    cache hashes the whole request and its entities.
    """

    __slots__ = ("principal", "action", "resource", "context", "key", "_entities", "_make_entities")

    def __init__(self, *, principal: dict[str, str], action: dict[str, str], resource: dict[str, str],
                 context: dict[str, Any], entities: list[dict[str, Any]] | None = None,
                 make_entities: Callable[[], list[dict[str, Any]]] | None = None, key: tuple[Any, ...] | None = None):
        if (entities is None) == (make_entities is None):
            raise TypeError("CedarRequest needs entities or make_entities, not both")
        self.principal, self.action, self.resource, self.context = principal, action, resource, context
        self.key = key
        self._entities, self._make_entities = entities, make_entities

    @property
    def entities(self) -> list[dict[str, Any]]:
        if self._entities is None:
            make = self._make_entities
            self._entities = make() if make is not None else []  # one of the two is set (__init__)
        return self._entities

    def as_request(self) -> dict[str, Any]:
        return {"principal": self.principal, "action": self.action, "resource": self.resource, "context": self.context}

    def __repr__(self) -> str:
        return f"CedarRequest({self.as_request()!r}, entities={self.entities!r})"


# R2: what the decision caches may hold. Entries are counted in bytes (``decision_entry_size``,
# ``listing_entry_size``): a fixed cost per entry, measured with tracemalloc for the largest key a request
# can make (its client-chosen part is at most 128 characters, else hashed: Authorizer.build), plus every
# character of text the entry holds beyond that (policy names, error messages, listed item names).
DECISION_BUDGET_BYTES = 8 * 1024 * 1024  # ~12,000 decisions of a typical policy set
LISTING_BUDGET_BYTES = 4 * 1024 * 1024  # ~11,000 listing decisions (an item of a list, or a group of alike items)
DECISION_TTL_S = 300.0
DECISION_ENTRY_BYTES = 700  # the key (up to 128 characters of the request), the cache's slot, the Decision
LISTING_ENTRY_BYTES = 380  # the key (principal digest, version, method, item), the cache's slot
TEXT_BYTES = 64  # what a str costs besides its characters
SHARED_DECISIONS = 256  # distinct Decision objects kept for sharing between entries (per policy version)
# R4: messages of one batch decided between two yields of the event loop (Authorizer.decide_all_async):
# one Cedar call, about a millisecond with a small policy set.
DECISION_PIECE = 25
PRINCIPAL_DIGESTS = 4096  # principals whose entity digest is remembered (then forgotten all at once)


def decision_entry_size(key: Any, decision: Decision) -> int:
    text = decision.policies + decision.errors
    return DECISION_ENTRY_BYTES + sum(len(item) + TEXT_BYTES for item in text)


def listing_entry_size(key: tuple[Any, ...], verdict: bool) -> int:
    # The item's name is the upstream's (any length); a group's key holds its shape's JSON (static entities).
    return LISTING_ENTRY_BYTES + sum(len(part) for part in key if isinstance(part, str))


class Authorizer:
    """Decisions for one gateway. Usable offline too (``policy explain``, ``policy test``):

        authorizer = Authorizer(PolicyStore(config.authorization), config.authorization, server_name="mcp")
        authorizer.catalogue.learn(tools)              # optional: what a tools/list answer said (A1, A2)
        decision = authorizer.decide(principal, message)   # .allowed, .reason, .policies, .candidate (A5)
        shown = authorizer.item_check(principal).check_many("tools/list", names)   # Z4 list filtering
        shown_by_candidate = authorizer.candidate.item_check(principal).check_many(...)  # when configured

    ``candidate`` is an ``Authorizer`` over ``authorization.candidate_policies`` (None when not configured)
    sharing this one's tool catalogue; its decisions are attached to this one's, never enforced.
    """

    def __init__(self, store: PolicyStore, config: AuthorizationConfig, *, server_name: str,
                 listing_budget_bytes: int = LISTING_BUDGET_BYTES, decision_budget_bytes: int = DECISION_BUDGET_BYTES,
                 catalogue: ToolCatalogue | None = None):
        self.store = store
        self.group_claims = tuple(config.group_claims)
        self.server_name = server_name
        self.deny_changed_tools = config.tool_changes == "deny"  # A2
        self._listing_budget, self._decision_budget = listing_budget_bytes, decision_budget_bytes
        # Z4: listing decisions per (principal attributes, policy version, item): a list of hundreds of
        # tools costs hundreds of decisions once, then dictionary look-ups.
        self._list_cache: ByteBudgetCache[tuple[Any, ...], bool] = self._new_listing_cache()
        # Whole decisions by everything they read (CedarRequest.key; bounded in bytes; entries also age out).
        self._decisions: ByteBudgetCache[Any, Decision] = self._new_decision_cache()
        # Equal decisions share one object (most are "allowed by the same policy"), which makes an entry
        # smaller than it is counted. Per policy version, at most SHARED_DECISIONS of them.
        self._shared: dict[Decision, Decision] = {}
        # P1: a digest of each principal's entity, made once per Principal (the token cache hands out the
        # same object for every request with that token). By id, with a weak reference: an entry goes when
        # its principal does (the token caches let it go), so it never outlives it nor keeps it alive (R2),
        # and a reused id is never mistaken for it; at most PRINCIPAL_DIGESTS, then cleared.
        self._principal_digests: dict[int, tuple[weakref.ref[Principal], bytes]] = {}
        # Filtered list answers by (listing scope, hash of the upstream's bytes): servers answer tools/list
        # with the same bytes again and again, and the same caller then gets the same filtered bytes.
        # R2: bounded in bytes (16 MiB in all, no entry over 1 MiB; gateway.memo), list answers only.
        self.filtered_lists: ByteBoundedMemo = ByteBoundedMemo()
        # What the upstream says of its tools (from the tools/list answers relayed): spelling checks (I2, M2),
        # learned attributes (A1) and definition pins (A2).
        self.catalogue = catalogue if catalogue is not None else ToolCatalogue()  # (an empty one is falsy)
        if catalogue is None:
            self.catalogue.deny_changed = self.deny_changed_tools
        store.on_reload.append(self._forget_old_policies)
        self.pins: PinStore | None = None
        if config.tool_pins is not None and catalogue is None:
            try:
                self.pins = PinStore(config.tool_pins)
            except PinsError as exc:  # like a broken policy: the start stops, naming the file
                raise PolicyLoadError([str(exc)]) from exc
            self.catalogue.set_pins(self.pins.pins)
        # A5: the candidate set, evaluated beside this one; disagreements counted by method (a metric).
        self.candidate: Authorizer | None = None
        self.disagreements: dict[str, int] = {}
        from gateway.authz.candidates import candidate_config  # (it imports this module)

        candidates = candidate_config(config)
        if candidates is not None and catalogue is None:
            self.candidate = Authorizer(PolicyStore(candidates, kind="candidate"), candidates, server_name=server_name,
                                        listing_budget_bytes=listing_budget_bytes, decision_budget_bytes=decision_budget_bytes,
                                        catalogue=self.catalogue)

    def reload_if_changed(self) -> list[DefinitionChange]:
        """Z2 for the enforced and candidate policies and the tool pins; returns the pin changes (A2)."""
        self.store.reload_if_changed()
        if self.candidate is not None:
            self.candidate.store.reload_if_changed()
        pins = self.pins.reload_if_changed() if self.pins is not None else None
        return self.catalogue.set_pins(pins) if pins is not None else []

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die; the old policies stay
                log.exception("policy reload check failed")

    def learned(self, target: Mapping[str, str], policies: LoadedPolicies) -> dict[str, Any]:
        """A1: the learned attributes of a listed tool that some policy reads ({} for anything else)."""
        if target["type"] != "Tool" or not policies.learned_read:
            return {}
        attrs = self.catalogue.attributes(target["id"])
        if not attrs:
            return {}
        return {name: attrs[name] for name in policies.learned_read if name in attrs}

    def _new_listing_cache(self) -> ByteBudgetCache[tuple[Any, ...], bool]:
        return ByteBudgetCache(self._listing_budget, sizeof=listing_entry_size, ttl=DECISION_TTL_S)

    def _new_decision_cache(self) -> ByteBudgetCache[Any, Decision]:
        return ByteBudgetCache(self._decision_budget, sizeof=decision_entry_size, ttl=DECISION_TTL_S)

    def _forget_old_policies(self, policies: LoadedPolicies) -> None:
        """R2: every cached decision and filtered list names its policy version, so none of the old set's can
        be used again: drop them now rather than let them fill the caches until they expire."""
        self._list_cache = self._new_listing_cache()
        self._decisions = self._new_decision_cache()
        self._shared = {}
        self.filtered_lists.clear()

    def _remember(self, key: Any, decision: Decision, version: int) -> Decision:
        if version != self.store.current.version:
            return decision  # decided under a set that was replaced meanwhile: not kept
        shared = self._shared.get(decision)
        if shared is None and not decision.errors and len(self._shared) < SHARED_DECISIONS:
            shared = self._shared[decision] = decision
        self._decisions[key] = shared or decision
        return shared or decision

    def listing_scope(self, principal: Principal) -> bytes:
        """What list filtering depends on besides the list itself: the caller's attributes and the policies."""
        entity = principal_entity(principal, self.group_claims)
        # The catalogue's generation: a list answer learned under other tool attributes (A1) is decided again.
        # A5: and the candidate set's version, so an edited candidate set decides the next list (not the memo).
        candidate = self.candidate.store.current if self.candidate is not None else None
        said = [entity, principal.token_type, self.store.current.version, self.catalogue.generation,
                candidate.version if candidate is not None else None]
        return hashlib.sha256(json.dumps(said, sort_keys=True).encode()).digest()

    def item_check(self, principal: Principal, scope: bytes | None = None,
                   report: Callable[[str, list[str], list[str]], None] | None = None) -> Callable[[str, str], bool]:
        """For Z4: may ``principal`` use the item ``name`` that a ``list_method`` answer lists? The check also
        has ``check_many(list_method, names) -> frozenset`` for a whole list: items no policy or static entity
        tells apart share one decision, all made in one Cedar call (P2, gateway.authz.listing_decisions).

        A5: with candidate policies, each whole list is also decided by them; where they would show another
        set, the items are counted as disagreements and ``report(list_method, only_enforced_shows,
        only_candidate_shows)`` is called (the endpoint audits it)."""
        from gateway.authz.listing_decisions import ListingCheck

        check = ListingCheck(self, principal, scope or self.listing_scope(principal))
        if self.candidate is None or self.candidate.store.current is None:
            return check
        from gateway.authz.candidates import CandidateListingCheck

        return CandidateListingCheck(self, check, self.candidate.item_check(principal), report)

    def listed_entity(self, target: dict[str, str], policies: LoadedPolicies | None = None) -> dict[str, Any]:
        """The entity ``build`` gives a listed item (``target``, not a Server). List items are grouped by its
        attributes and parents (P2): keep the two in step (tests/test_listing_decisions.py checks them)."""
        policies = policies or self.store.current
        built = {"uid": target, "attrs": self.learned(target, policies), "parents": [uid("Server", self.server_name)]}
        return merge_entity(policies.static.get((target["type"], target["id"])), built)

    def build(self, principal: Principal, message: Message, *, listing: bool = False,
              resource: dict[str, str] | None = None, action: str | None = None) -> CedarRequest:
        policies = self.store.current
        target = resource or resource_uid(message, self.server_name)
        action_id = action or message.method or ""
        context = context_of(message, principal, listing=listing)

        def make_entities() -> list[dict[str, Any]]:
            server = uid("Server", self.server_name)
            # I7: static entities are found by the principal's id, which names its issuer when there are several.
            entities = [merge_entity(policies.static.get(("User", principal.entity_id)), principal_entity(principal, self.group_claims))]
            entities.append(merge_entity(policies.static.get(("Server", self.server_name)), {"uid": server, "attrs": {}, "parents": []}))
            if target["type"] != "Server":
                # A1: learned attributes (annotations, title) under the static ones, which win.
                built = {"uid": target, "attrs": self.learned(target, policies), "parents": [server]}
                entities.append(merge_entity(policies.static.get((target["type"], target["id"])), built))
            return entities

        # P1: the decision cache's key, without building the entities. Everything the decision reads is a
        # function of these: the principal's entity (attributes, claims, groups, issuer-qualified id) and
        # token type by their digest; the static entities merged in by the policy version; the resource
        # entity by its uid (and the version); the context by method, listing and the arguments as Cedar
        # gets them (their JSON: 1 and "1", true and 1 differ). A resource given in another shape than
        # {type, id} leaves the key unset: the cache then hashes everything.
        key = None
        if len(target) == 2 and "type" in target and "id" in target:
            arguments = json.dumps(context["arguments"]) if context["arguments"] else ""
            said: tuple[str, ...] | bytes = (action_id, target["type"], target["id"], context["method"], arguments)
            if len(arguments) + len(target["id"]) + len(action_id) + len(context["method"]) > 128:
                # The client chooses these lengths: a cache entry stays small (R2). Bytes never equal a tuple.
                said = hashlib.sha256(json.dumps(said).encode()).digest()
            # A1: the tool's learned attributes by their stamp (changes when they do).
            learned = self.catalogue.stamp(target["id"]) if target["type"] == "Tool" else 0
            key = (policies.version, self._principal_digest(principal), listing, said, learned)
        return CedarRequest(
            principal=uid("User", principal.entity_id),
            action=uid("Action", action_id),
            resource=target,
            context=context,
            make_entities=make_entities,
            key=key,
        )

    def _principal_digest(self, principal: Principal) -> bytes:
        key = id(principal)
        digests = self._principal_digests
        entry = digests.get(key)
        if entry is not None and entry[0]() is principal:
            return entry[1]
        entity = principal_entity(principal, self.group_claims)
        digest = hashlib.sha256(json.dumps([entity, principal.token_type], sort_keys=True).encode()).digest()
        if len(digests) >= PRINCIPAL_DIGESTS:
            digests.clear()

        def forget(ref: weakref.ref[Principal]) -> None:
            if digests.get(key, (None,))[0] is ref:  # (a newer principal may hold the id by now)
                del digests[key]

        digests[key] = (weakref.ref(principal, forget), digest)
        return digest

    def decide(self, principal: Principal, message: Message, *, listing: bool = False) -> Decision:
        return self.decide_all(principal, [message], listing=listing)[0]

    def evaluate(self, request: CedarRequest) -> Decision:
        return self.evaluate_all([request])[0]

    def decide_all(self, principal: Principal, messages: list[Message], *, listing: bool = False) -> list[Decision]:
        """One decision per message, the fresh ones made in a single Cedar call (R4: a batch of 50 distinct
        calls holds the loop for about a millisecond, not one Cedar call's overhead per message).

        A2: with ``authorization.tool_changes: deny``, a tools/call of a tool whose definition changed is
        refused whatever the policies say. A5: each decision carries the candidate set's (``candidate``)."""
        decisions = self._policy_decisions(principal, messages, listing)
        candidate = self.candidate
        if candidate is not None and candidate.store.current is not None:
            try:
                others = candidate._policy_decisions(principal, messages, listing)
            except Exception:  # noqa: BLE001 - the candidate set must never change what is enforced
                log.exception("candidate policies failed to decide; enforcement is unaffected")
            else:
                decisions = [self._with_candidate(message, decision, other)
                             for message, decision, other in zip(messages, decisions, others, strict=True)]
        if self.deny_changed_tools:
            decisions = [self._pinned(message, decision) for message, decision in zip(messages, decisions, strict=True)]
        return decisions

    def _policy_decisions(self, principal: Principal, messages: list[Message], listing: bool) -> list[Decision]:
        requests = [self.build(principal, message, listing=listing) for message in messages]
        if len(requests) > 1 and not self._batch_is_safe():
            return [self.evaluate_all([request])[0] for request in requests]
        return self.evaluate_all(requests)

    def _with_candidate(self, message: Message, decision: Decision, candidate: Decision) -> Decision:
        if candidate.allowed != decision.allowed:
            self.count_disagreement(message.method or "")
        return replace(decision, candidate=candidate)

    def count_disagreement(self, method: str, count: int = 1) -> None:
        from gateway.authz.candidates import KNOWN_METHODS

        label = method if method in KNOWN_METHODS else "other"  # a bounded label (gateway.authz.candidates)
        self.disagreements[label] = self.disagreements.get(label, 0) + count

    def _pinned(self, message: Message, decision: Decision) -> Decision:
        if message.method != "tools/call" or message.name is None or not self.catalogue.is_changed(message.name):
            return decision
        return Decision(False, "tool_definition_changed", policy_version=decision.policy_version,
                        candidate=decision.candidate)

    async def decide_all_async(self, principal: Principal, messages: list[Message]) -> list[Decision]:
        """``decide_all`` for the event loop (R4): ``DECISION_PIECE`` messages at a time, yielding the loop
        between pieces (cedarpy holds the GIL while it decides: a thread would hold the loop all the same).
        A policy reload between pieces would mix two versions in one batch: then the batch is decided
        again, whole, under the current one."""
        decisions: list[Decision] = []
        for start in range(0, len(messages), DECISION_PIECE):
            if start:
                await asyncio.sleep(0)
            decisions.extend(self.decide_all(principal, messages[start:start + DECISION_PIECE]))
        if len({decision.policy_version for decision in decisions}) > 1:
            return self.decide_all(principal, messages)
        return decisions

    def _batch_is_safe(self) -> bool:
        """Whether a batch may be decided in one Cedar call. That call sees the union of the requests'
        entities, which a single call would not: a policy that reads another resource's data through a literal
        (``Tool::"a".sensitive``, ``Tool::"a" in ...``) could decide otherwise. Only the principal and the
        server are the same entity in every request of one batch, so only those may be read that way."""
        from gateway.authz.listing_decisions import analysis_of  # (it imports this module)

        analysis = analysis_of(self, self.store.current)
        # Action entities are in the base set (A3), the same in every evaluation: reading them is safe too.
        return analysis is not None and not (analysis.observed - {"User", "Server", "Action"})

    def evaluate_all(self, requests: list[CedarRequest]) -> list[Decision]:
        policies = self.store.current
        decisions: list[Decision | None] = []
        fresh: list[tuple[int, Any, CedarRequest]] = []
        for index, request in enumerate(requests):
            # A decision is a pure function of the policy set (its version covers schema and static entities),
            # the request's entities and the request itself: identical inputs may share one evaluation.
            if request.key is not None:
                key: Any = (policies.version, request.key)
            else:
                delta = json.dumps(request.entities)
                key = hashlib.sha256(f"{policies.version}\x00{delta}\x00{json.dumps(request.as_request())}".encode()).digest()
            cached = self._decisions.get(key)
            decisions.append(cached)
            if cached is None:
                fresh.append((index, key, request))
        if len(fresh) == 1:
            index, key, request = fresh[0]
            decisions[index] = self._remember(key, self._evaluate(policies, request, json.dumps(request.entities)), policies.version)
        elif fresh:
            for (index, key, _), decision in zip(fresh, self._evaluate_batch(policies, [f[2] for f in fresh]), strict=True):
                decisions[index] = self._remember(key, decision, policies.version)
        return [decision for decision in decisions if decision is not None]

    def _evaluate_batch(self, policies: LoadedPolicies, requests: list[CedarRequest]) -> list[Decision]:
        # One entity set for the whole batch: every request's entities, each once (the same uid is the same
        # entity in every request of one principal, built from the same inputs). Callers make sure the union
        # cannot change a decision (decide_all, gateway.authz.listing_decisions).
        union: dict[tuple[str, str], dict[str, Any]] = {}
        for request in requests:
            for entity in request.entities:
                union.setdefault((entity["uid"]["type"], entity["uid"]["id"]), entity)
        delta = json.dumps(list(union.values()))
        try:
            entities = policies.base_entities.with_added_json_str(delta) if policies.base_entities is not None else delta
            results = cedarpy.is_authorized_batch([r.as_request() for r in requests], policies.policy_set, entities)
        except Exception:  # one request's trouble must not decide the others: decide them one by one
            return [self._evaluate(policies, request, json.dumps(request.entities)) for request in requests]
        return [self._decision_of(policies, result) for result in results]

    def _evaluate(self, policies: LoadedPolicies, request: CedarRequest, delta: str) -> Decision:
        try:
            # The base set always holds the Action entities (A3); cloning it costs a few µs.
            entities = policies.base_entities.with_added_json_str(delta) if policies.base_entities is not None else delta
            result = cedarpy.is_authorized(request.as_request(), policies.policy_set, entities)
        except Exception as exc:  # fail closed on anything cedarpy raises
            return Decision(False, "policy_error", errors=(f"{type(exc).__name__}: {exc}",), policy_version=policies.version)
        return self._decision_of(policies, result)

    @staticmethod
    def _decision_of(policies: LoadedPolicies, result: cedarpy.AuthzResult) -> Decision:
        diagnostics = result.diagnostics
        annotations = diagnostics.id_annotations_by_reason
        deciding = tuple(policies.label(pid, annotations.get(pid)) for pid in diagnostics.reasons)
        if diagnostics.errors:
            # Name the erroring policies as authors know them (file:line), not by cedarpy's positional ids;
            # the decision is theirs, not the permit that matched.
            erring = tuple(dict.fromkeys(policies.label(pid) for e in diagnostics.errors for pid in _POLICY_ID.findall(e)))
            errors = tuple(_POLICY_ID.sub(lambda m: policies.label(m.group(1)), e) for e in diagnostics.errors)
            return Decision(False, "policy_error", erring or deciding, errors, policies.version)
        if result.allowed:
            return Decision(True, "allowed", deciding, policy_version=policies.version)
        return Decision(False, "denied_by_policy" if deciding else "no_policy_permits", deciding, policy_version=policies.version)
