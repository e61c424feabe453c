"""The soak's clients, and the rules that say which outcome each request may have.

- ``Kind``: one sort of request (a valid call, a 500-tool list, a forged token, a slow body, ...), the
  outcomes it may have normally, the extra ones each fault allows while it is active, and the only ones
  allowed when the request ran entirely inside a fault (an opaque token that nobody could introspect must
  get 503, never 200).
- ``Load``: the clients. Requests are sent open-loop (each kind at a fixed rate, whatever the answers
  take), so latency is measured from when a request was due, not from when a busy client got round to
  it. Long SSE streams and slow clients are kept open a few at a time and reopened when they end.
- ``Timeline``: when each fault was active, filled in by the soak as it injects them.
- ``classify``: every recorded request against the timeline.

Outcomes are short strings: an HTTP status (``"200"``, ``"403"``), or what a client saw without one
(``"conn_refused"``, ``"disconnected"``, ``"timeout"``), or a check of the answer (``"200_bad_body"``,
``"list_v1"``, ``"stream_truncated"``, ``"cut_in_time"``).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import json
import random
import secrets
import time
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDict

from soak_client import RawPool
from soak_parts import FORBIDDEN_TOOL, LATER_FORBIDDEN_TOOL, GatewaySettings, SigningKey, SoakIssuer
from tests.factories import unsigned_token

Group = Literal["valid", "hostile", "stream", "slow"]

UPSTREAM_FAILED = frozenset({"502", "504"})
# Outcomes that, for a request sent before SIGTERM, mean the request was lost (no definite answer).
LOST = frozenset({"disconnected", "timeout", "client_error", "stream_truncated", "closed_without_answer"})


@dataclass(frozen=True)
class Kind:
    name: str
    group: Group
    normal: frozenset[str]
    during: dict[str, frozenset[str]] = field(default_factory=dict)
    strict: dict[str, frozenset[str]] = field(default_factory=dict)
    policy: tuple[frozenset[str], frozenset[str]] | None = None  # (before the good edit, after it)
    rotation: tuple[frozenset[str], frozenset[str]] | None = None  # (before the new key is published, after)
    at_shutdown: frozenset[str] = frozenset()  # extra outcomes for a request the SIGTERM overtook
    latency: bool = False  # a valid call: counts in p50/p99
    what: str = ""


def _s(*names: str) -> frozenset[str]:
    return frozenset(names)


REACHES_UPSTREAM = {"upstream_down": UPSTREAM_FAILED}

KINDS: list[Kind] = [
    # -- valid ------------------------------------------------------------------------------------
    Kind("call", "valid", _s("200"), REACHES_UPSTREAM, latency=True,
         what="tools/call, JWT of one of eight principals (verified once, then cached), 20 tools × 20 arguments"),
    Kind("call_fresh_jwt", "valid", _s("200"), REACHES_UPSTREAM, latency=True,
         what="tools/call with a JWT minted for this request: needs the cached key, also while the JWKS is down"),
    Kind("call_rotated_key", "valid", _s("200"), REACHES_UPSTREAM, rotation=(_s("401"), _s("200")),
         what="tools/call signed with a key the IdP publishes only when the JWKS comes back: 401, then 200"),
    Kind("call_opaque", "valid", _s("200"), {**REACHES_UPSTREAM, "introspection_down": _s("503")}, latency=True,
         what="tools/call with one of two opaque tokens (introspected, cached for 5 s)"),
    Kind("call_opaque_new", "valid", _s("200"), {**REACHES_UPSTREAM, "introspection_down": _s("503")},
         strict={"introspection_down": _s("503")},
         what="tools/call with an opaque token never seen before: must be 503 while introspection is down"),
    Kind("call_session", "valid", _s("200"), REACHES_UPSTREAM, latency=True,
         what="tools/call in the session this principal opened (U5)"),
    Kind("call_slow", "valid", _s("200"), REACHES_UPSTREAM,
         what="tools/call of slow_task, answered after 2 s: keeps calls in flight, so the SIGTERM finds some to finish"),
    Kind("call_later_forbidden", "valid", _s("200"), REACHES_UPSTREAM, policy=(_s("200"), _s("403")),
         what=f"tools/call of {LATER_FORBIDDEN_TOOL}: allowed until the good policy edit forbids it"),
    Kind("list", "valid", _s("list_v1"), REACHES_UPSTREAM, policy=(_s("list_v1"), _s("list_v2")),
         what=f"tools/list of 500 tools: 499 visible ({FORBIDDEN_TOOL} filtered), 498 after the good edit"),
    # -- hostile ----------------------------------------------------------------------------------
    Kind("forbidden_tool", "hostile", _s("403"), what=f"tools/call of {FORBIDDEN_TOOL} (forbidden by policy)"),
    Kind("batch_with_forbidden", "hostile", _s("403"), what=f"a batch of an allowed call and {FORBIDDEN_TOOL}"),
    Kind("forged_signature", "hostile", _s("401"), what="JWT with the IdP's kid, signed by another key"),
    Kind("expired_token", "hostile", _s("401"), what="JWT, validly signed, expired an hour ago"),
    Kind("wrong_audience", "hostile", _s("401"), what="JWT, validly signed, for another resource"),
    Kind("alg_none", "hostile", _s("401"), what='unsigned JWT, alg "none"'),
    Kind("garbage_token", "hostile", _s("401"), {"introspection_down": _s("503")}, strict={"introspection_down": _s("503")},
         what="a random non-JWT token (introspected: inactive)"),
    Kind("no_token", "hostile", _s("401"), what="no Authorization header"),
    Kind("token_in_query", "hostile", _s("400"), what="a token in the query string as well as the header"),
    Kind("two_authorization", "hostile", _s("400"), what="two Authorization headers"),
    Kind("malformed_json", "hostile", _s("400"), what="a body cut off in the middle"),
    Kind("fold_duplicate", "hostile", _s("400"), what="keys equal after case folding (Name/name, ſ, K, NUL), or repeated"),
    Kind("deep_nesting", "hostile", _s("400"), what="arguments nested 200 levels deep"),
    Kind("oversize_body", "hostile", _s("413"), what="an 80 KiB body with Content-Length (limit 64 KiB)"),
    Kind("oversize_chunked", "hostile", _s("413"), what="an 80 KiB chunked body without Content-Length"),
    Kind("batch_too_large", "hostile", _s("400"), what="a batch of 51 calls (server.max_batch 50)"),
    Kind("bad_method_name", "hostile", _s("400"), what='method "notifications/../tools/call"'),
    Kind("duplicate_session_header", "hostile", _s("400"), what="Mcp-Session-Id sent twice"),
    Kind("wrong_content_type", "hostile", _s("400"), what="Content-Type text/plain"),
    Kind("session_of_another", "hostile", _s("404"), what="a session opened by another principal (U5)"),
    # -- streams ----------------------------------------------------------------------------------
    Kind("stream_post", "stream", _s("200"), {"upstream_down": UPSTREAM_FAILED | _s("stream_truncated")},
         what="tools/call long_task answered as SSE: 12 progress events 0.5 s apart, then the result"),
    Kind("stream_get", "stream", _s("200"), {"upstream_down": UPSTREAM_FAILED | _s("stream_ended_early")},
         at_shutdown=_s("stream_ended_early"),
         what="standalone GET stream: 12 notifications 0.5 s apart (closed by the gateway at SIGTERM)"),
    # -- slow clients -----------------------------------------------------------------------------
    Kind("slow_headers_stall", "slow", _s("cut_in_time"), at_shutdown=_s("cut_early"),
         what="half a request's headers, then nothing: must be cut at server.header_timeout"),
    Kind("slow_headers_trickle", "slow", _s("cut_in_time"), at_shutdown=_s("cut_early"),
         what="request headers one byte every 0.5 s: must be cut at server.header_timeout"),
    Kind("slow_body", "slow", _s("408"), at_shutdown=_s("cut_early", "closed_without_answer"),
         what="valid token, body 16 bytes every 0.5 s: must get 408 at server.body_timeout"),
    Kind("idle_keepalive", "slow", _s("cut_in_time"), REACHES_UPSTREAM, at_shutdown=_s("cut_early"),
         what="one valid call, then an idle keep-alive connection: must be closed at server.keepalive_timeout"),
]
KIND_INDEX = {kind.name: i for i, kind in enumerate(KINDS)}


# ---------------------------------------------------------------------------------------------------
# What happened when
# ---------------------------------------------------------------------------------------------------


@dataclass
class Window:
    kind: str
    start: float
    end: float | None = None
    grace: float = 1.0  # after the end, the fault's outcomes are still allowed (recovery)
    phases: list[tuple[float, str]] = field(default_factory=list)  # (start, how the fault showed itself)

    def touches(self, start: float, end: float) -> bool:
        stop = float("inf") if self.end is None else self.end + self.grace
        return start <= stop and end >= self.start

    def contains(self, start: float, end: float, edge: float = 0.5) -> bool:
        return self.end is not None and start >= self.start + edge and end <= self.end


@dataclass
class Timeline:
    windows: list[Window] = field(default_factory=list)
    good_written: float | None = None
    good_applied: float | None = None
    key_published: float | None = None
    rotation_converge: float = 6.0
    sigterm: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, t: float, text: str) -> None:
        self.events.append((t, text))

    def situation(self, start: float, end: float, wire: float | None = None) -> tuple:
        """What was going on while a request ran. ``wire``: when its first bytes were written (None: never),
        which decides whether the SIGTERM overtook it (written before) or it came after (written after)."""
        touching = frozenset(w.kind for w in self.windows if w.touches(start, end))
        inside = frozenset(w.kind for w in self.windows if w.contains(start, end))
        if self.good_written is None or self.good_applied is None or end < self.good_written:
            policy = "old"
        elif start > self.good_applied + 0.5:
            policy = "new"
        else:
            policy = "either"
        if self.key_published is None or end < self.key_published:
            rotation = "before"
        elif start > self.key_published + self.rotation_converge:
            rotation = "after"
        else:
            rotation = "either"
        written = start if wire is None else wire
        if self.sigterm is None or end < self.sigterm:
            shutdown = "before"
        elif written == written and written < self.sigterm:  # (NaN: never written)
            shutdown = "across"
        else:
            shutdown = "after"
        return touching, inside, policy, rotation, shutdown


def allowed_outcomes(kind: Kind, situation: tuple) -> frozenset[str]:
    touching, inside, policy, rotation, shutdown = situation
    base = set(kind.normal)
    if kind.policy is not None:
        old, new = kind.policy
        base = set(old if policy == "old" else new if policy == "new" else old | new)
    if kind.rotation is not None:
        before, after = kind.rotation
        base = set(before if rotation == "before" else after if rotation == "after" else before | after)
    for fault in inside:
        if fault in kind.strict:
            base = set(kind.strict[fault])
    allowed = base
    for fault in touching:
        if fault not in inside or fault not in kind.strict:
            allowed |= kind.during.get(fault, frozenset())
    if shutdown == "across":
        allowed |= kind.at_shutdown | {"conn_refused"}
    elif shutdown == "after":
        # Sent after SIGTERM: refused connections are the point; an answer is fine too.
        allowed |= kind.at_shutdown | {"conn_refused", "disconnected", "closed_without_answer", "cut_early"}
    return frozenset(allowed)


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------


class Records:
    """One row per request, in compact arrays (a 600 s soak makes several hundred thousand)."""

    def __init__(self) -> None:
        self.kind = array("B")
        self.due = array("d")  # when it should have been sent (open loop), seconds from the soak's start
        self.sent = array("d")  # when the client started it
        self.wire = array("d")  # when its first bytes went out (NaN: never, e.g. the connection was refused)
        self.end = array("d")
        self.outcome = array("H")
        self.outcome_names: list[str] = []
        self._outcome_ids: dict[str, int] = {}
        self.details: dict[tuple[int, str], list[tuple[float, str, str]]] = defaultdict(list)  # (kind, outcome) → examples
        self.request_ids: dict[int, str] = {}  # row → X-Request-Id, for requests the SIGTERM overtook

    def outcome_id(self, name: str) -> int:
        found = self._outcome_ids.get(name)
        if found is None:
            found = self._outcome_ids[name] = len(self.outcome_names)
            self.outcome_names.append(name)
        return found

    def add(self, kind: int, due: float, sent: float, wire: float | None, end: float, outcome: str, detail: str = "",
            request_id: str = "") -> int:
        row = len(self.kind)
        self.kind.append(kind)
        self.due.append(due)
        self.sent.append(sent)
        self.wire.append(float("nan") if wire is None else wire)
        self.end.append(end)
        self.outcome.append(self.outcome_id(outcome))
        examples = self.details[(kind, outcome)]
        if len(examples) < 3 and (detail or outcome not in KINDS[kind].normal):
            examples.append((sent, detail, request_id))
        if request_id:
            self.request_ids[row] = request_id
        return row

    def __len__(self) -> int:
        return len(self.kind)


@dataclass
class Classified:
    unexpected: list[int]  # rows
    lost: list[int]  # rows sent before SIGTERM without a definite answer
    by_kind: dict[str, Counter]
    unexpected_by_kind: dict[str, Counter]


def classify(records: Records, timeline: Timeline) -> Classified:
    cache: dict[tuple, frozenset[str]] = {}
    unexpected, lost = [], []
    by_kind: dict[str, Counter] = defaultdict(Counter)
    unexpected_by_kind: dict[str, Counter] = defaultdict(Counter)
    names = records.outcome_names
    for row in range(len(records)):
        kind = KINDS[records.kind[row]]
        outcome = names[records.outcome[row]]
        by_kind[kind.name][outcome] += 1
        situation = timeline.situation(records.sent[row], records.end[row], records.wire[row])
        key = (kind.name, situation)
        allowed = cache.get(key)
        if allowed is None:
            allowed = cache[key] = allowed_outcomes(kind, situation)
        if situation[4] == "across" and outcome in LOST:
            lost.append(row)
        if outcome not in allowed:
            unexpected.append(row)
            unexpected_by_kind[kind.name][outcome] += 1
    return Classified(unexpected, lost, by_kind, unexpected_by_kind)


# ---------------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------------


def _rpc(method: str, params: dict | None = None, rpc_id: int | str = 1) -> dict:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
FOLD_DUPLICATES = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","Name":"' + FORBIDDEN_TOOL.encode() + b'"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","arguments":{"text":"a","TEXT":"b"}}}',
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","arguments":{"s":1,"\u017f":2}}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","arguments":{"key":1,"\u212aey":2}}}'.encode(),
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","arguments":{"ab":1,"a\\u0000b":2}}}',
    b'{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"tool_1"}}',
]


# The current request's facts, per task: ``wire`` is set when its first bytes are written. For aiohttp's
# requests a trace hook sets it (a request can wait in the client's pool first); raw sockets set it themselves.
CURRENT = contextvars.ContextVar("soak_request", default=None)


async def _headers_sent(session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
    holder = context.trace_request_ctx
    if holder is not None and holder.wire is None:
        holder.wire = holder.clock()


def _wrote(holder: SimpleNamespace | None) -> None:
    if holder is not None and holder.wire is None:
        holder.wire = holder.clock()


def _status_name(status: int) -> str:
    return "401_no_challenge" if status == 1401 else str(status)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "conn_refused" if getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED else "connect_failed"
    if isinstance(exc, ConnectionRefusedError):
        return "conn_refused"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError, ConnectionError)):
        return "disconnected"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "client_error"


class Load:
    """Every client of the soak, recording into ``records``; ``clock()`` is seconds since the soak began."""

    def __init__(self, *, base_url: str, public_url: str, idp: SoakIssuer, settings: GatewaySettings,
                 stream_events: int, stream_interval: float, duration: float):
        self.base_url = base_url
        self.url = f"{base_url}/mcp"
        self.public_url = public_url
        self.idp = idp
        self.issuer = idp.issuer
        self.settings = settings
        self.stream_events = stream_events
        self.stream_interval = stream_interval
        self.records = Records()
        self.relay_delays = array("f")  # seconds from the upstream writing an SSE event to the client reading it
        self.t0 = 0.0
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self.in_flight = 0
        self.in_flight_by_kind: Counter = Counter()
        self.max_in_flight = 0
        self.skipped: Counter = Counter()
        self.sequence = 0
        self.random = random.Random(7)
        long_exp = int(time.time() + duration + 3600)
        self.principals = ["alice", "bob", "carol", "dave"]
        self.tokens = [self.issuer.mint(sub=p, aud=public_url, exp=long_exp) for p in self.principals]
        # The bulk of the calls come from more principals, each well inside its share (R3: 64 in flight).
        self.call_tokens = [self.issuer.mint(sub=f"user-{n}", aud=public_url, exp=long_exp) for n in range(8)]
        self.patient_tokens = [self.issuer.mint(sub=f"patient-{n}", aud=public_url, exp=long_exp) for n in range(4)]
        self.slow_call = (_dumps(_rpc("tools/call", {"name": "slow_task", "arguments": {"ms": 2000}})), b'\\"tool\\":\\"slow_task\\"')
        # Hostile requests with valid tokens come from principals of their own, so they never share a valid
        # caller's slots (R3).
        self.hostile_tokens = [self.issuer.mint(sub=f"mallory-{n}", aud=public_url, exp=long_exp) for n in range(2)]
        self.stream_token = self.issuer.mint(sub="streamer", aud=public_url, exp=long_exp)
        self.slow_token = self.issuer.mint(sub="slowpoke", aud=public_url, exp=long_exp)
        self.opaque = [self.issuer.opaque(sub=p, aud=public_url, exp=long_exp) for p in ("erin", "frank")]
        self.rotation_key = SigningKey.ec("soak-rotated")
        self.stranger_key = SigningKey.rsa("soak-rsa")  # same kid as the IdP's key, another key
        tools = [f"tool_{t}" for t in range(22) if f"tool_{t}" not in (FORBIDDEN_TOOL, LATER_FORBIDDEN_TOOL)][:20]
        # (body, what the answer must contain: the upstream echoes the tool name inside the result's text)
        self.call_bodies = [(_dumps(_rpc("tools/call", {"name": tool, "arguments": {"text": f"word {w}"}})),
                             b'\\"tool\\":\\"' + tool.encode() + b'\\"') for tool in tools for w in range(20)]
        self.list_body = _dumps(_rpc("tools/list", {}))
        self.session_id: str | None = None
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.tasks: set[asyncio.Task] = set()
        # The clients' own event-loop lag, (when, how late a 50 ms sleep woke), for the last few minutes: a
        # slow client sees the gateway's cut only when its loop gets round to reading it (_judge_cut).
        self.own_lag: deque[tuple[float, float]] = deque(maxlen=4000)
        self._lag_watch: asyncio.Task | None = None

    def clock(self) -> float:
        return self.loop.time() - self.t0

    # -- sessions -----------------------------------------------------------------------------

    async def open(self) -> None:
        def session(limit: int) -> aiohttp.ClientSession:
            # keep-alive shorter than the gateway's, so a client never reuses a connection it is closing
            connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=min(2.0, self.settings.keepalive_timeout / 2))
            tracing = aiohttp.TraceConfig()
            tracing.on_request_headers_sent.append(_headers_sent)
            return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30), skip_auto_headers=("User-Agent",),
                                         trace_configs=[tracing])

        self.sessions = {"valid": session(400), "hostile": session(64), "stream": session(32)}
        host, port = self.base_url.removeprefix("http://").split(":")
        # The bulk (small calls, opaque-token calls, lists) goes through the lean client: see soak_client.
        self.raw = RawPool(host, int(port), limit=400, clock=self.clock, idle_timeout=min(2.0, self.settings.keepalive_timeout / 2))
        self._raw_heads = {}
        self._lag_watch = self.loop.create_task(self._watch_lag())

    async def _watch_lag(self) -> None:
        while True:
            started = self.loop.time()
            await asyncio.sleep(0.05)
            now = self.loop.time()
            self.own_lag.append((now, now - started - 0.05))

    def lag_since(self, since: float) -> float:
        """The clients' longest loop lag from ``since`` (loop time) until now."""
        return max((lag for when, lag in self.own_lag if when >= since), default=0.0)

    async def close(self) -> None:
        if self._lag_watch is not None:
            self._lag_watch.cancel()
        for session in self.sessions.values():
            await session.close()
        if getattr(self, "raw", None) is not None:
            self.raw.close()

    # -- one request --------------------------------------------------------------------------

    def _headers(self, token: str | None, **extra: str) -> CIMultiDict:
        headers = CIMultiDict(JSON_HEADERS)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(extra)
        return headers

    async def _post(self, pool: str, body: Any, headers: CIMultiDict | dict[str, str], *, path: str = "/mcp") -> tuple[int, bytes]:
        async with self.sessions[pool].post(f"{self.base_url}{path}", data=body, headers=headers, trace_request_ctx=CURRENT.get()) as response:
            answer = await response.read()
            if response.status == 401 and "WWW-Authenticate" not in response.headers:
                return 1401, answer  # D1/T7: a 401 always carries a challenge; reported as "401_no_challenge"
            return response.status, answer

    async def open_session(self) -> None:
        """U5: alice opens a session (the upstream hands out an id on initialize; the gateway binds it)."""
        body = _dumps(_rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}))
        async with self.sessions["valid"].post(self.url, data=body, headers=self._headers(self.tokens[0])) as response:
            await response.read()
            self.session_id = response.headers.get("Mcp-Session-Id")
        if not self.session_id:
            raise SystemExit("the upstream handed out no Mcp-Session-Id on initialize")

    def launch(self, kind: str, due: float) -> None:
        if self.in_flight >= 3000:
            self.skipped[kind] += 1  # the generator's own limit, reported: the gateway is not blamed
            return
        task = self.loop.create_task(self._one(kind, due))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _one(self, kind: str, due: float) -> None:
        self.in_flight += 1
        self.in_flight_by_kind[kind] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.sequence += 1
        request_id = f"soak-{kind}-{self.sequence}"
        sent = self.clock()
        holder = SimpleNamespace(wire=None, clock=self.clock)
        CURRENT.set(holder)
        try:
            outcome, detail = await getattr(self, f"_{kind}")(request_id)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            outcome, detail = _failure(exc), f"{type(exc).__name__}: {exc}"[:200]
        except asyncio.CancelledError:
            # Only the soak's final drain cancels: the request had no answer by then.
            self.records.add(KIND_INDEX[kind], due, sent, holder.wire, self.clock(), "timeout", "still waiting when the soak ended", request_id)
            raise
        finally:
            self.in_flight -= 1
            self.in_flight_by_kind[kind] -= 1
        self.records.add(KIND_INDEX[kind], due, sent, holder.wire, self.clock(), outcome, detail, request_id)

    # -- valid ----------------------------------------------------------------------------------

    async def _call_with(self, token: str | None, request_id: str, body: tuple[bytes, bytes] | None = None,
                         headers: dict[str, str] | None = None, **extra: str) -> tuple[str, str]:
        body, marker = body or self.call_bodies[self.random.randrange(len(self.call_bodies))]
        if headers is None:
            headers = {**JSON_HEADERS, "Authorization": f"Bearer {token}"}
        status, answer = await self._post("valid", body, {**headers, "X-Request-Id": request_id, **extra})
        if status != 200:
            return _status_name(status), answer[:200].decode(errors="replace")
        if marker not in answer or not answer.startswith(b'{"jsonrpc"'):
            return "200_bad_body", f"expected {marker.decode()}: {answer[:160].decode(errors='replace')}"
        return "200", ""

    def _raw_request(self, token: str, body: bytes, request_id: str) -> bytes:
        head = self._raw_heads.get(token)
        if head is None:
            head = self._raw_heads[token] = (
                f"POST /mcp HTTP/1.1\r\nHost: {self.base_url.removeprefix('http://')}\r\nContent-Type: application/json\r\n"
                f"Accept: application/json, text/event-stream\r\nAuthorization: Bearer {token}\r\n").encode()
        return b"%sContent-Length: %d\r\nX-Request-Id: %s\r\n\r\n%s" % (head, len(body), request_id.encode(), body)

    async def _raw_post(self, token: str, body: bytes, request_id: str) -> tuple[int, bytes]:
        status, answer, headers = await self.raw.request(self._raw_request(token, body, request_id), CURRENT.get(), timeout=30)
        if status == 401 and b"www-authenticate" not in headers:
            return 1401, answer
        return status, answer

    async def _raw_call(self, token: str, request_id: str) -> tuple[str, str]:
        body, marker = self.call_bodies[self.random.randrange(len(self.call_bodies))]
        status, answer = await self._raw_post(token, body, request_id)
        if status != 200:
            return _status_name(status), answer[:200].decode(errors="replace")
        if marker not in answer or not answer.startswith(b'{"jsonrpc"'):
            return "200_bad_body", f"expected {marker.decode()}: {answer[:160].decode(errors='replace')}"
        return "200", ""

    async def _call(self, request_id: str) -> tuple[str, str]:
        return await self._raw_call(self.call_tokens[self.sequence % len(self.call_tokens)], request_id)

    async def _call_fresh_jwt(self, request_id: str) -> tuple[str, str]:
        token = self.issuer.mint(sub=self.principals[self.sequence % 4], aud=self.public_url, exp=int(time.time()) + 90)
        return await self._call_with(token, request_id)

    async def _call_rotated_key(self, request_id: str) -> tuple[str, str]:
        token = self.issuer.mint(key=self.rotation_key, sub="rotated", aud=self.public_url, exp=int(time.time()) + 90)
        return await self._call_with(token, request_id)

    async def _call_opaque(self, request_id: str) -> tuple[str, str]:
        return await self._raw_call(self.opaque[self.sequence % 2], request_id)

    async def _call_opaque_new(self, request_id: str) -> tuple[str, str]:
        token = self.issuer.opaque(sub=f"gina-{self.sequence % 10}", aud=self.public_url, exp=int(time.time()) + 90)
        return await self._call_with(token, request_id)

    async def _call_session(self, request_id: str) -> tuple[str, str]:
        return await self._call_with(self.tokens[0], request_id, **{"Mcp-Session-Id": self.session_id or ""})

    async def _call_slow(self, request_id: str) -> tuple[str, str]:
        return await self._call_with(self.patient_tokens[self.sequence % 4], request_id, self.slow_call)

    async def _call_later_forbidden(self, request_id: str) -> tuple[str, str]:
        body = (_dumps(_rpc("tools/call", {"name": LATER_FORBIDDEN_TOOL, "arguments": {}})),
                b'\\"tool\\":\\"' + LATER_FORBIDDEN_TOOL.encode() + b'\\"')
        return await self._call_with(self.tokens[1], request_id, body)

    async def _list(self, request_id: str) -> tuple[str, str]:
        token = self.tokens[self.sequence % len(self.tokens)]
        status, answer = await self._raw_post(token, self.list_body, request_id)
        if status != 200:
            return _status_name(status), answer[:200].decode(errors="replace")
        try:
            names = {tool["name"] for tool in json.loads(answer)["result"]["tools"]}
        except (ValueError, KeyError, TypeError):
            return "200_bad_body", answer[:200].decode(errors="replace")
        if FORBIDDEN_TOOL in names:
            return "list_leak", f"{FORBIDDEN_TOOL} listed ({len(names)} tools)"
        if len(names) == 499 and LATER_FORBIDDEN_TOOL in names:
            return "list_v1", ""
        if len(names) == 498 and LATER_FORBIDDEN_TOOL not in names:
            return "list_v2", ""
        return "list_wrong", f"{len(names)} tools, {LATER_FORBIDDEN_TOOL} {'in' if LATER_FORBIDDEN_TOOL in names else 'not in'} the list"

    # -- hostile --------------------------------------------------------------------------------

    async def _hostile(self, body: Any, headers: CIMultiDict, request_id: str, *, path: str = "/mcp") -> tuple[str, str]:
        headers["X-Request-Id"] = request_id
        status, answer = await self._post("hostile", body, headers, path=path)
        return _status_name(status), answer[:160].decode(errors="replace")

    def _small_call(self, tool: str = "tool_1") -> bytes:
        return _dumps(_rpc("tools/call", {"name": tool, "arguments": {}}))

    async def _forbidden_tool(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._small_call(FORBIDDEN_TOOL), self._headers(self.hostile_tokens[0]), request_id)

    async def _batch_with_forbidden(self, request_id: str) -> tuple[str, str]:
        body = _dumps([_rpc("tools/call", {"name": "tool_1"}, 1), _rpc("tools/call", {"name": FORBIDDEN_TOOL}, 2)])
        return await self._hostile(body, self._headers(self.hostile_tokens[1]), request_id)

    async def _forged_signature(self, request_id: str) -> tuple[str, str]:
        token = self.issuer.mint(key=self.stranger_key, sub="mallory", aud=self.public_url)
        return await self._hostile(self._small_call(), self._headers(token), request_id)

    async def _expired_token(self, request_id: str) -> tuple[str, str]:
        now = int(time.time())
        token = self.issuer.mint(sub="alice", aud=self.public_url, exp=now - 3600, iat=now - 7200, nbf=now - 7200)
        return await self._hostile(self._small_call(), self._headers(token), request_id)

    async def _wrong_audience(self, request_id: str) -> tuple[str, str]:
        token = self.issuer.mint(sub="alice", aud="https://elsewhere.example/mcp")
        return await self._hostile(self._small_call(), self._headers(token), request_id)

    async def _alg_none(self, request_id: str) -> tuple[str, str]:
        token = unsigned_token({"alg": "none", "typ": "at+jwt", "kid": "soak-rsa"}, self.issuer.claims(aud=self.public_url))
        return await self._hostile(self._small_call(), self._headers(token), request_id)

    async def _garbage_token(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._small_call(), self._headers(secrets.token_urlsafe(24)), request_id)

    async def _no_token(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._small_call(), self._headers(None), request_id)

    async def _token_in_query(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._small_call(), self._headers(self.hostile_tokens[0]), request_id,
                                   path=f"/mcp?access_token={self.hostile_tokens[0]}")

    async def _two_authorization(self, request_id: str) -> tuple[str, str]:
        headers = self._headers(self.hostile_tokens[0])
        headers.add("Authorization", f"Bearer {self.hostile_tokens[1]}")
        return await self._hostile(self._small_call(), headers, request_id)

    async def _malformed_json(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._small_call()[:-7], self._headers(self.hostile_tokens[1]), request_id)

    async def _fold_duplicate(self, request_id: str) -> tuple[str, str]:
        body = FOLD_DUPLICATES[self.sequence % len(FOLD_DUPLICATES)]
        return await self._hostile(body, self._headers(self.hostile_tokens[0]), request_id)

    async def _deep_nesting(self, request_id: str) -> tuple[str, str]:
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_1","arguments":{"x":' + b"[" * 200 + b"]" * 200 + b"}}}"
        return await self._hostile(body, self._headers(self.hostile_tokens[1]), request_id)

    def _oversize(self) -> bytes:
        return _dumps(_rpc("tools/call", {"name": "tool_1", "arguments": {"text": "x" * (self.settings.max_body_bytes + 16 * 1024)}}))

    async def _oversize_body(self, request_id: str) -> tuple[str, str]:
        return await self._hostile(self._oversize(), self._headers(self.hostile_tokens[0]), request_id)

    async def _oversize_chunked(self, request_id: str) -> tuple[str, str]:
        body = self._oversize()

        async def chunks():
            for start in range(0, len(body), 8192):
                yield body[start:start + 8192]

        return await self._hostile(chunks(), self._headers(self.hostile_tokens[1]), request_id)

    async def _batch_too_large(self, request_id: str) -> tuple[str, str]:
        body = _dumps([_rpc("tools/call", {"name": "tool_1"}, i) for i in range(51)])
        return await self._hostile(body, self._headers(self.hostile_tokens[0]), request_id)

    async def _bad_method_name(self, request_id: str) -> tuple[str, str]:
        body = _dumps(_rpc("notifications/../tools/call", {"name": FORBIDDEN_TOOL}))
        return await self._hostile(body, self._headers(self.hostile_tokens[1]), request_id)

    async def _duplicate_session_header(self, request_id: str) -> tuple[str, str]:
        headers = self._headers(self.hostile_tokens[0])
        headers.add("Mcp-Session-Id", self.session_id or "x")
        headers.add("Mcp-Session-Id", "another")
        return await self._hostile(self._small_call(), headers, request_id)

    async def _wrong_content_type(self, request_id: str) -> tuple[str, str]:
        headers = self._headers(self.hostile_tokens[1])
        headers["Content-Type"] = "text/plain"
        return await self._hostile(self._small_call(), headers, request_id)

    async def _session_of_another(self, request_id: str) -> tuple[str, str]:
        headers = self._headers(self.tokens[1], **{"Mcp-Session-Id": self.session_id or "x"})
        return await self._hostile(self._small_call(), headers, request_id)

    # -- streams --------------------------------------------------------------------------------

    async def _read_events(self, response: aiohttp.ClientResponse) -> tuple[int, dict | None]:
        """Progress events seen and the final result (if any), until the stream ends."""
        progress, final = 0, None
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if event.get("method") == "notifications/progress":
                progress += 1
                sent_at = event.get("params", {}).get("sentAt")
                if isinstance(sent_at, float):
                    self.relay_delays.append(time.time() - sent_at)
            elif "result" in event:
                final = event
        return progress, final

    async def _stream_post(self, request_id: str) -> tuple[str, str]:
        body = _dumps(_rpc("tools/call", {"name": "long_task", "arguments": {}}, request_id))
        headers = self._headers(self.stream_token, **{"X-Request-Id": request_id})
        timeout = aiohttp.ClientTimeout(total=self.stream_events * self.stream_interval + 30)
        async with self.sessions["stream"].post(self.url, data=body, headers=headers, timeout=timeout, trace_request_ctx=CURRENT.get()) as response:
            if response.status != 200:
                return str(response.status), (await response.read())[:160].decode(errors="replace")
            progress, final = await self._read_events(response)
        if final is not None and final.get("id") == request_id:
            return "200", ""
        return "stream_truncated", f"{progress} of {self.stream_events} progress events, no result"

    async def _stream_get(self, request_id: str) -> tuple[str, str]:
        headers = CIMultiDict({"Accept": "text/event-stream", "Authorization": f"Bearer {self.stream_token}", "X-Request-Id": request_id})
        timeout = aiohttp.ClientTimeout(total=self.stream_events * self.stream_interval + 30)
        async with self.sessions["stream"].get(self.url, headers=headers, timeout=timeout, trace_request_ctx=CURRENT.get()) as response:
            if response.status != 200:
                return str(response.status), (await response.read())[:160].decode(errors="replace")
            progress, _ = await self._read_events(response)
        if progress == self.stream_events:
            return "200", ""
        return "stream_ended_early", f"{progress} of {self.stream_events} events"

    # -- slow clients (raw sockets: no HTTP library would send these) --------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.base_url.removeprefix("http://").split(":")
        return await asyncio.open_connection(host, int(port))

    async def _until_closed(self, reader: asyncio.StreamReader, limit: float, *, first_only: bool = False) -> tuple[bytes, float | None, float | None]:
        """What the server sent, when its first byte came and when it closed (seconds from now; None when
        that did not happen within ``limit``). ``first_only``: stop at the first bytes (an answer's status line)."""
        started = self.loop.time()
        data, first = b"", None
        try:
            async with asyncio.timeout(limit):
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    if first is None:
                        first = self.loop.time() - started
                    data += chunk
                    if first_only:
                        return data, first, None
        except TimeoutError:
            return data, first, None
        except ConnectionError:
            pass
        return data, first, self.loop.time() - started

    def _judge_cut(self, elapsed: float | None, bound: float, since: float) -> str:
        """R1 promises a cut *within* the timeout. The client starts its clock after its own write (and its
        event loop may lag), so it sees the cut a little early or late: early is only wrong when the gateway
        cut at less than half the timeout; late is wrong beyond 2 s past it, plus however late the clients'
        own loop ran meanwhile (``since``: loop time of the write; the gateway is not blamed for the
        clients' delay in reading what it did)."""
        if elapsed is None:
            return "not_cut"
        if elapsed < bound * 0.5:
            return "cut_early"
        return "cut_in_time" if elapsed <= bound + 2.0 + self.lag_since(since) else "cut_late"

    async def _slow_headers_stall(self, request_id: str) -> tuple[str, str]:
        reader, writer = await self._connect()
        try:
            writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
            _wrote(CURRENT.get())
            await writer.drain()
            bound = self.settings.header_timeout
            since = self.loop.time()
            _, _, elapsed = await self._until_closed(reader, bound + 10)
            return self._judge_cut(elapsed, bound, since), "still open" if elapsed is None else f"closed after {elapsed:.2f}s"
        finally:
            writer.close()

    async def _slow_headers_trickle(self, request_id: str) -> tuple[str, str]:
        reader, writer = await self._connect()
        request = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Padding: "
                   + b"a" * 200 + b"\r\n\r\n")
        bound = self.settings.header_timeout
        since = self.loop.time()
        closed = asyncio.ensure_future(self._until_closed(reader, bound + 10))
        try:
            for byte in request:
                if closed.done():
                    break
                try:
                    writer.write(bytes([byte]))
                    _wrote(CURRENT.get())
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.wait([closed], timeout=0.5)
            _, _, elapsed = await closed
            return self._judge_cut(elapsed, bound, since), "still open" if elapsed is None else f"closed after {elapsed:.2f}s"
        finally:
            closed.cancel()
            writer.close()

    async def _slow_body(self, request_id: str) -> tuple[str, str]:
        """The body timer starts once the headers are in; the 408 must come at ``body_timeout``."""
        reader, writer = await self._connect()
        length = 4096
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {self.slow_token}\r\n"
                f"X-Request-Id: {request_id}\r\nContent-Length: {length}\r\n\r\n").encode()
        bound = self.settings.body_timeout
        padded = self._small_call().ljust(length)
        closed = None
        try:
            writer.write(head)
            _wrote(CURRENT.get())
            await writer.drain()
            since = self.loop.time()
            closed = asyncio.ensure_future(self._until_closed(reader, bound + 10, first_only=True))
            for start in range(0, length, 16):
                if closed.done():
                    break
                try:
                    writer.write(padded[start:start + 16])
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.wait([closed], timeout=0.5)
            answer, first, elapsed = await closed
            if not answer:
                return ("closed_without_answer" if elapsed is not None else "not_cut"), f"closed after {elapsed}s"
            # (the record ends here, at the answer: its time is the body timeout as the client saw it)
            status = answer.split(b" ", 2)[1].decode(errors="replace") if answer.startswith(b"HTTP/1.1 ") else "garbled"
            if status == "408" and first is not None and first > bound + 2.0 + self.lag_since(since):
                return "408_late", f"408 after {first:.2f}s"
            if status == "408" and first is not None and first < bound * 0.5:
                return "cut_early", f"408 after {first:.2f}s"
            return status, f"answered after {first:.2f}s"
        finally:
            if closed is not None:
                closed.cancel()
            writer.close()

    async def _idle_keepalive(self, request_id: str) -> tuple[str, str]:
        reader, writer = await self._connect()
        body = self._small_call()
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {self.slow_token}\r\n"
                f"X-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        bound = self.settings.keepalive_timeout
        try:
            writer.write(head + body)
            _wrote(CURRENT.get())
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            if not status_line.startswith(b"HTTP/1.1 200"):
                return status_line[9:12].decode(errors="replace") or "closed_without_answer", status_line[:80].decode(errors="replace")
            length = 0
            while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 10)
            since = self.loop.time()
            _, _, elapsed = await self._until_closed(reader, bound + 10)
            return self._judge_cut(elapsed, bound, since), "still open" if elapsed is None else f"closed after {elapsed:.2f}s"
        finally:
            writer.close()

    # -- keeping things open ------------------------------------------------------------------------

    async def keep_open(self, kind: str, count: int) -> None:
        """``count`` of ``kind`` open at all times; each reopened as soon as it ends (until stopping)."""

        async def one_lane(lane: int) -> None:
            await asyncio.sleep(lane * 0.37)  # stagger, so they do not all end together
            while not self.stopping:
                due = self.clock()
                await self._one(kind, due)
                if self.records.outcome_names[self.records.outcome[-1]] not in KINDS[KIND_INDEX[kind]].normal:
                    await asyncio.sleep(0.25)  # a fault (upstream or gateway down): reopen, but do not spin

        await asyncio.gather(*(one_lane(i) for i in range(count)))

    async def open_loop(self, rates: dict[str, float], until: Callable[[], bool]) -> None:
        """Each kind at its rate, launched when due, whatever earlier ones are doing."""
        start = self.clock()
        phases = {kind: self.random.random() / rate for kind, rate in rates.items() if rate > 0}
        sent = dict.fromkeys(phases, 0)
        while not until():
            now = self.clock()
            for kind, rate in rates.items():
                if kind not in phases:
                    continue
                while True:
                    due = start + phases[kind] + sent[kind] / rate
                    if due > now:
                        break
                    self.launch(kind, due)
                    sent[kind] += 1
            await asyncio.sleep(0.002)

    async def drain(self, timeout: float) -> int:
        """Wait for launched requests to finish; returns how many were still running (then cancelled)."""
        pending = set(self.tasks)
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        return len(still)


