"""Wiring: builds the aiohttp application from the configuration, and runs it.

The one place where the parts meet: routes, the MCP endpoint's stages, start-up and shut-down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from secrets import token_hex
from typing import Any, TypeVar

from aiohttp import web, web_response

from gateway.auth.authenticator import Authenticator
from gateway.auth.dpop import DpopNonces
from gateway.auth.introspection import Introspector
from gateway.auth.jwks import JwksCache
from gateway.auth.mtls import ClientCertificates, parse_networks
from gateway.auth.replay import MemoryReplayWindow, RedisReplayWindow
from gateway.auth.keys import SigningKey, jwks_document
from gateway.auth.scopes import ScopeRequirements
from gateway.auth.sender import SenderConstraints
from gateway.authz.cedar import Authorizer, PolicyStore
from gateway.config import Config
from gateway.edge.challenge import Challenges
from gateway.edge.connections import ConnectionGuard, GuardedSite, raise_descriptor_limit
from gateway.edge.metadata import add_metadata_routes
from gateway.edge.origin import OriginPolicy
from gateway.edge.health import Readiness, healthz, readyz_handler
from gateway.edge.responses import error_response
from gateway.endpoint import REQUEST_ID, McpEndpoint, log_refusal
from gateway.errors import GatewayError, NotFound
from gateway.exchange import Observers
from gateway.forwarding import Forwarder
from gateway.limits import PrincipalLimiter
from gateway.mcp.sessions import SessionBindings, load_session_key
from gateway.mcp.tasks import PURPOSE as TASK_PURPOSE, TaskBindings
from gateway.observe.audit import AuditLog
from gateway.observe.logs import flush_logs, log_access
from gateway.observe.metrics import Metrics, StateCollector, metrics_handler
from gateway.observe.tracing import Tracing
from gateway.observe.shared import WorkerSlot
from gateway.upstream.credentials import build_credential
from gateway.upstream.identity import IdentityAssertion, IdentityHeaders
from gateway.upstream.proxy import UpstreamProxy

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

# Probes and scrapes are not worth a log line each.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


# I9: the Server header names no versions. aiohttp's default is "Python/3.x aiohttp/3.y". The app's own
# responses get ours in ``name_the_server``; the pages aiohttp writes before any routing (400 for a
# malformed request line, aiohttp#8870) never reach on_response_prepare and take this module default.
SERVER_NAME = "mcp-auth-gateway"
web_response.SERVER_SOFTWARE = SERVER_NAME

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a plain token (so it cannot forge log lines), else a new one:
    32 random hex digits, as unguessable as a uuid4 and made without one (P1: the one id of the request)."""
    given = request.headers.get("X-Request-Id")
    return given if given is not None and _REQUEST_ID.fullmatch(given) else token_hex(16)


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One access log line per request, with its request id; every surprise becomes a 500 (fail closed)."""
    started = time.perf_counter()
    request[REQUEST_ID] = request_id_of(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except GatewayError as error:
        log_refusal(request, error)
        status = error.status
        return error_response(error)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status == 404:
            return error_response(NotFound("no_route", request.path))
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away, or the gateway is stopping
        raise
    except Exception:
        log.exception("unexpected error on %s %s; refused", request.method, request.path)
        return error_response(GatewayError("internal_error"))
    finally:
        path = request.path
        if path not in QUIET_PATHS:
            log_access(access_log, request.method, path, status, request[REQUEST_ID],
                       round((time.perf_counter() - started) * 1000, 3))


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer the app prepares: our Server header (I9), and the request id when one was made (one
    callback for both: aiohttp runs each as a coroutine of its own, P1)."""
    headers = response.headers
    headers["Server"] = SERVER_NAME
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        headers["X-Request-Id"] = request_id


