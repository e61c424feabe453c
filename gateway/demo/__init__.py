"""The demo behind ``mcp-auth-gateway demo``: an MCP server and a development issuer, for trying it out."""
