"""The MCP endpoint: one request through the stages, in the order that is part of the security design.

    edge ─► credentials ─► token ─► message ─► scopes ─► policy ─► session ─► upstream ─► response

Each stage either hands a richer request on or raises a ``GatewayError`` that ``gateway.edge.responses``
turns into a definite answer. Nothing reaches the upstream before every earlier stage has passed.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.config import Config
from gateway.errors import MethodNotAllowed, PayloadTooLarge
from gateway.upstream.proxy import UpstreamProxy, upstream_request_headers

log = logging.getLogger(__name__)

MCP_METHODS = ("POST", "GET", "DELETE")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes before reading them (Z5: 413)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("body_too_large", f"Content-Length {request.content_length} > {limit}")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class McpEndpoint:
    def __init__(self, config: Config, proxy: UpstreamProxy):
        self.config = config
        self.proxy = proxy

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in MCP_METHODS:
            raise MethodNotAllowed("method_not_allowed", request.method, allowed=MCP_METHODS)
        body = await read_body(request, self.config.server.max_body_bytes) if request.method == "POST" else None
        headers = upstream_request_headers(
            request.headers,
            remote=request.remote,
            public_url=self.config.server.public_url,
            upstream_host=self.proxy.host,
            strip=self.config.upstream.identity_headers.keys(),
        )
        return await self.proxy.forward(request, body=body, headers=headers)