def add_jwks_route(app: web.Application, document: bytes) -> None:
    """O6: ``/.well-known/jwks.json``, the public keys an upstream verifies identity assertions with and an
    authorization server verifies the gateway's ``private_key_jwt`` assertions with. Public, no token."""

    async def serve_jwks(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    app.router.add_get("/.well-known/jwks.json", serve_jwks, allow_head=True)


class Gateway:
    """The parts that live as long as the process, built once from the configuration."""

    def __init__(self, config: Config, *, session_key: bytes | None = None, metrics_slot: WorkerSlot | None = None):
        """``session_key``: shared by the workers of one process tree when no session_key_file is set.
        ``metrics_slot``: this worker's place in the metrics the workers share (O3, gateway.workers)."""
        self.config = config
        self.readiness = Readiness()
        self.metrics = Metrics()
        self._metrics_slot = metrics_slot
        self.proxy = UpstreamProxy(config.upstream, public_url=config.server.public_url, metrics=self.metrics)
        self.jwks = JwksCache(config.auth.issuers, config.auth.jwks)
        self.authenticator = Authenticator(config.auth, config.server.public_url, self.jwks)
        self.introspector = None
        if config.auth.introspection is not None:
            first_issuer = config.auth.issuers[0].issuer
            self.introspector = Introspector(
                config.auth.introspection, self.authenticator.rules, resolve_endpoint=lambda: self._introspection_endpoint(first_issuer)
            )
            self.authenticator.introspector = self.introspector
        session_key = session_key or load_session_key(config.server.session_key_file)
        self.senders = self._sender_constraints(config, session_key)  # S1-S3
        self.authenticator.senders = self.senders
        self.policies = PolicyStore(config.authorization)
        self.authorizer = Authorizer(self.policies, config.authorization, server_name=config.resource.name or "mcp")
        self.audit = AuditLog(config.audit)
        self.credential, self.token_endpoint = build_credential(config.upstream.auth)
        identity: list[IdentityHeaders | IdentityAssertion] = []
        if config.upstream.identity_headers:
            identity.append(IdentityHeaders(config.upstream.identity_headers))
        if config.upstream.identity_assertion is not None:
            identity.append(IdentityAssertion(config.upstream.identity_assertion,
                                              issuer=config.server.public_url, audience=config.upstream.url))
        # O6: the public halves of the gateway's own keys, for the upstream and the authorization server.
        self.public_keys: list[SigningKey] = [i.signing_key for i in identity if isinstance(i, IdentityAssertion)]
        self.public_keys += [k for k in (config.upstream.auth.private_key,
                                         config.auth.introspection.private_key if config.auth.introspection else None) if k]
        self.limiter = PrincipalLimiter(config.limits.per_principal)
        self.tracing = Tracing(config.tracing) if config.tracing.enabled else None  # O2
        sessions = SessionBindings(session_key)
        tasks = TaskBindings(sessions.sibling(TASK_PURPOSE))  # M4: the session key, another purpose
        # The MCP endpoint: the admission stages in order (gateway.endpoint), then the upstream and the
        # answer (gateway.forwarding).
        forwarder = Forwarder(config, proxy=self.proxy, credential=self.credential, identity=identity,
                              sessions=sessions, tasks=tasks, authorizer=self.authorizer, audit=self.audit)
        self.endpoint = McpEndpoint(
            config,
            origins=OriginPolicy(config.server.allowed_origins),
            challenges=Challenges(config.server.public_url, config.auth.required_scopes,
                                  dpop_algorithms=config.auth.dpop.algorithms, dpop_required=config.auth.dpop.required),
            authenticator=self.authenticator,
            limiter=self.limiter,
            scopes=ScopeRequirements(config.auth),
            authorizer=self.authorizer,
            sessions=sessions,
            tasks=tasks,
            forwarder=forwarder,
            observers=Observers(self.audit, self.metrics, self.tracing),
        )
        self.metrics.collect_state(StateCollector(jwks=self.jwks, introspector=self.introspector, policies=self.policies,
                                                  authorizer=self.authorizer))
        if metrics_slot is not None:
            self.metrics.share_through(metrics_slot)  # O3: every scrape shows every worker's samples
        self._background: list[asyncio.Task[None]] = []
        self._started = False
        self.readiness.add("started", lambda: self._started)
        self.readiness.add("issuer_keys", lambda: self.jwks.ready)

    @staticmethod
    def _sender_constraints(config: Config, session_key: bytes) -> SenderConstraints:
        """S1-S3. The replay window is Redis when state.redis_url is set (S2); the nonce key is derived from
        the session key, so the workers and replicas that share one accept each other's nonces."""
        dpop = config.auth.dpop
        replay: MemoryReplayWindow | RedisReplayWindow = MemoryReplayWindow(dpop.jti_cache_size)
        if config.state.redis_url is not None:
            replay = RedisReplayWindow(config.state.redis_url.reveal(), timeout=config.state.timeout,
                                       prefix=config.state.key_prefix)
        return SenderConstraints(dpop, config.server.public_url, replay=replay,
                                 certificates=ClientCertificates(parse_networks(config.auth.mtls.trusted_proxies)),
                                 nonces=DpopNonces(session_key, dpop.max_age) if dpop.nonce else None)

    async def _introspection_endpoint(self, issuer: str) -> str:
        metadata = self.jwks.metadata(issuer) or await self.jwks.discover(issuer)
        endpoint = metadata.get("introspection_endpoint")
        if not isinstance(endpoint, str):
            raise ValueError(f"metadata of {issuer} has no introspection_endpoint; set auth.introspection.endpoint")
        return endpoint

    def create_app(self) -> web.Application:
        # R1: the guard learns from its middleware when a request's headers were complete.
        self.connections = ConnectionGuard(header_timeout=self.config.server.header_timeout,
                                           max_connections=self.config.server.max_connections)
        app = web.Application(
            middlewares=[self.connections.middleware, observe_requests],
            client_max_size=self.config.server.max_body_bytes + 1,
            # Request bodies are never decompressed (Content-Encoding is refused at the edge, 415).
            handler_args={"max_field_size": 16 * 1024, "auto_decompress": False},
        )
        if self.config.server.admin_port == 0:  # O1: no admin listener, so the probes live here
            add_admin_routes(app, self)
        add_metadata_routes(app, self.config)
        if self.public_keys:
            add_jwks_route(app, jwks_document(self.public_keys))  # O6
        app.router.add_route("*", self.config.server.mcp_path, self.endpoint.handle)
        app.on_response_prepare.append(name_the_server)
        if self.senders.nonces is not None:
            app.on_response_prepare.append(self._add_dpop_nonce)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _add_dpop_nonce(self, request: web.Request, response: web.StreamResponse) -> None:
        """S1, RFC 9449 §8.2, §9: every answer of the MCP endpoint carries the current nonce."""
        if request.path == self.config.server.mcp_path:
            response.headers["DPoP-Nonce"] = self.senders.nonce_header() or ""

    async def _on_startup(self, app: web.Application) -> None:
        await self.proxy.start()
        await self.senders.replay.start()
        await self.jwks.start()
        if self.token_endpoint is not None:
            await self.token_endpoint.start()
        if self.introspector is not None:
            await self.introspector.start()
        # T8 warm-up: readiness waits for every issuer's keys; requests meanwhile fetch on demand.
        self._background.append(asyncio.create_task(self.jwks.keep_warm(), name="jwks-warm-up"))
        if self.config.authorization.reload:
            # Z2, A2, A5: the enforced and candidate policies and the tool pins
            self._background.append(asyncio.create_task(self.authorizer.watch(), name="policy-reload"))
        if self._metrics_slot is not None:
            self._background.append(asyncio.create_task(self.metrics.keep_shared(), name="metrics-sharing"))
        self._started = True

    async def _on_cleanup(self, app: web.Application) -> None:
        try:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.proxy.close()
            await self.senders.replay.close()
            await self.jwks.close()
            if self.token_endpoint is not None:
                await self.token_endpoint.close()
            if self.introspector is not None:
                await self.introspector.close()
        finally:
            self.audit.close()  # E3, E4: the buffered audit events are written, whatever else failed here
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)  # O2: queued spans are exported, not lost
            if self._metrics_slot is not None:
                self.metrics.share()  # O3: this worker's last counts stay in the sums after it ends


