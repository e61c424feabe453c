"""The real parts the soak starts on 127.0.0.1, and the switches its faults turn.

- ``SoakIssuer``: the identity provider, ``tests.factories.TestIssuer`` (RFC 8414 metadata, JWKS, RFC 7662
  introspection) served on three listeners, so the JWKS and the introspection endpoint can each go down
  on their own while the metadata stays up. Each ``Endpoint`` is ``up``, ``refusing`` (nothing listens:
  connection refused, and the gateway's pooled connections are closed), ``hanging`` (connections are
  accepted and never answered) or ``failing`` (HTTP 500).
- ``Part``: a child process (the upstream, the gateway) with its RSS and CPU read from ``/proc``.
- the gateway's configuration and Cedar policies, and a reader for its ``/metrics``.

Every part is stopped by whoever started it, in a ``finally``.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.factories import SigningKey, TestIssuer  # noqa: E402  (the project's own test IdP)

LOOPBACK = "127.0.0.1"
FORBIDDEN_TOOL = "tool_13"  # forbidden by the policies from the start
LATER_FORBIDDEN_TOOL = "tool_42"  # forbidden once the good policy edit is picked up
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = ""
    load = ""
    try:
        load = ", load average at start " + Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){memory}{load}"


# ---------------------------------------------------------------------------------------------------
# The identity provider
# ---------------------------------------------------------------------------------------------------

Mode = Literal["up", "refusing", "hanging", "failing"]


class Endpoint:
    """One listener of the IdP on a fixed port, switchable between modes.

    ``app_factory`` builds the listener's application each time it comes up (an aiohttp application is
    frozen once set up); ``on_failing(bool)`` makes its handler answer 500, or not.
    """

    def __init__(self, name: str, port: int, app_factory: Callable[[], web.Application], on_failing: Callable[[bool], None]):
        self.name = name
        self.port = port
        self.mode: Mode = "refusing"
        self._app_factory = app_factory
        self._on_failing = on_failing
        self._runner: web.AppRunner | None = None
        self._hang_server: asyncio.AbstractServer | None = None
        self._hung: list[asyncio.BaseTransport] = []

    async def set(self, mode: Mode) -> None:
        if mode == self.mode:
            return
        serving = ("up", "failing")
        if mode in serving and self.mode in serving:
            self._on_failing(mode == "failing")
            self.mode = mode  # the same listener, other answers
            return
        # Down first, then the answers: a listener still closing must not answer 200 after "failing" (the
        # soak once saw a new opaque token accepted in the middle of the introspection outage).
        await self._leave()
        self._on_failing(mode == "failing")
        if mode in serving:
            self._runner = web.AppRunner(self._app_factory(), access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, LOOPBACK, self.port, reuse_address=True).start()
        elif mode == "hanging":
            hung = self._hung

            class Silent(asyncio.Protocol):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:  # accept, never answer
                    hung.append(transport)

            self._hang_server = await asyncio.get_running_loop().create_server(Silent, LOOPBACK, self.port, reuse_address=True)
        self.mode = mode

    async def _leave(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listener and every open connection (pooled ones too)
            self._runner = None
        if self._hang_server is not None:
            self._hang_server.close()
            for transport in self._hung:
                transport.abort()
            self._hung.clear()
            await self._hang_server.wait_closed()
            self._hang_server = None


def _single_route(method: str, path: str, handler: Callable) -> Callable[[], web.Application]:
    def build() -> web.Application:
        app = web.Application()
        app.router.add_route(method, path, handler)
        return app

    return build


@dataclass
class SoakIssuer:
    """``TestIssuer`` behind three listeners: metadata (always up), JWKS and introspection (switchable)."""

    issuer: TestIssuer = field(default_factory=TestIssuer)
    jwks: Endpoint | None = None
    introspection: Endpoint | None = None
    _metadata_runner: web.AppRunner | None = None

    async def start(self, *, jwks_max_age: int) -> None:
        issuer = self.issuer
        issuer.keys = [SigningKey.rsa("soak-rsa"), SigningKey.ec("soak-ec")]
        issuer.jwks_cache_control = f"max-age={jwks_max_age}"
        ports = {name: free_port() for name in ("metadata", "jwks", "introspection")}
        issuer.url = f"http://{LOOPBACK}:{ports['metadata']}"
        jwks_url = f"http://{LOOPBACK}:{ports['jwks']}/jwks"
        introspection_url = f"http://{LOOPBACK}:{ports['introspection']}/introspect"
        issuer.metadata = lambda: {  # type: ignore[method-assign]  (points at the two switchable listeners)
            "issuer": issuer.url, "jwks_uri": jwks_url, "introspection_endpoint": introspection_url,
            "token_endpoint": f"{issuer.url}/token", "response_types_supported": ["code"],
        }
        self._metadata_runner = web.AppRunner(
            _single_route("GET", "/.well-known/oauth-authorization-server", issuer._metadata)(), access_log=None, shutdown_timeout=0.5)
        await self._metadata_runner.setup()
        await web.TCPSite(self._metadata_runner, LOOPBACK, ports["metadata"], reuse_address=True).start()
        self.jwks = Endpoint("jwks", ports["jwks"], _single_route("GET", "/jwks", issuer._jwks),
                             lambda failing: setattr(issuer, "jwks_status", 500 if failing else 200))
        self.introspection = Endpoint("introspection", ports["introspection"], _single_route("POST", "/introspect", issuer._introspect),
                                      lambda failing: setattr(issuer, "introspection_status", 500 if failing else 200))
        await self.jwks.set("up")
        await self.introspection.set("up")

    async def close(self) -> None:
        for endpoint in (self.jwks, self.introspection):
            if endpoint is not None:
                await endpoint.set("refusing")
        if self._metadata_runner is not None:
            await self._metadata_runner.cleanup()


# ---------------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------------


class Part:
    """A child process on a known port, its output in a file."""

    def __init__(self, name: str, command: list[str], port: int, log_path: Path, *, stdout_path: Path | None = None,
                 cwd: Path = ROOT):
        self.name = name
        self.cwd = cwd  # ``python -m gateway`` imports the gateway package from here
        self.command = command
        self.port = port
        self.log_path = log_path
        self.stdout_path = stdout_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_listening(timeout)

    def spawn(self) -> None:
        """Start the process (from the main thread: its parent-death signal belongs to the spawning thread)."""
        log = self.log_path.open("ab")
        out = self.stdout_path.open("ab") if self.stdout_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=log, cwd=self.cwd, preexec_fn=_die_with_parent)
        finally:
            log.close()
            if self.stdout_path:
                out.close()
        self.starts += 1

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited at start with {self.process.returncode}; see {self.log_path}:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:])
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"{self.name} did not listen on {self.port} within {timeout:g}s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to open connections (the upstream dying mid-stream)."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def rss_kib(self) -> int | None:
        return _status_field(self.pid, "VmRSS")

    def hwm_kib(self) -> int | None:
        return _status_field(self.pid, "VmHWM")

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        except (OSError, IndexError, ValueError):
            return None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it if the soak itself dies, so nothing is ever left behind (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _status_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------------------------
# The gateway's configuration, policies and metrics
# ---------------------------------------------------------------------------------------------------

POLICIES_START = f"""\
@id("everyone-may-list")
permit (principal, action == Action::"tools/list", resource);

