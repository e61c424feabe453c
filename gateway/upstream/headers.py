"""Header hygiene in both directions, in one place (U1, I4, I5).

``check_client_headers`` runs at the edge, before anything else: MCP and session headers sent twice, or
spelled with underscores, are refused (400), and so is a second ``Origin`` (403). Which copy would a later
hop read? CGI, WSGI and PHP servers turn ``Mcp_Session_Id`` into ``HTTP_MCP_SESSION_ID``, the same as
``Mcp-Session-Id``, so an underscore spelling would skip the session binding here and be obeyed there.

``upstream_request_headers`` builds what the upstream sees: the client's headers minus every credential,
hop-by-hop header, header the gateway sets itself, and header that claims identity or routing (I5), plus
the gateway's own. Header names with underscores are never forwarded (nginx's ``underscores_in_headers
off`` default, for the same CGI reason). ``client_response_headers`` is the other direction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest, Forbidden

# I4: the MCP transport's own headers; each has one meaning, so each may appear once.
MCP_HEADERS = frozenset({"mcp-session-id", "mcp-method", "mcp-name", "mcp-protocol-version", "last-event-id"})
MCP_PARAM_PREFIX = "mcp-param-"  # MCP 2026-07-28 custom parameter headers, Mcp-Param-{Name}

# RFC 9110 §7.6.1: hop-by-hop fields are meaningful for one connection only.
HOP_BY_HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization",
})

# U1: credentials of the client, and framing the gateway redoes, never pass from the client.
# MCP 2025-11-25 security best practices: servers MUST NOT pass through the token they received.
CLIENT_ONLY_REQUEST_HEADERS = frozenset({
    "authorization", "cookie", "proxy-authorization", "dpop",
    "host", "content-length", "accept-encoding",
    # aiohttp has already decoded a compressed request body; the upstream gets the plain bytes.
    "content-encoding",
})

# I5: headers that claim who the caller is or how the request was routed. Only the gateway may say that
# (it sets X-Forwarded-For/Proto/Host itself); auth proxies (oauth2-proxy, Pomerium), CDNs and rewriting
# front ends use these, and an upstream that trusts one would believe the client.
IDENTITY_CLAIMING_HEADERS = frozenset({
    "forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip", "cf-connecting-ip",
    "fastly-client-ip", "x-original-forwarded-for", "x-envoy-external-address",
    "remote-user", "x-remote-user", "x-user", "x-email",
    "x-original-url", "x-rewrite-url", "x-original-uri", "x-original-host", "x-host", "x-http-method-override",
    # E1 already decided the origin; real MCP SDK servers with DNS-rebinding protection answer 403 to a
    # browser origin they were not told about, which turned every browser client into a 502.
    "origin", "referer",
})
IDENTITY_CLAIMING_PREFIXES = ("x-forwarded-", "x-auth-request-")

# Not passed back to the client: framing is redone by aiohttp; cookies would only come back to be stripped;
# an upstream challenge concerns the gateway's own credentials (U4), never the client.
UPSTREAM_ONLY_RESPONSE_HEADERS = frozenset({
    "content-length", "content-encoding", "set-cookie", "www-authenticate", "server", "date",
    # CORS is the gateway's decision (E1), never the upstream's.
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-headers",
    "access-control-allow-methods", "access-control-expose-headers", "access-control-max-age",
})


def check_client_headers(headers: CIMultiDictProxy[str]) -> None:
    """I4: refuse what two hops could read differently. Raises ``BadRequest`` or ``Forbidden``."""
    seen: set[str] = set()
    origins = 0
    for name, _ in headers.items():  # items(), not keys(): keys() names a header sent twice only once
        lower = name.lower()
        if lower == "origin":
            origins += 1
            continue
        dashed = lower.replace("_", "-")
        if dashed in MCP_HEADERS or dashed.startswith(MCP_PARAM_PREFIX):
            if dashed != lower:
                raise BadRequest("underscore_header", f"{name[:60]!r} is an underscore spelling of an MCP header")
            if lower in seen:
                raise BadRequest("repeated_header", f"{name[:60]} sent more than once")
            seen.add(lower)
    if origins > 1:
        raise Forbidden("multiple_origins", f"{origins} Origin headers", message="Origin not allowed")


def connection_named_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def never_forwarded(extra: Iterable[str] = ()) -> frozenset[str]:
    """The fixed set of request headers never forwarded, plus ``extra`` (``upstream.strip_headers`` and the
    headers the gateway sets itself). Built once per process."""
    return HOP_BY_HOP_HEADERS | CLIENT_ONLY_REQUEST_HEADERS | IDENTITY_CLAIMING_HEADERS | {n.lower() for n in extra}


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    *,
    dropped: frozenset[str],
    remote: str | None,
    public_url: str,
    upstream_host: str,
    add: Mapping[str, str] | None = None,
) -> CIMultiDict[str]:
    """The headers the upstream sees: the client's minus ``dropped`` (see ``never_forwarded``), minus
    identity-claiming prefixes, underscore names and ``Connection``-named headers, plus the gateway's own.
    ``add`` is what the gateway sets (request id, upstream credential, identity), applied last."""
    named = connection_named_headers(client_headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in dropped or "_" in lower or lower in named or lower.startswith(IDENTITY_CLAIMING_PREFIXES):
            continue
        headers.add(name, value)
    public = urlsplit(public_url)
    headers["Host"] = upstream_host
    # Set from what the gateway knows, never from what the client claims (D4's rule applies here too).
    headers["X-Forwarded-For"] = remote or "unknown"
    headers["X-Forwarded-Proto"] = public.scheme
    headers["X-Forwarded-Host"] = public.netloc
    # Plain bytes on the loopback hop: no compression work on either side, and SSE stays unbuffered.
    headers["Accept-Encoding"] = "identity"
    if add:
        for name, value in add.items():
            headers[name] = value
    return headers


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP_HEADERS | UPSTREAM_ONLY_RESPONSE_HEADERS | connection_named_headers(upstream_headers)
    return CIMultiDict((k, v) for k, v in upstream_headers.items() if k.lower() not in dropped)
