"""What the upstream has said about its tools, learned from the ``tools/list`` answers the gateway relays.

Today it holds, per tool, the property names of its ``inputSchema``, for one check (I2): an argument key
that is not one of them but equals one after folding (``Table`` for ``table``) is refused. A Go tool
handler binds arguments to a struct case-insensitively, so ``{"Table": "prod_orders"}`` has no ``table``
for the policy and a ``table`` for the server. Only the top level of ``arguments`` is checked.

The catalogue is as trustworthy as the upstream (it is the upstream's own description). It is bounded:
at most ``MAX_TOOLS`` tools of at most ``MAX_PROPERTIES`` properties each; a tool listed again replaces
its entry, and one never listed is simply not checked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.mcp.jsonrpc import MalformedMessage, fold_key

MAX_TOOLS = 10_000
MAX_PROPERTIES = 512


class ToolCatalogue:
    def __init__(self, *, max_tools: int = MAX_TOOLS):
        self._max = max_tools
        # tool name -> {folded property name: property name}; a property name maps to itself too, so a schema
        # with both "a" and "A" accepts both
        self._properties: OrderedDict[str, dict[str, str]] = OrderedDict()

    def learn(self, tools: Iterable[Any]) -> None:
        """Record the tools of one ``tools/list`` answer (a page: other tools are kept)."""
        for tool in tools:
            if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
                continue
            schema = tool.get("inputSchema")
            properties = schema.get("properties") if isinstance(schema, Mapping) else None
            names = [key for key in properties if isinstance(key, str)][:MAX_PROPERTIES] if isinstance(properties, Mapping) else []
            spellings = {fold_key(name): name for name in names}
            spellings.update({name: name for name in names})
            self._properties[tool["name"]] = spellings
            self._properties.move_to_end(tool["name"])
            while len(self._properties) > self._max:
                self._properties.popitem(last=False)

    def check_arguments(self, tool: str, arguments: Mapping[str, Any]) -> None:
        """I2: refuse an argument key spelled differently from a property of the tool's ``inputSchema``."""
        known = self._properties.get(tool)
        if not known:
            return
        for key in arguments:
            if known.get(key) == key:
                continue
            spelled = known.get(fold_key(key))
            if spelled is not None and spelled != key:
                raise MalformedMessage(
                    "member_spelling", f"argument {key[:40]!r} of tool {tool[:60]!r}: its inputSchema says {spelled[:40]!r}")

    def __len__(self) -> int:
        return len(self._properties)
