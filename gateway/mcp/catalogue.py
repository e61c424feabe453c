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

The catalogue is as trustworthy as the upstream (it is the upstream's own description). It is bounded:
at most ``MAX_TOOLS`` tools of at most ``MAX_PROPERTIES`` properties each; a tool listed again replaces
its entry, and one never listed is not checked.
"""

from __future__ import annotations

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


class ToolCatalogue:
    def __init__(self, *, max_tools: int = MAX_TOOLS):
        self._max = max_tools
        # tool name -> its inputSchema as listed, or the facts made of it on the tool's first call: learning
        # is one assignment per tool (P2: a cold list of 5,000 tools), the work is done for tools called.
        self._tools: OrderedDict[str, ToolFacts | Any] = OrderedDict()

    def learn(self, tools: Iterable[Any]) -> None:
        """Record the tools of one ``tools/list`` answer (a page: other tools are kept)."""
        entries = self._tools
        for tool in tools:
            name = tool.get("name") if isinstance(tool, Mapping) else None
            if isinstance(name, str):
                entries[name] = tool.get("inputSchema")
                entries.move_to_end(name)
        while len(entries) > self._max:
            entries.popitem(last=False)

    def facts(self, tool: str) -> ToolFacts | None:
        entry = self._tools.get(tool)
        if entry is None or isinstance(entry, ToolFacts):
            return entry
        facts = self._tools[tool] = facts_of(tool, entry)
        return facts

    def check_call(self, tool: str, arguments: Mapping[str, Any], request_headers: Mapping[str, str]) -> None:
        """I2 and M2 for one ``tools/call``; raises ``MalformedMessage``."""
        facts = self.facts(tool)
        if facts is None:
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