# ---- O1: the admin listener ------------------------------------------------------------------------
# Probes and metrics on their own port (server.admin_port): they answer while the main listener is at
# server.max_connections or busy with slow clients, and an ingress that routes to the main port never
# exposes /metrics. The admin listener has its own small connection cap and the same header timeout.

ADMIN_MAX_CONNECTIONS = 64


def add_admin_routes(app: web.Application, gateway: Gateway) -> None:
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz_handler(gateway.readiness), allow_head=True)
    app.router.add_get("/metrics", metrics_handler(gateway.metrics))


def create_admin_app(gateway: Gateway, guard: ConnectionGuard) -> web.Application:
    app = web.Application(middlewares=[guard.middleware, observe_requests], client_max_size=1024,
                          handler_args={"max_field_size": 8 * 1024, "auto_decompress": False})
    add_admin_routes(app, gateway)
    app.on_response_prepare.append(name_the_server)
    return app


async def start_admin_listener(gateway: Gateway) -> web.AppRunner | None:
    """Serve /healthz, /readyz and /metrics on ``server.host``:``server.admin_port``; None when it is 0."""
    server = gateway.config.server
    if server.admin_port == 0:
        return None
    guard = ConnectionGuard(header_timeout=server.header_timeout, max_connections=ADMIN_MAX_CONNECTIONS)
    runner = web.AppRunner(create_admin_app(gateway, guard), access_log=None, handler_cancellation=True,
                           keepalive_timeout=server.keepalive_timeout, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await GuardedSite(runner, server.host, server.admin_port, guard).start()  # no SO_REUSEPORT: one owner
    except OSError as exc:
        log.error("cannot listen on %s:%d for the admin listener (server.admin_port): %s", server.host, server.admin_port, exc.strerror)
        await runner.cleanup()
        raise
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin listener (/healthz, /readyz, /metrics) on http://%s:%d", server.host, server.admin_port)
    return runner


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed (P1: its loop costs less per request than
    asyncio's, and it is what uvicorn uses), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def tune_garbage_collection() -> None:
    """P1: once started, the objects made so far (modules, configuration, policies, the app) live as long
    as the process: ``gc.freeze`` takes them out of every later collection, and a higher first threshold
    makes young collections rarer. Cycles are still collected; what goes is a full collection that walked
    every object of the process (~14 ms every ~2,500 requests).

    R2: not too rare, though. Most requests free what they made by reference counting, so young
    collections come only every 10,000 surviving objects, and until then the cyclic garbage of failed
    requests (an exception and the frames its traceback holds, a connection the upstream refused) stays in
    memory: at 50,000 (50, 100) an upstream outage raised the RSS by 6.6 MiB in 15 s, which Python then
    keeps; at 10,000 (10, 10) by 1 MiB, for ~30 more young collections a minute (about a millisecond each)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(config: Config, *, ready: Callable[[str], None] | None = None,
                reuse_port: bool = False, session_key: bytes | None = None, admin: bool = True,
                metrics_slot: WorkerSlot | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain within ``server.shutdown_grace`` (E3).

    ``reuse_port``, ``session_key`` and ``metrics_slot``: set by ``gateway.workers`` when several processes
    share the port; ``admin``: whether this process owns the admin listener (with workers, worker 0 does: O1)."""
    gateway = Gateway(config, session_key=session_key, metrics_slot=metrics_slot)
    app = gateway.create_app()
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=config.server.shutdown_grace,
        # A client that goes away cancels its request: an idle SSE stream would otherwise hold its upstream
        # connection until the upstream next writes (and MCP 2026-07-28 makes closing a stream a cancel).
        handler_cancellation=True,
        keepalive_timeout=config.server.keepalive_timeout,  # R1
    )
    await runner.setup()
    raise_descriptor_limit(config.server.max_connections + 256)  # headroom: upstream, JWKS, logs, probes
    site = GuardedSite(runner, config.server.host, config.server.port, gateway.connections, reuse_port=reuse_port)  # R1, P4
    await site.start()
    admin_runner = await start_admin_listener(gateway) if admin else None  # O1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = f"http://{config.server.host}:{config.server.port}"
    tune_garbage_collection()
    log.info("listening on %s, MCP endpoint %s, upstream %s", address, config.server.mcp_path,
             re.sub(r"(?<=//)[^/?#]*@", "***@", config.upstream.url, count=1))  # never a password in the log
    if ready:
        ready(address)
    try:
        await stop.wait()
    finally:
        # E3: stop being ready at once (Kubernetes stops routing here), close the standalone GET streams
        # (MCP clients reopen them elsewhere), let in-flight calls finish within the grace, then exit.
        gateway.readiness.shutting_down = True
        log.info("shutting down; in-flight requests get up to %gs", config.server.shutdown_grace)
        gateway.proxy.close_standalone_streams()
        await runner.cleanup()
        if admin_runner is not None:  # last: during the drain /readyz says 503 and /healthz still 200
            await admin_runner.cleanup()
        log.info("stopped")
        flush_logs()  # the access lines held for a moment (P1) are written before the process ends
