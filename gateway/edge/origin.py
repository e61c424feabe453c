"""E1: the browser ``Origin`` allow-list and CORS for the MCP endpoint.

MCP 2025-11-25 transports: servers MUST validate ``Origin`` (DNS rebinding). A request without ``Origin``
(not from a browser) passes; one from an origin not in ``server.allowed_origins`` gets 403. Preflights
from allowed origins are answered without authentication, and responses expose the headers MCP clients
in browsers must read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.errors import Forbidden

ALLOWED_METHODS = "POST, GET, DELETE"
ALLOWED_REQUEST_HEADERS = (
    "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, Mcp-Method, Mcp-Name, DPoP"
)
EXPOSED_HEADERS = "WWW-Authenticate, Mcp-Session-Id, MCP-Protocol-Version, DPoP-Nonce"
# M2: a tool's x-mcp-header parameters travel as Mcp-Param-{Name}; a browser asks for each by name in its
# preflight. Echo only names the gateway would forward (I5: letters, digits, '-'), at most a few.
_PARAM_HEADER = re.compile(r"mcp-param-[a-z0-9-]{1,64}")
MAX_PARAM_HEADERS = 32


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]):
        allowed = tuple(allowed)
        self.any = "*" in allowed
        self.allowed = frozenset(origin.lower().rstrip("/") for origin in allowed if origin != "*")

    def check(self, origin: str | None) -> str | None:
        """Returns the origin to echo in CORS headers (None for non-browser requests); raises when refused."""
        if origin is None:
            return None
        if self.any or origin.lower().rstrip("/") in self.allowed:
            return origin
        raise Forbidden("origin_not_allowed", f"Origin {origin[:100]!r} is not in server.allowed_origins", message="Origin not allowed")

    @staticmethod
    def response_headers(origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }

    @classmethod
    def preflight_headers(cls, origin: str, requested: str | None = None) -> dict[str, str]:
        return {
            **cls.response_headers(origin),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS + param_headers(requested),
            "Access-Control-Max-Age": "600",
        }


def param_headers(requested: str | None) -> str:
    """M2: the ``Mcp-Param-*`` names of a preflight's ``Access-Control-Request-Headers``, as ``, a, b``."""
    if not requested:
        return ""
    names = [name.strip().lower() for name in requested.split(",", MAX_PARAM_HEADERS * 4)]
    wanted = dict.fromkeys(name for name in names if _PARAM_HEADER.fullmatch(name))
    return "".join(", " + name for name in list(wanted)[:MAX_PARAM_HEADERS])
