"""P1: what was made cheap on the request path still says everything it said before.

The audit log is buffered, yet every event reaches the file within a second and before the process exits
(E3, E4); the decision cache's cheap key never lets two requests that could be decided differently share
a decision (Z1); the hand-written JSON log lines are the lines ``json.dumps`` wrote, access lines stay
complete and redacted (I9); counters count through their cached children; the token is hashed once.
Correctness only: no test here measures speed.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from types import MappingProxyType

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.principal import principal_from_claims
from gateway.authz.cedar import Authorizer, PolicyStore
from gateway.config import AuditConfig, parse_config
from gateway.mcp.jsonrpc import Message
from gateway.observe.audit import AUDIT_FLUSH_S, AuditLog
from gateway.observe import logs as logs_module
from gateway.observe.logs import ACCESS_FLUSH_S, JsonFormatter, LineBuffer, RedactingFilter, log_access
from gateway.observe.metrics import Metrics
from tests.factories import RESOURCE, bearer

CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "x"}}}
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"


# -- E3, E4: the buffered audit log, end to end -----------------------------------------------------------------


async def test_e4_every_audit_event_of_a_burst_is_in_the_file_after_sigterm(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    ids = [f"burst-{i:03d}" for i in range(150)]
    # 16 at a time: below the principal's share (limits.per_principal.concurrent, 64), so none is refused.
    async with aiohttp.ClientSession(headers=bearer(issuer.mint()), connector=aiohttp.TCPConnector(limit=16)) as http:
        async def call(request_id: str) -> int:
            async with http.post(f"{gateway.url}/mcp", json=CALL, headers={"X-Request-Id": request_id}) as response:
                await response.read()
                return response.status

        assert set(await asyncio.wait_for(asyncio.gather(*map(call, ids)), 30)) == {200}
    gateway.process.send_signal(signal.SIGTERM)  # at once: most events are still in the buffer
    assert await asyncio.wait_for(gateway.process.wait(), 15) == 0
    # Read once, without waiting: the exit wrote them.
    events = [json.loads(line) for line in (gateway.folder / "audit.jsonl").read_text().splitlines()]
    assert sorted(e["request_id"] for e in events) == ids
    assert {(e["outcome"], e["target"]) for e in events} == {("allow", "search")}


async def test_e4_a_running_gateway_writes_an_event_within_a_second(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    path = gateway.folder / "audit.jsonl"
    async with aiohttp.ClientSession(headers=bearer(issuer.mint())) as http:
        for request_id in ("first", "second"):  # the second also finds a flushed buffer and a new timer
            async with http.post(f"{gateway.url}/mcp", json=CALL, headers={"X-Request-Id": request_id}) as response:
                assert response.status == 200
            answered = time.monotonic()
            while not (path.exists() and f'"request_id": "{request_id}"' in path.read_text()):
                assert time.monotonic() - answered < 1.0, "the event was not written within a second"
                await asyncio.sleep(0.02)


# -- the audit log's buffer, in process -------------------------------------------------------------------------


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_e4_buffered_events_are_written_after_flush_after_in_order(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(file=path), flush_after=0.05)
    for i in range(3):
        audit.record(request_id=f"r{i}", outcome="allow", reason="allowed")
    assert _events(path) == []  # buffered: one write for the three
    await asyncio.sleep(0.2)
    assert [e["request_id"] for e in _events(path)] == ["r0", "r1", "r2"]
    audit.record(request_id="r3", outcome="deny", reason="no_policy_permits")
    audit.close()  # E3: the cleanup writes what is left
    assert [e["request_id"] for e in _events(path)] == ["r0", "r1", "r2", "r3"]
    audit.record(request_id="late", outcome="deny", reason="x")  # after close: written at once
    assert _events(path)[-1]["request_id"] == "late"


def test_e4_without_an_event_loop_an_event_is_written_at_once(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(AuditConfig(file=path)).record(request_id="r", outcome="allow", reason="allowed")
    assert [e["request_id"] for e in _events(path)] == ["r"]


async def test_e4_a_failed_write_keeps_the_events_and_refuses_while_failing(tmp_path):
    path = tmp_path / "missing" / "audit.jsonl"  # the folder does not exist yet: open fails
    audit = AuditLog(AuditConfig(file=path), flush_after=0.01)
    audit.record(request_id="kept", outcome="allow", reason="allowed")
    await asyncio.sleep(0.05)  # the timer's write failed
    with pytest.raises(OSError):
        audit.record(request_id="refused", outcome="allow", reason="allowed")  # its request gets a 500
    path.parent.mkdir()
    audit.record(request_id="after", outcome="allow", reason="allowed")
    audit.close()
    assert [e["request_id"] for e in _events(path)] == ["kept", "after"]


async def test_e4_on_a_pipe_a_batch_is_written_in_whole_lines_of_at_most_pipe_buf(monkeypatch):
    import os
    import select

    read_end, write_end = os.pipe()

    class Pipe:  # stdout as a container has it; records each write the audit log makes
        writes: list[str] = []

        def fileno(self) -> int:
            return write_end

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Pipe())
    audit = AuditLog(AuditConfig())  # no audit.file: stdout
    try:
        for i in range(200):
            audit.record(request_id=f"r{i:03d}", subject="s" * 40, outcome="allow", reason="allowed", latency_ms=0.25)
        audit.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert len(Pipe.writes) > 1 and all(len(w) <= select.PIPE_BUF and w.endswith("\n") for w in Pipe.writes)
    assert [json.loads(line)["request_id"] for line in "".join(Pipe.writes).splitlines()] == [f"r{i:03d}" for i in range(200)]


async def test_e4_i9_a_buffered_event_is_the_line_json_dumps_wrote(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditConfig(file=path))
    fields = dict(request_id="r", issuer="https://issuer.example", subject="al\u2028ice\n\"x\"", client_id="c",
                  method="resources/read", target="file:///a?access_token=secret-value&b=1", outcome="allow",
                  reason="allowed", latency_ms=0.5, policies=("p1", "file.cedar:3"), policy_version=2, errors=None,
                  extra={"nested": [1, 2.5, True, None]}, big=2**70)
    audit.record(**fields)
    audit.close()
    line = path.read_text()
    event = json.loads(line)
    assert "secret-value" not in line and event["target"] == "file:///a?access_token=[redacted]&b=1"
    expected = {"time": event["time"], "type": "audit",
                **{k: v for k, v in fields.items() if v is not None}, "target": event["target"]}
    assert line == json.dumps(expected, default=str) + "\n"


# -- Z1: the decision key never lets two differently decided requests share a decision --------------------------


def _authorizer(tmp_path: Path, policy: str, *, group_claims: tuple[str, ...] = ()) -> Authorizer:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.cedar").write_text(policy)
    config = parse_config({
        "server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:9/mcp"},
        "auth": {"issuers": [{"issuer": "https://corp.example"}]},
        "authorization": {"policies": str(folder), "group_claims": list(group_claims)},
    }, source="test.yaml")
    return Authorizer(PolicyStore(config.authorization), config.authorization, server_name="mcp")


def _principal(token_type: str = "jwt", **claims):
    base = {"iss": "https://corp.example", "sub": "alice", "client_id": "cli", "scope": "mcp"}
    base.update(claims)
    return principal_from_claims(base, token_type=token_type)


def _call(name: str = "search", method: str = "tools/call", **arguments) -> Message:
    key = "uri" if method.startswith("resources/") else "name"
    params = {key: name, "arguments": arguments} if method in ("tools/call", "prompts/get") else {key: name}
    return Message(kind="request", method=method, id=1, params=MappingProxyType(params))


PERMIT = "permit (principal, action, resource);\n"
LONG = "x" * 300

# (what differs, policy, group claims, request A (allowed), request B (denied)); a request is
# (principal, message, listing).
PAIRS = [
    ("a claim", "permit (principal, action, resource) when { principal.claims has dept && principal.claims.dept == \"eng\" };",
     (), (_principal(dept="eng"), _call(), False), (_principal(dept="ops"), _call(), False)),
    ("a nested claim", "permit (principal, action, resource) when { principal.claims.org.tier == \"gold\" };",
     (), (_principal(org={"tier": "gold"}), _call(), False), (_principal(org={"tier": "free"}), _call(), False)),
    ("the groups", "permit (principal, action, resource) when { principal in Group::\"admins\" };",
     ("groups",), (_principal(groups=["admins"]), _call(), False), (_principal(groups=["users"]), _call(), False)),
    ("the issuer (same sub, one namespace)", "permit (principal, action, resource) when { principal.iss == \"https://corp.example\" };",
     (), (_principal(), _call(), False), (_principal(iss="https://partner.example"), _call(), False)),
    ("the client", "permit (principal, action, resource) when { principal.client_id == \"cli\" };",
     (), (_principal(), _call(), False), (_principal(client_id="other"), _call(), False)),
    ("the scopes", "permit (principal, action, resource) when { principal.scopes.contains(\"admin\") };",
     (), (_principal(scope="mcp admin"), _call(), False), (_principal(), _call(), False)),
    ("the token type", "permit (principal, action, resource) when { context.token_type == \"jwt\" };",
     (), (_principal(), _call(), False), (_principal("introspected"), _call(), False)),
    ("the subject", "permit (principal == User::\"alice\", action, resource);",
     (), (_principal(), _call(), False), (_principal(sub="bob"), _call(), False)),
    ("an argument's value", "permit (principal, action, resource) unless { context.arguments has db && context.arguments.db == \"prod\" };",
     (), (_principal(), _call(db="dev"), False), (_principal(), _call(db="prod"), False)),
    ("an argument's type (\"1\" and 1)", "permit (principal, action, resource) unless { context.arguments has n && context.arguments.n == 1 };",
     (), (_principal(), _call(n="1"), False), (_principal(), _call(n=1), False)),
    ("an argument's type (true and 1)", "permit (principal, action, resource) unless { context.arguments has n && context.arguments.n == 1 };",
     (), (_principal(), _call(n=True), False), (_principal(), _call(n=1), False)),
    ("an argument present or not", "permit (principal, action, resource) unless { context.arguments has force };",
     (), (_principal(), _call(), False), (_principal(), _call(force=False), False)),
    ("a long argument (hashed key)", f"permit (principal, action, resource) unless {{ context.arguments has q && context.arguments.q == \"{LONG}b\" }};",
     (), (_principal(), _call(q=LONG + "a"), False), (_principal(), _call(q=LONG + "b"), False)),
    ("the tool", "permit (principal, action, resource == Tool::\"search\");",
     (), (_principal(), _call("search"), False), (_principal(), _call("delete"), False)),
    ("a long tool name (hashed key)", f"permit (principal, action, resource) unless {{ resource == Tool::\"{LONG}b\" }};",
     (), (_principal(), _call(LONG + "a"), False), (_principal(), _call(LONG + "b"), False)),
    ("the method, same name", "permit (principal, action == Action::\"tools/call\", resource);",
     (), (_principal(), _call("search"), False), (_principal(), _call("search", "prompts/get"), False)),
    ("the listing flag", "permit (principal, action, resource) unless { context.listing };",
     (), (_principal(), _call(), False), (_principal(), _call(), True)),
]


@pytest.mark.parametrize(("what", "policy", "groups", "allowed", "denied"), PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("first", ["allowed first", "denied first"])
def test_z1_p1_requests_that_differ_in_what_a_policy_reads_never_share_a_decision(tmp_path, what, policy, groups, allowed, denied, first):
    authorizer = _authorizer(tmp_path, policy, group_claims=groups)
    order = [(allowed, True), (denied, False)] if first == "allowed first" else [(denied, False), (allowed, True)]
    for _ in range(2):  # the second round answers from the cache
        for (principal, message, listing), expected in order:
            assert authorizer.decide(principal, message, listing=listing).allowed is expected, what
    a, b = (authorizer.build(p, m, listing=listing) for p, m, listing in (allowed, denied))
    assert a.key is not None and b.key is not None and a.key != b.key


def test_z1_p1_the_same_request_shares_a_decision_and_builds_no_entities(tmp_path):
    authorizer = _authorizer(tmp_path, PERMIT)
    principal = _principal()
    assert authorizer.decide_all(principal, [_call()])[0].allowed
    again = authorizer.build(_principal(), _call())  # another Principal object with the same content
    assert authorizer.evaluate_all([again])[0].allowed
    assert again._entities is None  # answered from the cache: the entity dicts were never made
    assert again.entities[0]["uid"] == {"type": "User", "id": "alice"}  # and are there when asked for


def test_z1_p1_a_policy_reload_is_a_new_decision(tmp_path):
    authorizer = _authorizer(tmp_path, PERMIT)
    principal = _principal()
    assert authorizer.decide(principal, _call()).allowed
    (tmp_path / "policies" / "p.cedar").write_text(PERMIT + "forbid (principal, action, resource == Tool::\"search\");\n")
    assert authorizer.store.reload_if_changed()
    decision = authorizer.decide(principal, _call())
    assert not decision.allowed and decision.policy_version == 2


def test_z1_p1_a_static_entity_change_is_a_new_decision(tmp_path):
    authorizer = _authorizer(tmp_path, "permit (principal, action, resource) when { resource has open && resource.open };")
    entities = tmp_path / "entities.json"
    assert not authorizer.decide(_principal(), _call()).allowed
    entities.write_text(json.dumps([{"uid": {"type": "Tool", "id": "search"}, "attrs": {"open": True}, "parents": []}]))
    config = parse_config({
        "server": {"public_url": RESOURCE}, "upstream": {"url": "http://127.0.0.1:9/mcp"},
        "auth": {"issuers": [{"issuer": "https://corp.example"}]},
        "authorization": {"policies": str(tmp_path / "policies"), "entities": str(entities)},
    }, source="test.yaml")
    authorizer.store.config = config.authorization
    assert authorizer.store.reload_if_changed()
    assert authorizer.decide(_principal(), _call()).allowed


def test_z1_p1_a_principal_gone_does_not_lend_its_digest_to_a_new_one(tmp_path):
    authorizer = _authorizer(tmp_path, "permit (principal, action, resource) when { principal.claims has dept && principal.claims.dept == \"eng\" };")
    for _ in range(50):  # new objects, perhaps at the addresses of collected ones
        assert authorizer.decide(_principal(dept="eng"), _call()).allowed
        gc.collect()
        assert not authorizer.decide(_principal(dept="ops"), _call()).allowed
        gc.collect()


def test_z1_p1_a_request_without_a_key_is_cached_by_all_it_holds(tmp_path):
    from gateway.authz.cedar import CedarRequest

    authorizer = _authorizer(tmp_path, "permit (principal, action, resource) when { resource has open && resource.open };")
    built = authorizer.build(_principal(), _call())

    def given(is_open: bool) -> CedarRequest:
        entities = [dict(e) for e in built.entities]
        entities[-1] = {**entities[-1], "attrs": {"open": is_open}}
        return CedarRequest(principal=built.principal, action=built.action, resource=built.resource,
                            context=built.context, entities=entities)

    # One at a time (a batch shares one entity set by uid: _evaluate_batch), each twice (cached the second time).
    assert [authorizer.evaluate(given(is_open)).allowed for is_open in (True, False, True, False)] == [True, False, True, False]


# -- I9: the JSON lines, hand-written ---------------------------------------------------------------------------


FIELD_TABLE = [
    {"request_id": "abc", "method": "POST", "path": "/mcp", "status": 200, "duration_ms": 0.812},
    {"path": "/x\n\r\x1b\u2028\u2029\x7f\x85é\"\\", "status": 404},
    {"big": 2**70, "negative": -3, "zero": -0.0, "small": 1e-300, "empty": ""},
    {"inf": float("inf")}, {"nan": float("nan")}, {"flag": True}, {"none": None},  # json.dumps' own spellings
    {"nested": {"a": [1, {"b": None}]}, "list": [1, "2"]}, {"tuple": ("a", "b")},
    {"message": "a field named like a base key"}, {"time": "replaced"}, {1: "an int key"},
    {"object": Path("/some/path")},
]


@pytest.mark.parametrize("fields", FIELD_TABLE, ids=range(len(FIELD_TABLE)))
@pytest.mark.parametrize("exc_text", [None, "Traceback (most recent call last):\n  boom"])
def test_i9_p1_a_json_line_is_what_json_dumps_of_the_merged_fields_writes(fields, exc_text):
    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "refused %s", ("it",), None)
    record.fields = dict(fields)
    record.exc_text = exc_text
    line = JsonFormatter().format(record)
    base = {"time": json.loads(line)["time"], "level": "warning", "logger": "gateway.x", "message": "refused it"}
    base.update(fields)
    if exc_text:
        base["exception"] = exc_text
    assert line == json.dumps(base, default=str)


def test_i9_p1_the_time_is_formatted_per_record_though_its_seconds_are_cached():
    formatter = JsonFormatter()
    stamps = []
    for created in (1_800_000_000.25, 1_800_000_000.75, 1_800_000_001.5):
        record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created % 1) * 1000
        stamps.append(json.loads(formatter.format(record))["time"])
    assert stamps == ["2027-01-15T08:00:00.250Z", "2027-01-15T08:00:00.750Z", "2027-01-15T08:00:01.500Z"]


def _access_line(*args) -> dict:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if RedactingFilter().filter(record):
                records.append(record)

    logger = logging.getLogger("gateway.access.test")
    logger.addHandler(keep := Keep())
    logger.setLevel(logging.INFO)
    try:
        log_access(logger, *args)
    finally:
        logger.removeHandler(keep)
    [record] = records
    return json.loads(JsonFormatter().format(record))


def test_i9_p1_an_access_line_has_every_field_and_no_token():
    line = _access_line("POST", "/mcp", 200, "abc", 1.25)
    assert {k: v for k, v in line.items() if k != "time"} == {
        "level": "info", "logger": "gateway.access.test", "message": "POST /mcp 200",
        "request_id": "abc", "method": "POST", "path": "/mcp", "status": 200, "duration_ms": 1.25}
    # The client chooses the method (any token), the path and the request id: each is redacted.
    line = _access_line(JWT, f"/mcp/{JWT}", 405, JWT[:60], 0.5)
    text = json.dumps(line)
    assert "eyJhbGciOiJSUzI1NiJ9" not in text and "eyJzdWIi" not in text
    assert line["method"] == "[redacted]" and line["path"] == "/mcp/[redacted]" and line["message"] == "[redacted] /mcp/[redacted] 405"
    assert _access_line("GET", "/mcp?access_token=opaque-secret", 400, "r", 0.1)["path"] == "/mcp?access_token=[redacted]"


async def test_i9_p1_access_lines_of_a_real_process_are_complete_and_redacted(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    # (request id, method, path, status, headers). aiohttp's parser refuses unknown methods before the app,
    # so a token as the method is covered by the unit test above; a token-shaped request id is let in.
    sent = [
        ("ok", "POST", "/mcp", 200, {"Authorization": f"Bearer {issuer.mint()}"}),
        ("no-token", "POST", "/mcp", 401, {}),
        ("token-in-path", "GET", f"/mcp/{JWT}", 404, {}),
        (JWT[:60], "POST", "/mcp", 401, {}),
    ]
    async with aiohttp.ClientSession() as http:
        for request_id, method, path, status, headers in sent:
            async with http.request(method, f"{gateway.url}{path}", json=CALL, headers={**headers, "X-Request-Id": request_id}) as response:
                assert response.status == status, request_id
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gateway.process.wait(), 15) == 0
    text = gateway.log_text()
    assert "eyJhbGciOiJSUzI1NiJ9" not in text and "eyJzdWIi" not in text
    access = {r["request_id"]: r for r in gateway.log_records() if r["logger"] == "gateway.access"}
    assert set(access) == {"ok", "no-token", "token-in-path", "[redacted]"}
    for request_id, method, path, status, _ in sent:
        line = access.get(request_id, access["[redacted]"])
        assert set(line) == {"time", "level", "logger", "message", "request_id", "method", "path", "status", "duration_ms"}
        assert line["status"] == status and line["method"] == method and line["level"] == "info" and line["duration_ms"] >= 0
    assert access["ok"]["path"] == "/mcp" and access["ok"]["message"] == "POST /mcp 200"
    assert access["token-in-path"]["path"] == "/mcp/[redacted]" and access["token-in-path"]["message"] == "GET /mcp/[redacted] 404"


# -- E2: counters through their children; T11: one hash per request ---------------------------------------------


def test_e2_p1_counting_through_children_is_counting():
    metrics = Metrics()
    for _ in range(3):
        metrics.request_counts("forwarded", 200).inc()
    metrics.request_counts("refused", 401).inc()
    metrics.decision_counts("deny", "no_policy_permits").inc()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert samples[("mcp_gateway_requests_total", (("outcome", "forwarded"), ("status", "200")))] == 3
    assert samples[("mcp_gateway_requests_total", (("outcome", "refused"), ("status", "401")))] == 1
    assert samples[("mcp_gateway_policy_decisions_total", (("decision", "allow"), ("reason", "allowed")))] == 0  # bound at start
    assert samples[("mcp_gateway_policy_decisions_total", (("decision", "deny"), ("reason", "no_policy_permits")))] == 1


async def test_t11_p1_a_request_hashes_its_token_once(start_gateway, upstream, issuer, monkeypatch):
    import gateway.auth.authenticator as authenticator_module
    import gateway.endpoint as endpoint_module

    client = await start_gateway(upstream.url)
    token = issuer.mint()
    assert (await client.post("/mcp", json=CALL, headers=bearer(token))).status == 200  # verified and cached
    hashed = []
    real = authenticator_module.token_hash

    def counting(value: str) -> bytes:
        hashed.append(value)
        return real(value)

    monkeypatch.setattr(authenticator_module, "token_hash", counting)
    monkeypatch.setattr(endpoint_module, "token_hash", counting)
    assert (await client.post("/mcp", json=CALL, headers=bearer(token))).status == 200
    assert hashed == [token]


def test_p1_serve_runs_on_uvloop_when_it_is_installed():
    uvloop = pytest.importorskip("uvloop")
    from gateway.app import run

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert run(loop_type()) is uvloop.Loop


def test_p1_garbage_collection_is_tuned_once_started(tmp_path):
    import subprocess

    script = ("import gc; from gateway.app import tune_garbage_collection; tune_garbage_collection(); "
              "print(gc.get_threshold()[0], gc.get_freeze_count() > 0)")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent.parent).stdout.split()
    # P1: young collections rarer than Python's default (700); R2: not so rare that the cyclic garbage of
    # failed requests piles up for minutes (gateway.app.tune_garbage_collection).
    assert 700 < int(output[0]) <= 10_000 and output[1] == "True"


def test_flush_interval_is_well_within_a_second():
    assert AUDIT_FLUSH_S <= 0.5


# -- P1, E3: access lines are held for a moment, never lost, never reordered --------------------------------------


def _buffered_logger(stream) -> tuple[logging.Logger, LineBuffer]:
    handler = LineBuffer(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"gateway.access.buffer-test-{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, handler


async def test_p1_access_lines_wait_for_the_timer_and_other_lines_write_them_first():
    stream = io.StringIO()
    logger, handler = _buffered_logger(stream)
    log_access(logger, "POST", "/mcp", 200, "first", 0.5)
    log_access(logger, "POST", "/mcp", 200, "second", 0.5)
    assert stream.getvalue() == ""  # held: a loop is running
    logger.warning("a warning")  # any other line writes the held ones first, in order
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("request_id", line["message"]) for line in lines] == ["first", "second", "a warning"]
    log_access(logger, "POST", "/mcp", 200, "third", 0.5)
    await asyncio.sleep(ACCESS_FLUSH_S + 0.1)
    assert json.loads(stream.getvalue().splitlines()[-1])["request_id"] == "third"  # the timer wrote it


def test_p1_without_an_event_loop_nothing_is_held_and_flush_writes_what_is():
    stream = io.StringIO()
    logger, handler = _buffered_logger(stream)
    log_access(logger, "GET", "/mcp", 200, "at-once", 0.1)
    assert json.loads(stream.getvalue())["request_id"] == "at-once"


async def test_p1_e3_held_access_lines_are_written_by_flush():
    stream = io.StringIO()
    logger, handler = _buffered_logger(stream)
    for i in range(50):
        log_access(logger, "POST", "/mcp", 200, f"r{i}", 0.1)
    assert stream.getvalue() == ""
    handler.flush()  # what logging.shutdown (at exit) and the end of serve() do
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == [f"r{i}" for i in range(50)]


def test_p1_lines_into_a_pipe_go_in_whole_lines_of_at_most_pipe_buf_bytes():
    lines = [("x" * 1000) + "\n" for _ in range(10)] + ["é" * 3000 + "\n"]
    pieces = logs_module._pieces(lines, select.PIPE_BUF)
    assert "".join(pieces) == "".join(lines)
    assert all(piece.endswith("\n") for piece in pieces)
    assert all(len(piece.encode()) <= select.PIPE_BUF for piece in pieces[:-1])  # a longer line goes alone
    read, write = os.pipe()
    try:
        assert logs_module._pipe_piece(os.fdopen(write, "w", closefd=False)) == select.PIPE_BUF
    finally:
        os.close(read)
        os.close(write)


async def test_p1_a_running_gateway_writes_its_access_line_within_a_second(serve_gateway, upstream, issuer):
    gateway = await serve_gateway(upstream.url)
    async with aiohttp.ClientSession(headers=bearer(issuer.mint())) as http:
        async with http.post(f"{gateway.url}/mcp", json=CALL, headers={"X-Request-Id": "soon"}) as response:
            assert response.status == 200
    answered = time.monotonic()
    while not any(r.get("request_id") == "soon" and r["logger"] == "gateway.access" for r in gateway.log_records()):
        assert time.monotonic() - answered < 1.0, "the access line was not written within a second"
        await asyncio.sleep(0.02)


def test_p1_an_access_record_is_the_record_make_record_makes():
    logger = logging.getLogger("gateway.access.record-test")
    saved = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing, getattr(logging, "logAsyncioTasks", False))
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False
    try:
        made = logs_module._access_record(logger, ("POST", "/mcp", 200))
        again = logs_module._access_record(logger, ("GET", "/x", 404))  # from the template this time
        expected = logger.makeRecord(logger.name, logging.INFO, logs_module.__file__, 0, "%s %s %d", ("GET", "/x", 404), None)
    finally:
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing, logging.logAsyncioTasks = saved
    timing = {"created", "msecs", "relativeCreated"}
    assert set(vars(again)) == set(vars(expected))
    assert {k: v for k, v in vars(again).items() if k not in timing} == {k: v for k, v in vars(expected).items() if k not in timing}
    assert abs(again.created - expected.created) < 1 and abs(again.relativeCreated - expected.relativeCreated) < 1000
    assert 0 <= again.msecs < 1000 and made.getMessage() == "POST /mcp 200" and again.getMessage() == "GET /x 404"


# -- Z5, R1: a body that came whole with its headers (read without waiting) is still bounded ----------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_z5_p1_a_body_over_the_limit_that_arrives_at_once_gets_413(upstream, start_gateway, issuer, framing):
    client = await start_gateway(upstream.url, server={"max_body_bytes": 1024})
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "' + b"x" * 2000 + b'"}'
    if framing == "chunked":  # no Content-Length to refuse up front: the bytes read are counted
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + issuer.mint().encode() + b"\r\n" + framed)  # one write: all of it at once
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.split()[1] == b"413"
    assert upstream.received == []


def test_u1_i5_p1_remembered_header_verdicts_still_follow_the_drop_set_and_connection():
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.upstream.headers import never_forwarded, upstream_request_headers

    def forwarded(headers: dict[str, str], dropped: frozenset[str]) -> CIMultiDict[str]:
        return upstream_request_headers(CIMultiDictProxy(CIMultiDict(headers)), dropped=dropped, remote="127.0.0.1",
                                        public_url="https://mcp.example.com/mcp", upstream_host="up:80")

    plain, stripping = never_forwarded(), never_forwarded(["X-Team"])
    assert forwarded({"X-Team": "a"}, plain)["X-Team"] == "a"  # remembered as forwardable under `plain`
    assert "X-Team" not in forwarded({"X-Team": "a"}, stripping)  # another drop set, another verdict
    assert "X-Team" not in forwarded({"X-Team": "a", "Connection": "x-team"}, plain)  # Connection-named: per request
    assert forwarded({"X-Team": "a"}, plain)["X-Team"] == "a"
    sent = forwarded({"Host": "evil", "X-Forwarded-For": "1.2.3.4", "Accept-Encoding": "gzip"}, frozenset())
    assert sent.getall("Host") == ["up:80"] and sent.getall("X-Forwarded-For") == ["127.0.0.1"]  # the gateway's own
    assert sent.getall("Accept-Encoding") == ["identity"] and sent["X-Forwarded-Host"] == "mcp.example.com"
