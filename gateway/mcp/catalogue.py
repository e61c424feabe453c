"""What the upstream has said about its tools, learned from the ``tools/list`` answers the gateway relays.

Per tool, two facts of its ``inputSchema``, each for one check on ``tools/call``:

- its top-level property names (I2): an argument key that is not one of them but equals one after
  folding (``Table`` for ``table``) is refused. A Go tool handler binds arguments to a struct
  case-insensitively, so ``{"Table": "prod_orders"}`` has no ``table`` for the policy and a ``table`` for
  the server;
- its ``x-mcp-header`` annotations (M2, MCP 2026-07-28 "Custom Headers from Tool Parameters"): for each,
  the property path and the header ``Mcp-Param-{Name}``. A value present in the arguments needs the
  header, and the header (after ``=?base64?...?=`` decoding) must say what the body says; a header
  without a value in the body is a mismatch too. Else ``400`` with JSON-RPC ``-32020``. A routing hop
  would act on the header and the server on the body: they must agree. ``Mcp-Param-*`` headers no tool
  declares pass untouched (the spec: intermediaries forward what they do not recognise).

Annotations are validated as the specification says (a token name, unique without regard to case, on an
integer, string or boolean property reachable through ``properties`` alone); a tool with an invalid one is
logged and its headers are not checked (conforming clients drop such a tool from their list).

Per tool too, for policies (A1): its ``annotations`` hints (``readOnlyHint``, ``destructiveHint``,
``idempotentHint``, ``openWorldHint``, booleans only) and its ``title``, which ``Authorizer`` puts on the
``Tool`` entity. A tool never listed has none of them. Each tool has a *stamp* that changes when these do,
so a cached decision made under other attributes is never reused, and the catalogue a *generation* that
steps when a known tool's attributes change (list memos key on it).

And its definition (A2): description, inputSchema, outputSchema and annotations (in every spelling a
case-insensitive client reads as one of them: ``Description`` too). The first definition seen
is the accepted one, unless the pins file (``authorization.tool_pins``) names the tool; a listing with
another definition is a change: logged (which parts, both digests, the command that accepts it), returned
to the caller (the endpoint audits it), counted, and with ``tool_changes: deny`` its calls are refused
until an operator accepts a definition (the pins file) or the gateway restarts: the accepted definition
listed again does not clear it (an upstream can show each session another catalogue).
A tool listed again unchanged costs one ``==``; digests are made only for tools that changed or are
pinned by file. ``==`` equates ``1``, ``1.0`` and ``true``: such a respelling is not seen as a change
(learned hints keep booleans only, so a ``readOnlyHint`` respelled ``1`` keeps its first reading).

The catalogue is as trustworthy as the upstream (it is the upstream's own description). It is bounded:
at most ``MAX_TOOLS`` tools of at most ``MAX_PROPERTIES`` properties each, each held as the upstream listed
it (so within ``upstream.max_list_bytes``); a tool listed again replaces its entry, and one never listed
is not checked. Past ``MAX_TOOLS`` the tool listed longest ago is forgotten, its accepted digest and whether
it changed kept (at most ``MAX_FORGOTTEN_PINS``) so that flooding the list can neither reset a pin nor
clear a change. Past that bound too (one list of 60,000 tiny tools is 2 MB), the gateway can no longer
tell a new tool from a forgotten one, so every tool it sees for the first time after that counts as
changed (``forgot_pins``; fail closed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.mcp.jsonrpc import MAX_SAFE_INTEGER, MalformedMessage, decode_header_value, fold_key

log = logging.getLogger(__name__)

MAX_TOOLS = 10_000
MAX_PROPERTIES = 512
MAX_SCHEMA_NODES = 10_000  # a schema walk visits at most this many sub-schemas
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1 tchar
_HEADER_TYPES = ("string", "integer", "boolean")


@dataclass(frozen=True, slots=True)
class ParamHeader:
    path: tuple[str, ...]  # the chain of properties keys from the arguments' root
    header: str  # the full header name, Mcp-Param-{Name}
    type: str


@dataclass(frozen=True, slots=True)
class ToolFacts:
    spellings: Mapping[str, str]  # folded property name (and the name itself) -> property name
    headers: tuple[ParamHeader, ...] = ()


class InvalidAnnotation(ValueError):
    pass


def param_headers(schema: Any) -> tuple[ParamHeader, ...]:
    """The ``x-mcp-header`` annotations of one ``inputSchema``; ``InvalidAnnotation`` for a bad one."""
    found: list[ParamHeader] = []
    stack: list[tuple[Any, tuple[str, ...] | None]] = [(schema, ())]  # (sub-schema, properties path or None)
    visited = 0
    while stack:
        node, path = stack.pop()
        visited += 1
        if visited > MAX_SCHEMA_NODES:
            raise InvalidAnnotation("schema too large to check")
        if isinstance(node, list):
            stack.extend((item, None) for item in node)
            continue
        if not isinstance(node, Mapping):
            continue
        if "x-mcp-header" in node:
            name = node["x-mcp-header"]
            if not path:  # on the root, or under items, oneOf, $defs, ...
                raise InvalidAnnotation("x-mcp-header on a property not reachable through properties alone")
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise InvalidAnnotation(f"x-mcp-header {str(name)[:40]!r} is not a header token")
            if node.get("type") not in _HEADER_TYPES:
                raise InvalidAnnotation(f"x-mcp-header {name!r} on a property of type {node.get('type')!r}")
            found.append(ParamHeader(path, f"Mcp-Param-{name}", node["type"]))
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping) and path is not None:
                stack.extend((sub, (*path, str(key_name))) for key_name, sub in value.items())
            elif isinstance(value, (Mapping, list)):
                stack.append((value, None))  # items, oneOf, $defs, ...: not statically reachable
    lowered = [header.header.lower() for header in found]
    if len(lowered) != len(set(lowered)):
        raise InvalidAnnotation("two x-mcp-header values equal without regard to case")
    return tuple(found)


def header_text(value: Any, kind: str) -> str | None:
    """The string a client puts in the header for ``value`` (spec "Value Encoding"), before Base64."""
    if kind == "boolean":
        return ("true" if value else "false") if isinstance(value, bool) else None
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return None
        return str(int(value)) if abs(value) <= MAX_SAFE_INTEGER else None
    return value if isinstance(value, str) else None


def facts_of(name: str, schema: Any) -> ToolFacts:
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    names = [key for key in properties if isinstance(key, str)][:MAX_PROPERTIES] if isinstance(properties, Mapping) else []
    spellings = {fold_key(key): key for key in names}
    spellings.update({key: key for key in names})
    try:
        headers = param_headers(schema)
    except InvalidAnnotation as exc:
        log.warning("tool %r: invalid x-mcp-header annotation (%s); its Mcp-Param headers are not checked", name[:80], exc)
        headers = ()
    return ToolFacts(spellings, headers)


# A1: the annotation hints a policy may read (booleans only; any other value is not learned).
HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
# A2: what a tool's definition is: what a client shows its model and what it sends. ``name`` is the key.
DEFINITION_PARTS = ("description", "inputSchema", "outputSchema", "annotations")
UNREADABLE = "unreadable"  # the pin of a tool whose definition could not be compared: never matches
MAX_FORGOTTEN_PINS = 50_000  # digests of tools evicted past MAX_TOOLS, kept so a flood cannot reset a pin
FORGOTTEN = "forgotten"  # the pin of a tool first seen after accepted digests were dropped: never matches


def learned_attributes(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A1: the attributes a listed tool gives its ``Tool`` entity: ``annotations`` (a record of the boolean
    hints the upstream sent, ``{}`` when none) and ``title`` (the tool's ``title``, else ``annotations.title``,
    when a string)."""
    annotations = tool.get("annotations")
    if not isinstance(annotations, Mapping):
        annotations = {}
    attrs: dict[str, Any] = {"annotations": {hint: value for hint in HINTS if type(value := annotations.get(hint)) is bool}}
    title = tool.get("title")
    if not isinstance(title, str):
        title = annotations.get("title")
    if isinstance(title, str):
        attrs["title"] = title
    return attrs


