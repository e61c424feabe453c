"""Header hygiene in both directions, in one place (U1, I4, I5).

``check_client_headers`` runs at the edge, before anything else: MCP and session headers sent twice,
spelled with anything but dashes between the words, or with a value that is not printable ASCII, are
refused (400), and so is a second ``Origin`` (403). Which copy would a later hop read? CGI, WSGI and PHP
servers turn ``Mcp_Session_Id`` (and PHP ``Mcp.Session.Id``) into ``HTTP_MCP_SESSION_ID``, the same as
``Mcp-Session-Id``, so such a spelling would skip the session binding here and be obeyed there.

``upstream_request_headers`` builds what the upstream sees: the client's headers minus every credential,
hop-by-hop header, header the gateway sets itself, and header that claims identity or routing (I5), plus
the gateway's own. Only names of letters, digits and dashes are forwarded (nginx drops underscores by
default, ``underscores_in_headers off``, for the same CGI reason), and only ASCII values: aiohttp's client
would silently drop other bytes, so the upstream would read another value than the one that arrived.
``client_response_headers`` is the other direction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest, Forbidden, UnsupportedMediaType

# I4: the MCP transport's own headers; each has one meaning, so each may appear once.
MCP_HEADERS = frozenset({"mcp-session-id", "mcp-method", "mcp-name", "mcp-protocol-version", "last-event-id"})
MCP_PARAM_PREFIX = "mcp-param-"  # MCP 2026-07-28 custom parameter headers, Mcp-Param-{Name}
# A header name the way CGI-style servers compare it: anything but letters and digits is a separator.
_SEPARATORS = re.compile(r"[^a-z0-9]")
_FORWARDABLE_NAME = re.compile(r"[A-Za-z0-9-]+")

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
    "forwarded", "x-forwarded", "forwarded-for", "client-ip", "via", "x-real-ip", "true-client-ip",
    "x-cluster-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-original-forwarded-for",
    "remote-user", "x-remote-user", "x-user", "x-email", "x-userinfo", "x-webauth-user",
    "x-original-url", "x-rewrite-url", "x-original-uri", "x-original-host", "x-host",
    "x-http-method-override", "x-http-method", "x-method-override",
    # E1 already decided the origin; real MCP SDK servers with DNS-rebinding protection answer 403 to a
    # browser origin they were not told about, which turned every browser client into a 502.
    "origin", "referer",
})
IDENTITY_CLAIMING_PREFIXES = (
    "x-forwarded-", "forwarded-", "x-auth-", "x-authenticated-", "x-client-", "x-ssl-", "ssl-client-",
    "x-envoy-", "x-amzn-oidc-", "x-ms-client-principal", "x-goog-authenticated-", "x-goog-iap-",
    "cf-access-", "x-pomerium-", "x-consumer-", "x-credential-", "x-webauth-",
)

# O2: W3C Trace Context is never copied as sent: the gateway sets it itself, either its own span's context
# (tracing on) or the client's re-serialized once it has parsed (gateway.observe.tracing), so a malformed,
# repeated or oversized value never reaches a tracer upstream that may read it differently.
TRACE_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate"})
# W3C baggage is free-form key/value data a client makes up; the gateway neither parses nor decides it.
UNPARSED_CONTEXT_HEADERS = frozenset({"baggage"})

# Not passed back to the client: framing is redone by aiohttp; cookies would only come back to be stripped;
# an upstream challenge concerns the gateway's own credentials (U4), never the client.
UPSTREAM_ONLY_RESPONSE_HEADERS = frozenset({
    "content-length", "content-encoding", "set-cookie", "www-authenticate", "server", "date",
    # S1: a DPoP nonce is the gateway's (its own proofs' check); an upstream's would make the client put a
    # nonce into proofs for the gateway that the gateway never issued.
    "dpop-nonce",
    # CORS is the gateway's decision (E1), never the upstream's.
    "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-headers",
    "access-control-allow-methods", "access-control-expose-headers", "access-control-max-age",
})


# P1: header names as CGI-style servers compare them, by lower-cased name (names repeat on every request).
_DASHED: dict[str, str] = {}
_DASHED_MAX = 4096


def check_client_headers(headers: CIMultiDictProxy[str]) -> None:
    """I4: refuse what two hops could read differently. Raises ``BadRequest`` or ``Forbidden``."""
    seen: set[str] = set()
    origins = 0
    for name, value in headers.items():  # items(), not keys(): keys() names a header sent twice only once
        lower = name.lower()
        if lower == "origin":
            origins += 1
            continue
        if lower == "content-encoding" and value.strip().lower() != "identity":
            # MCP clients do not compress requests. Refusing them keeps zlib off the request path: no
            # decompression bombs, no half-decoded bodies, and the bytes decided are the bytes received.
            raise UnsupportedMediaType("content_encoding", f"Content-Encoding {value[:30]!r} (requests are not decompressed)")
        dashed = _DASHED.get(lower)
        if dashed is None:
            dashed = _SEPARATORS.sub("-", lower)
            if len(_DASHED) < _DASHED_MAX:
                _DASHED[lower] = dashed
        if dashed in MCP_HEADERS or dashed.startswith(MCP_PARAM_PREFIX):
            if dashed != lower:
                raise BadRequest("underscore_header", f"{name[:60]!r} is another spelling of an MCP header")
            if lower in seen:
                raise BadRequest("repeated_header", f"{name[:60]} sent more than once")
            if not (value.isascii() and value.isprintable()) or (lower == "mcp-session-id" and " " in value):
                # MCP: a session id is visible ASCII; other values travel =?base64?...?= when they are not ASCII.
                raise BadRequest("header_value", f"{name[:60]} has a value that is not printable ASCII")
            seen.add(lower)
    if origins > 1:
        raise Forbidden("multiple_origins", f"{origins} Origin headers", message="Origin not allowed")


def connection_named_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    if "Connection" not in headers:
        return set()
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def never_forwarded(extra: Iterable[str] = ()) -> frozenset[str]:
    """The fixed set of request headers never forwarded, plus ``extra`` (``upstream.strip_headers`` and the
    headers the gateway sets itself). Built once per process."""
    return (HOP_BY_HOP_HEADERS | CLIENT_ONLY_REQUEST_HEADERS | IDENTITY_CLAIMING_HEADERS | TRACE_CONTEXT_HEADERS
            | UNPARSED_CONTEXT_HEADERS | {n.lower() for n in extra})


# P1: what ``upstream_request_headers`` decided about a header name, by the name as sent (names repeat on
# every request): True to forward it, False to drop it. Only decisions that depend on nothing but the
# name and the ``dropped`` set are kept; Connection-named headers are checked on every request.
_NAME_VERDICTS: dict[tuple[frozenset[str], str], bool] = {}
_SET_BY_GATEWAY = frozenset({"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "accept-encoding"})
_NAME_VERDICTS_MAX = 4096


def _forwardable_name(name: str, dropped: frozenset[str]) -> bool:
    key = (dropped, name)
    verdict = _NAME_VERDICTS.get(key)
    if verdict is None:
        lower = name.lower()
        verdict = not (lower in dropped or lower in _SET_BY_GATEWAY or lower.startswith(IDENTITY_CLAIMING_PREFIXES)) \
            and _FORWARDABLE_NAME.fullmatch(name) is not None
        if len(_NAME_VERDICTS) < _NAME_VERDICTS_MAX:
            _NAME_VERDICTS[key] = verdict
    return verdict


def _forwarded_parts(public_url: str) -> tuple[str, str]:
    public = urlsplit(public_url)
    return public.scheme, public.netloc


_PUBLIC_PARTS: dict[str, tuple[str, str]] = {}


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
    kept = [(name, value) for name, value in client_headers.items()
            if _forwardable_name(name, dropped) and value.isascii() and (not named or name.lower() not in named)]
    parts = _PUBLIC_PARTS.get(public_url)
    if parts is None:
        parts = _PUBLIC_PARTS[public_url] = _forwarded_parts(public_url)  # one configured URL per process
    # The gateway's own, none of which a client's header can be (_SET_BY_GATEWAY is never forwarded).
    kept += (
        ("Host", upstream_host),
        # Set from what the gateway knows, never from what the client claims (D4's rule applies here too).
        ("X-Forwarded-For", remote or "unknown"),
        ("X-Forwarded-Proto", parts[0]),
        ("X-Forwarded-Host", parts[1]),
        # Plain bytes on the loopback hop: no compression work on either side, and SSE stays unbuffered.
        ("Accept-Encoding", "identity"),
    )
    headers: CIMultiDict[str] = CIMultiDict(kept)
    if add:
        for name, value in add.items():
            headers[name] = value
    return headers


_NEVER_RETURNED = HOP_BY_HOP_HEADERS | UPSTREAM_ONLY_RESPONSE_HEADERS


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    named = connection_named_headers(upstream_headers)
    dropped = _NEVER_RETURNED | named if named else _NEVER_RETURNED
    return CIMultiDict([(k, v) for k, v in upstream_headers.items() if k.lower() not in dropped])
