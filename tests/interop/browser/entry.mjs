// Bundled for the browser by rolldown (test_typescript_sdk.py): the TypeScript SDK's client package as the
// MCP Inspector ships it (@modelcontextprotocol/client), exposed to browser_page.html.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

window.MCP = { Client, StreamableHTTPClientTransport };
