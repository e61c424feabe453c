"""The MCP lists, in one table: what a list is called, where its items are, and how each item is decided.

Z4 (cedar.md): a listed item is checked as if it were used, with empty arguments: a tool as ``tools/call``
on ``Tool::"<name>"``, a prompt as ``prompts/get``, a resource or a resource template as ``resources/read``
on its URI. The list filter (gateway.mcp.listing) reads the first three columns, the policy point
(gateway.authz) the last two.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class McpList:
    method: str  # the list method: tools/list
    result_key: str  # the result member that holds the items: tools
    item_key: str  # the item member that names one: name
    use_method: str  # the item is decided as this method: tools/call
    use_param: str  # with its name in this parameter: name


LISTS = (
    McpList("tools/list", "tools", "name", "tools/call", "name"),
    McpList("prompts/list", "prompts", "name", "prompts/get", "name"),
    McpList("resources/list", "resources", "uri", "resources/read", "uri"),
    McpList("resources/templates/list", "resourceTemplates", "uriTemplate", "resources/read", "uri"),
)

# Views of the table for the two readers.
LIST_RESULTS = {entry.result_key: (entry.method, entry.item_key) for entry in LISTS}  # result key -> (method, item key)
LIST_CHECKS = {entry.method: (entry.use_method, entry.use_param) for entry in LISTS}  # method -> (use method, param)
LIST_METHODS = frozenset(LIST_CHECKS)
