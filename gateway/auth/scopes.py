"""T10: which scopes a request needs (global, per MCP method, per tool) and whether the caller has them."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from gateway.auth.principal import Principal
from gateway.config import AuthConfig
from gateway.errors import InsufficientScope
from gateway.mcp.jsonrpc import Message


class ScopeRequirements:
    def __init__(self, config: AuthConfig):
        self.required = tuple(config.required_scopes)
        self.by_method = {method: tuple(scopes) for method, scopes in config.method_scopes.items()}
        self.tool_exact = {name: tuple(s) for name, s in config.tool_scopes.items() if not _is_glob(name)}
        self.tool_globs = tuple((name, tuple(s)) for name, s in config.tool_scopes.items() if _is_glob(name))

    def needed(self, messages: Iterable[Message] = ()) -> tuple[str, ...]:
        """Every scope the request needs, in a stable order (the challenge lists them all)."""
        scopes = list(self.required)
        for message in messages:
            if message.method is None:
                continue
            scopes.extend(self.by_method.get(message.method, ()))
            if message.method == "tools/call" and message.name is not None:
                scopes.extend(self.tool_exact.get(message.name, ()))
                for pattern, tool_scopes in self.tool_globs:
                    if fnmatch.fnmatchcase(message.name, pattern):
                        scopes.extend(tool_scopes)
        return tuple(dict.fromkeys(scopes))

    def check(self, principal: Principal, messages: Iterable[Message] = ()) -> None:
        needed = self.needed(messages)
        missing = [scope for scope in needed if scope not in principal.scopes]
        if missing:
            raise InsufficientScope("insufficient_scope", f"missing {' '.join(missing)}", required_scopes=needed)


def _is_glob(name: str) -> bool:
    return any(char in name for char in "*?[")
