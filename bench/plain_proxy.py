"""The benchmark's baseline: a plain aiohttp reverse proxy with no checks at all.

    python bench/plain_proxy.py --port 8081 --upstream http://127.0.0.1:3000/mcp

It reads the body, forwards it over one pooled client session and relays the answer: what any
aiohttp proxy pays before doing anything useful. The gateway's cost above this is the cost of security.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

SKIPPED = {"host", "content-length", "connection", "authorization"}


def build_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIPPED}
        async with request.app["session"].post(upstream, data=await request.read(), headers=headers) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)

    app.router.add_post("/mcp", forward)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