_FOLDED_PARTS = {fold_key(part): part for part in DEFINITION_PARTS}


def definition_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The members that make the definition, each spelling a lenient client could read as one of
    ``DEFINITION_PARTS`` included: Go's ``encoding/json`` takes ``Description`` beside ``description`` for the
    description (the later one wins), so adding one is a change like any other (I2's folding)."""
    return {key: value for key, value in tool.items() if key in DEFINITION_PARTS or fold_key(key) in _FOLDED_PARTS}


def _spellings(tool: Mapping[str, Any], part: str) -> dict[str, Any]:
    folded = fold_key(part)
    return {key: value for key, value in tool.items() if key == part or fold_key(key) == folded}


def definition_digest(tool: Mapping[str, Any]) -> str:
    """A2: ``sha256:<hex>`` of the canonical JSON (sorted keys, no spaces, UTF-8) of the tool's description,
    inputSchema, outputSchema and annotations (absent parts left out). ``mcp-auth-gateway pins`` writes these."""
    canonical = json.dumps(definition_of(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class DefinitionChange:
    """A2: a tool listed with another definition than the one accepted for it."""

    tool: str
    parts: tuple[str, ...]  # which of DEFINITION_PARTS differ from the previous listing
    digest: str  # the definition now listed
    accepted: str  # the accepted (pinned) one: from the pins file, else as first seen
    changed: bool  # False: the listed definition was accepted (a pins file naming it)


class _Entry:
    """One tool as last listed. ``facts`` and ``attrs`` are made on first use (P2: learning a cold list of
    5,000 tools is one assignment per tool); ``pin`` is None while the definition is the one first seen."""

    __slots__ = ("listed", "facts", "attrs", "stamp", "pin", "changed")

    def __init__(self, listed: Mapping[str, Any], stamp: int, pin: str | None = None, changed: bool = False):
        self.listed = listed
        self.facts: ToolFacts | None = None
        self.attrs: dict[str, Any] | None = None
        self.stamp = stamp
        self.pin = pin
        self.changed = changed

    def learned(self) -> dict[str, Any]:
        if self.attrs is None:
            self.attrs = learned_attributes(self.listed)
        return self.attrs


class ToolCatalogue:
    """What the upstream's ``tools/list`` answers said of each tool, the latest answer per tool winning
    (a list page replaces the entries of the tools it lists; the others are kept)."""

    def __init__(self, *, max_tools: int = MAX_TOOLS, max_forgotten: int = MAX_FORGOTTEN_PINS):
        self._max = max_tools
        self._max_forgotten = max_forgotten
        # A2: set once an evicted tool's accepted digest had to be dropped (more tools than both bounds were
        # listed): a tool seen "for the first time" may then be one whose pin was dropped, so from then on
        # every first sight not pinned by file counts as changed (until accepted, or a restart).
        self.forgot_pins = False
        self._folded_names: dict[str, str] | None = None  # fold_key(name) -> name; rebuilt when names change
        self._tools: OrderedDict[str, _Entry] = OrderedDict()
        self._stamps = itertools.count(1)
        self.generation = 0  # +1 whenever a known tool's learned attributes change (list memos key on it)
        self.pins: Mapping[str, str] = {}  # A2: tool name -> accepted digest, from authorization.tool_pins
        # Evicted tools: (accepted digest, changed). A changed one stays refused while forgotten (bounded).
        self._forgotten: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self.changes_seen = 0  # A2: definition changes seen (a metric)
        self.deny_changed = False  # authorization.tool_changes: deny (only changes the log's wording)

    def learn(self, tools: Iterable[Any]) -> list[DefinitionChange]:
        """Record the tools of one ``tools/list`` answer; returns the definition changes it shows (A2)."""
        entries = self._tools
        changes: list[DefinitionChange] = []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, Mapping) else None
            if not isinstance(name, str):
                continue
            entry = entries.get(name)
            try:
                if entry is None:
                    # No generation step: nothing was decided with this tool's attributes before it was seen.
                    entries[name] = self._first_sight(name, tool, changes)
                    self._folded_names = None
                    continue
                entries.move_to_end(name)
                if entry.listed == tool:  # the common case: listed again unchanged (see the module docstring)
                    continue
                self._relisted(name, entry, tool, changes)
            except (RecursionError, ValueError, TypeError) as exc:
                # Nested too deeply to compare or digest: fail closed, as a changed definition.
                log.warning("tool %r: its definition cannot be compared (%s); treated as changed", name[:80], type(exc).__name__)
                entries[name] = _Entry(tool, next(self._stamps), UNREADABLE, True)
                self.generation += 1
                self._folded_names = None  # (the name may be new)
        while len(entries) > self._max:
            self._forget(*entries.popitem(last=False))
            self._folded_names = None
        return changes

    def _first_sight(self, name: str, tool: Mapping[str, Any], changes: list[DefinitionChange]) -> _Entry:
        pinned, was_changed = self._forgotten.pop(name, (None, False))
        accepted = self.pins.get(name) or pinned
        if accepted is None:
            # Not reported one by one: the flood that set forgot_pins may list thousands (one error said why).
            return _Entry(tool, next(self._stamps), FORGOTTEN, True) if self.forgot_pins else _Entry(tool, next(self._stamps))
        digest = definition_digest(tool)
        entry = _Entry(tool, next(self._stamps), accepted, was_changed or digest != accepted)
        if digest != accepted:
            self._report(DefinitionChange(name, (), digest, accepted, True), changes)
        return entry

    def _relisted(self, name: str, entry: _Entry, tool: Mapping[str, Any], changes: list[DefinitionChange]) -> None:
        old = entry.listed
        parts = tuple(part for part in DEFINITION_PARTS if _spellings(old, part) != _spellings(tool, part))
        if parts:
            accepted = entry.pin or definition_digest(old)
            digest = definition_digest(tool)
            # (== also differs for NaN, which the digest keeps equal.) A changed tool stays changed when the
            # accepted definition is listed again: only an operator accepts (set_pins) or a restart. Else an
            # upstream that shows the new definition to one session and the old one to the next (or
            # alternates) would have the changed one's calls pass while its clients hold the new one.
            entry.pin = accepted
            if digest != definition_digest(old) and digest != accepted:
                entry.changed = True
                self._report(DefinitionChange(name, parts, digest, accepted, True), changes)
        before = entry.learned()
        entry.listed, entry.facts, entry.attrs = tool, None, None
        if entry.learned() != before:
            entry.stamp = next(self._stamps)
            self.generation += 1

    def _forget(self, name: str, entry: _Entry) -> None:
        try:
            self._forgotten[name] = (entry.pin or definition_digest(entry.listed), entry.changed)
        except (RecursionError, ValueError, TypeError):
            self._forgotten[name] = (UNREADABLE, True)
        while len(self._forgotten) > self._max_forgotten:
            self._forgotten.popitem(last=False)
            if not self.forgot_pins:
                self.forgot_pins = True
                log.error("the upstream listed more tools than the gateway remembers (%d listed, %d forgotten): "
                          "accepted definitions were dropped, so every tool first seen from now on counts as "
                          "changed until accepted (authorization.tool_pins) or a restart", self._max, self._max_forgotten,
                          extra={"fields": {"reason": "tool_pins_forgotten"}})

    def _report(self, change: DefinitionChange, changes: list[DefinitionChange]) -> None:
        changes.append(change)
        name = change.tool[:80]
        if not change.changed:
            log.warning("tool %r: its listed definition is accepted now (%s)", name, change.digest,
                        extra={"fields": {"tool": name, "digest": change.digest}})
            return
        self.changes_seen += 1
        what = ", ".join(change.parts) if change.parts else "its definition differs from the pinned one"
        consequence = ("calls to it are refused (authorization.tool_changes: deny) until it is accepted"
                       if self.deny_changed else "calls to it are still allowed (authorization.tool_changes: warn)")
        # The name is the upstream's: it goes into the suggested command only when it is plain and whole.
        plain = change.tool == name and re.fullmatch(r"[A-Za-z0-9_.:/-]+", change.tool) is not None
        command = f"--tool '{change.tool}={change.digest}'" if plain else "--tools-list FILE (a reviewed tools/list answer)"
        log.warning("tool %r changed its definition (%s): listed %s, accepted %s; %s: "
                    "mcp-auth-gateway pins accept %s", name, what, change.digest, change.accepted, consequence, command,
                    extra={"fields": {"tool": name, "changed_parts": list(change.parts), "digest": change.digest,
                                      "accepted_digest": change.accepted}})

    def set_pins(self, pins: Mapping[str, str]) -> list[DefinitionChange]:
        """A2: a new pins file. Tools it names with a new digest are judged against it now (that is what
        accepts a change); the others keep their state: accepting one tool accepts no other."""
        before, self.pins = self.pins, pins
        changes: list[DefinitionChange] = []
        for name, accepted in pins.items():
            if before.get(name) == accepted:
                continue
            entry = self._tools.get(name)
            if entry is None:
                if name in self._forgotten:  # judged against the new pin when listed again
                    self._forgotten[name] = (accepted, False)
                continue
            try:
                digest = definition_digest(entry.listed)
            except (RecursionError, ValueError, TypeError):
                digest = UNREADABLE  # never equal to a pin: fail closed
            was_changed, entry.pin, entry.changed = entry.changed, accepted, digest != accepted
            if entry.changed != was_changed:
                self._report(DefinitionChange(name, (), digest, accepted, entry.changed), changes)
        return changes

    def is_changed(self, tool: str) -> bool:
        """A2: whether the tool was listed with another definition than the accepted one since it was last
        accepted (also while evicted: a flood of other tools must not clear it)."""
        entry = self._tools.get(tool)
        if entry is not None:
            return entry.changed
        forgotten = self._forgotten.get(tool)
        return forgotten is not None and forgotten[1]

    def attributes(self, tool: str) -> dict[str, Any] | None:
        """A1: the learned attributes of a listed tool (do not change them), None for one never listed."""
        entry = self._tools.get(tool)
        return entry.learned() if entry is not None else None

    def stamp(self, tool: str) -> int:
        """Changes whenever the tool's learned attributes do (0: never listed): decision caches key on it."""
        entry = self._tools.get(tool)
        return entry.stamp if entry is not None else 0

    def digests(self) -> dict[str, str]:
        """A2: each known tool's current definition digest (for ``pins accept``)."""
        return {name: definition_digest(entry.listed) for name, entry in self._tools.items() if entry.pin != UNREADABLE}

    def facts(self, tool: str) -> ToolFacts | None:
        entry = self._tools.get(tool)
        if entry is None:
            return None
        if entry.facts is None:
            entry.facts = facts_of(tool, entry.listed.get("inputSchema"))
        return entry.facts

    def listed_spelling(self, tool: str) -> str | None:
        """I2 for tool names: the listed tool that ``tool`` (listed itself or not) folds equal to, if any.
        Made on the first call of an unlisted name after the names changed (O(tools) then, O(1) after)."""
        if self._folded_names is None:
            self._folded_names = {fold_key(name): name for name in self._tools}
        return self._folded_names.get(fold_key(tool))

    def check_call(self, tool: str, arguments: Mapping[str, Any], request_headers: Mapping[str, str]) -> None:
        """I2 and M2 for one ``tools/call``; raises ``MalformedMessage``.

        A name that is not listed but folds equal to a listed one (``Delete_Records`` for
        ``delete_records``) is refused: servers that find tools case-insensitively (a .NET
        ``OrdinalIgnoreCase`` registry) run the listed tool, while policies, pins (A2), annotations (A1) and
        step-up rules (A6) would judge a tool nobody listed."""
        facts = self.facts(tool)
        if facts is None:
            spelled = self.listed_spelling(tool) if self._tools else None
            if spelled is not None:
                raise MalformedMessage("member_spelling", f"tool name {tool[:60]!r}: the upstream lists {spelled[:60]!r}")
            return
        for key in arguments:
            if facts.spellings.get(key) == key:
                continue
            spelled = facts.spellings.get(fold_key(key))
            if spelled is not None:
                raise MalformedMessage(
                    "member_spelling", f"argument {key[:40]!r} of tool {tool[:60]!r}: its inputSchema says {spelled[:40]!r}")
        for declared in facts.headers:
            self._check_param_header(tool, declared, arguments, request_headers.get(declared.header))

    @staticmethod
    def _check_param_header(tool: str, declared: ParamHeader, arguments: Mapping[str, Any], sent: str | None) -> None:
        value: Any = arguments
        for step in declared.path:
            value = value.get(step) if isinstance(value, Mapping) else None
        if value is None:
            if sent is not None:
                raise MalformedMessage("param_header_mismatch", f"{declared.header} sent for {tool[:60]!r} without the "
                                       "argument it mirrors", header_mismatch=True)
            return
        if sent is None:
            raise MalformedMessage("param_header_missing", f"{declared.header} is required for {tool[:60]!r}", header_mismatch=True)
        expected, decoded = header_text(value, declared.type), decode_header_value(sent)
        if declared.type == "integer" and decoded is not None and expected is not None:
            matches = re.fullmatch(r"-?[0-9]+", decoded) is not None and int(decoded) == int(expected)  # numerically
        else:
            matches = expected is not None and decoded == expected
        if not matches:
            raise MalformedMessage("param_header_mismatch", f"{declared.header} does not match the argument of "
                                   f"{tool[:60]!r}", header_mismatch=True)

    def __len__(self) -> int:
        return len(self._tools)
