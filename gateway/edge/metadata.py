"""D2, D3, S1: RFC 9728 Protected Resource Metadata, built once from configuration and served without a token."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.config import Config
from gateway.edge.challenge import PRM_WELL_KNOWN, prm_url

CACHE_CONTROL = "public, max-age=3600"


def protected_resource_metadata(config: Config) -> dict[str, Any]:
    """D3: ``resource`` is exactly the configured public URL (RFC 9728 §3.3); empty fields are left out."""
    document: dict[str, Any] = {
        "resource": config.server.public_url,
        "authorization_servers": list(config.authorization_servers),
        "bearer_methods_supported": ["header"],
        # S1, RFC 9728 §2: the proof algorithms, and whether every token must be DPoP-bound.
        "dpop_signing_alg_values_supported": list(config.auth.dpop.algorithms),
        "dpop_bound_access_tokens_required": config.auth.dpop.required,
    }
    if config.auth.mtls.trusted_proxies:
        document["tls_client_certificate_bound_access_tokens"] = True  # S3, RFC 9728 §2 (RFC 8705)
    scopes = [s for s in config.resource.scopes_supported if s != "offline_access"]
    if scopes:
        document["scopes_supported"] = scopes
    if config.resource.name:
        document["resource_name"] = config.resource.name
    if config.resource.documentation:
        document["resource_documentation"] = config.resource.documentation
    return document


def metadata_paths(public_url: str) -> tuple[str, ...]:
    """D2: the path-suffixed location, and the root one."""
    suffixed = urlsplit(prm_url(public_url)).path
    return (suffixed,) if suffixed == PRM_WELL_KNOWN else (suffixed, PRM_WELL_KNOWN)


def add_metadata_routes(app: web.Application, config: Config) -> None:
    body = json.dumps(protected_resource_metadata(config), indent=2).encode()
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": CACHE_CONTROL}

    async def serve_metadata(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def preflight(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Methods": "GET, HEAD",
                                                 "Access-Control-Max-Age": "86400"})

    for path in metadata_paths(config.server.public_url):
        app.router.add_get(path, serve_metadata, allow_head=True)
        app.router.add_route("OPTIONS", path, preflight)
