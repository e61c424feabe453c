"""mcp-auth-gateway: an OAuth resource server and Cedar authorization gateway in front of MCP servers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcp-auth-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