class CalibrationFailed(Exception):
    """The gateway did not answer small calls during calibration: there is no capacity to soak at."""


# The calibration sends the bulk of the soak's mix in the soak's own shares (soak.mix: 2 % 500-tool lists,
# 3 % opaque-token calls, the rest small calls over 20 tools x 20 arguments from eight principals), so that
# 70 % of the measured capacity is 70 % of what the mix costs. Measured on small calls alone, the mix cost
# ~1.3x a calibration request, and "70 %" was ~90 % of what the gateway could do: a short disturbance (a
# policy change, the other work on the machine) then left a backlog that took most of a minute to drain.
# The fixed-rate kinds (about 45/s in all: hostile requests, slow calls, streams) are left out.
CALIBRATION_MIX = (("list", 2), ("call_opaque", 3), ("call", 95))


async def closed_loop(load: Load, seconds: float, concurrency: int) -> tuple[int, float]:
    """Calibration: ``concurrency`` clients each sending the next request of the mix (``CALIBRATION_MIX``) as
    soon as one is answered. Every request must get its normal answer within 30 s; anything else is
    ``CalibrationFailed`` (with what was seen)."""
    count = 0
    failures: Counter = Counter()
    deadline = load.loop.time() + seconds
    slots = [kind for kind, share in CALIBRATION_MIX for _ in range(share)]
    random.Random(11).shuffle(slots)

    async def client(i: int) -> None:
        nonlocal count
        turn = i * 13
        while load.loop.time() < deadline and not failures:
            kind = slots[turn % len(slots)]
            turn += 1
            load.sequence += 1  # (spreads the calls over the principals, as the soak does)
            try:
                outcome, detail = await getattr(load, f"_{kind}")(f"calibration-{i}")
                if outcome in KINDS[KIND_INDEX[kind]].normal:
                    count += 1
                else:
                    failures[f"{kind} {outcome}"] += 1
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                failures[f"{kind} {_failure(exc)}"] += 1

    started = load.loop.time()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = load.loop.time() - started
    if failures:
        raise CalibrationFailed(f"{sum(failures.values())} of {count + sum(failures.values())} requests failed with "
                                + ", ".join(f"{o} ×{n}" for o, n in failures.most_common())
                                + f" ({count} answered as expected first, {concurrency} clients, closed loop)")
    return count, elapsed
