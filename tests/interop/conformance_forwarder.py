"""A tiny forwarding proxy that adds one bearer token: for MCP clients that cannot send one.

``conformance server --url URL`` (npm @modelcontextprotocol/conformance) has no way to send an
``Authorization`` header, so it cannot talk to the gateway. This forwarder listens on 127.0.0.1, adds
``Authorization: Bearer <token>`` to every request and forwards method, path, query, headers (``Host``
included) and body to the target; the response (status, headers, body) is streamed back chunk by chunk,
so SSE events arrive when the target sends them. It never refreshes the token.

Only hop-by-hop headers are dropped. Bodies stay encoded as they were (no decompression), and a client's
own ``Authorization`` header is replaced.

In-process::

    runner, url = await start_forwarder("http://127.0.0.1:8080", token)   # url: http://127.0.0.1:<port>
    ...
    await runner.cleanup()

As a process (the token comes from the environment, never from the command line)::

    FORWARD_TOKEN=... python tests/interop/conformance_forwarder.py --target http://127.0.0.1:8080 --port 9000
"""

from __future__ import annotations

import argparse
import os
import sys

import aiohttp
from aiohttp import web

# Headers aiohttp would add on its own when the client sent none: send only what the client sent.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})

TARGET = web.AppKey("target", str)
TOKEN = web.AppKey("token", str)
HTTP = web.AppKey("http", aiohttp.ClientSession)
FORWARDED = web.AppKey("forwarded", list)


def _request_headers(request: web.Request, token: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in ("authorization", "content-length"):
            continue
        headers[name] = value  # repeated headers are rare in MCP; the last one wins
    headers["Authorization"] = f"Bearer {token}"
    return headers


def _response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length"]


async def _forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await request.read()
    url = app[TARGET] + request.rel_url.raw_path_qs
    app[FORWARDED].append((request.method, request.rel_url.raw_path_qs))
    try:
        upstream = await app[HTTP].request(request.method, url, headers=_request_headers(request, app[TOKEN]),
                                           data=body if body else None, allow_redirects=False,
                                           skip_auto_headers=NO_AUTO_HEADERS)
    except aiohttp.ClientError as exc:
        return web.Response(status=502, text=f"forwarder: {type(exc).__name__}: {exc}")
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in _response_headers(upstream):
            response.headers.add(name, value)
        if request.method == "HEAD" or upstream.status in (204, 304):
            await response.prepare(request)
            return response
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away (it closed an SSE stream): nothing left to deliver
        return response
    finally:
        upstream.release()


async def _open(app: web.Application):
    # No total timeout (SSE streams stay open), no decompression (bytes pass as they are), no cookies.
    app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                      auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[HTTP].close()


def make_app(target: str, token: str) -> web.Application:
    """``target`` is an origin such as http://127.0.0.1:8080 (a path in it is kept as a prefix)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[TARGET] = target.rstrip("/")
    app[TOKEN] = token
    app[FORWARDED] = []
    app.cleanup_ctx.append(_open)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def start_forwarder(target: str, token: str, port: int = 0) -> tuple[web.AppRunner, str]:
    """Starts the forwarder on 127.0.0.1:<port> (0: any free port); returns the runner and its base URL."""
    # handler_cancellation: when the client goes away (an SSE stream closed), the forwarded request is
    # cancelled too, so the target sees the disconnect.
    runner = web.AppRunner(make_app(target, token), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{host}:{bound_port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="origin to forward to, e.g. http://127.0.0.1:8080")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    args = parser.parse_args(argv)
    token = os.environ.get("FORWARD_TOKEN")
    if not token:
        sys.exit("FORWARD_TOKEN is not set")
    web.run_app(make_app(args.target, token), host="127.0.0.1", port=args.port, handler_cancellation=True,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
