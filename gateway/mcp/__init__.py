"""The MCP wire format: JSON-RPC messages, Server-Sent Events, list results. No aiohttp here."""