@id("everyone-may-call-tools")
permit (principal, action == Action::"tools/call", resource);

@id("{FORBIDDEN_TOOL}-is-forbidden")
forbid (principal, action == Action::"tools/call", resource == Tool::"{FORBIDDEN_TOOL}");
"""

# A syntax error in an edit of the same file: must be refused, version 1 stays (Z2). If the gateway took
# it in any form, the permit-all would let the forbidden tool through, which the soak would see.
POLICIES_BROKEN = POLICIES_START.replace(
    f'resource == Tool::"{FORBIDDEN_TOOL}");',
    f'resource == Tool::"{FORBIDDEN_TOOL}")\nwhen {{ context.arguments has ( }};\n\n'
    '@id("permit-all-by-mistake")\npermit (principal, action, resource);',
)

POLICIES_GOOD = POLICIES_START + f"""
@id("{LATER_FORBIDDEN_TOOL}-is-forbidden-too")
forbid (principal, action == Action::"tools/call", resource == Tool::"{LATER_FORBIDDEN_TOOL}");
"""


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename, as a ConfigMap update or an editor's save does."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclass(frozen=True)
class GatewaySettings:
    header_timeout: float = 2.0
    body_timeout: float = 3.0
    keepalive_timeout: float = 5.0
    shutdown_grace: float = 10.0
    max_body_bytes: int = 64 * 1024
    jwks_cache: float = 2.0  # cache_min and the IdP's max-age: the key set is refetched while JWKS is down
    jwks_cooldown: float = 2.0
    introspection_cache_ttl: float = 5.0
    log_level: str = "info"


def gateway_config(*, port: int, upstream_port: int, issuer_url: str, policies: Path, audit_file: Path,
                   settings: GatewaySettings) -> dict:
    public_url = f"http://{LOOPBACK}:{port}/mcp"
    return {
        "server": {
            "host": LOOPBACK, "port": port, "public_url": public_url,
            "header_timeout": f"{settings.header_timeout:g}s", "body_timeout": f"{settings.body_timeout:g}s",
            "keepalive_timeout": f"{settings.keepalive_timeout:g}s", "shutdown_grace": f"{settings.shutdown_grace:g}s",
            "max_body_bytes": settings.max_body_bytes,
            "admin_port": 0,  # /readyz and /metrics on the gateway's one port, where the soak reads them (O1)
        },
        "upstream": {"url": f"http://{LOOPBACK}:{upstream_port}/mcp", "connect_timeout": "2s", "response_timeout": "30s"},
        "auth": {
            "issuers": [{"issuer": issuer_url}],  # keys and introspection endpoint found through metadata (T8)
            "jwks": {"cache_min": f"{settings.jwks_cache:g}s", "refresh_cooldown": f"{settings.jwks_cooldown:g}s"},
            "introspection": {"client_id": "gateway", "client_secret": "gateway-secret",
                              "cache_ttl": f"{settings.introspection_cache_ttl:g}s"},
            "required_scopes": ["mcp"],
        },
        "authorization": {"policies": str(policies)},
        "logging": {"level": settings.log_level, "format": "json"},
        "audit": {"file": str(audit_file)},
    }


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


async def scrape_metrics(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``; empty when the gateway does not answer."""
    try:
        async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            try:
                samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
            except ValueError:
                pass
    return samples


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2))  # JSON is YAML
