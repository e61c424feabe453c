"""Liveness and readiness (E2). Neither needs a token and neither says more than yes or no per check.

``/healthz`` answers while the process can answer at all. ``/readyz`` answers 200 only when every
registered check passes (configuration, policies, every issuer's keys) and the gateway is not shutting
down (E3), so Kubernetes stops sending traffic before the drain starts.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class Readiness:
    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}
        self.shutting_down = False

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def report(self) -> tuple[bool, dict[str, bool]]:
        results = {name: bool(check()) for name, check in self._checks.items()}
        results["not_shutting_down"] = not self.shutting_down
        return all(results.values()), results


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


def readyz_handler(readiness: Readiness):
    async def readyz(request: web.Request) -> web.Response:
        ready, checks = readiness.report()
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    return readyz
