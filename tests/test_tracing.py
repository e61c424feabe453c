"""O2: OpenTelemetry tracing, tested with a real OTLP/HTTP receiver on loopback and a real ``serve`` process.

The receiver is a small aiohttp server that decodes ``ExportTraceServiceRequest`` protobufs with
``opentelemetry-proto``, the way a collector does. Spans are read after the gateway process has been
stopped, and were sent by the flush at shutdown (see ``traced``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.observe.tracing import forwarded_trace_context, parse_traceparent, parse_tracestate
from tests.factories import bearer
from tests.upstreams import RecordingUpstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
META_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
META_PARENT_ID = "b7ad6b7169203331"


def call(name: str, arguments: dict, *, meta: dict | None = None, rpc_id: int = 1) -> dict:
    params: dict = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}


# -- the W3C parsers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "", "00-" + "0" * 32 + f"-{PARENT_ID}-01", f"00-{TRACE_ID}-" + "0" * 16 + "-01", f"ff-{TRACE_ID}-{PARENT_ID}-01",
    TRACEPARENT.upper(), f"00-{TRACE_ID}-{PARENT_ID}-01-extra", f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}-1", f"00_{TRACE_ID}_{PARENT_ID}_01", TRACEPARENT + "\r\nX-Evil: 1", "x" * 10_000,
])
def test_O2_malformed_traceparent_is_no_parent(value):
    assert parse_traceparent([value]) is None


def test_O2_traceparent_sent_twice_is_no_parent():
    assert parse_traceparent([TRACEPARENT, TRACEPARENT]) is None


def test_O2_later_traceparent_version_is_read_as_00():
    parent = parse_traceparent([f"cc-{TRACE_ID}-{PARENT_ID}-01-what-comes-later"])
    assert parent is not None and parent.header == TRACEPARENT


@pytest.mark.parametrize(("values", "expected"), [
    (["a=1, b=2", "c=3"], "a=1,b=2,c=3"),
    (["vendor@tenant=x", ""], "vendor@tenant=x"),
    (["a=1,a=2"], None),  # a key twice
    (["A=1"], None),
    ([" a=1 \t"], "a=1"),  # optional whitespace around list-members (§3.3.1.1)
    (["a=b=c"], None),
    ([",".join(f"k{i}=v" for i in range(33))], None),
    (["a=" + "x" * 600], None),
])
def test_O2_tracestate_is_parsed_or_dropped_whole(values, expected):
    assert parse_tracestate(values) == expected


def test_O2_tracing_off_forwards_only_a_parsed_trace_context():
    good = CIMultiDict([("traceparent", f"cc-{TRACE_ID}-{PARENT_ID}-01-x"), ("TraceState", "a=1"), ("tracestate", "b=2")])
    assert forwarded_trace_context(good) == {"traceparent": TRACEPARENT, "tracestate": "a=1,b=2"}
    assert forwarded_trace_context(CIMultiDict([("traceparent", "garbage"), ("tracestate", "a=1")])) == {}
    assert forwarded_trace_context(CIMultiDict([("traceparent", TRACEPARENT), ("tracestate", "A=1")])) == {"traceparent": TRACEPARENT}
    assert forwarded_trace_context(CIMultiDict([("tracestate", "a=1")])) == {}


async def test_O2_tracing_off_the_upstream_sees_the_client_trace_context_reserialized_or_none(start_gateway, upstream):
    client = await start_gateway(upstream.url)
    await client.post("/mcp", json=call("echo", {}), headers={"traceparent": f"cc-{TRACE_ID}-{PARENT_ID}-01-x", "tracestate": "a=1"})
    await client.post("/mcp", json=call("echo", {}), headers={"traceparent": "00-nonsense", "tracestate": "a=1"})
    first, second = upstream.received
    assert first.headers.getall("traceparent") == [TRACEPARENT] and first.headers.getall("tracestate") == ["a=1"]
    assert "traceparent" not in second.headers and "tracestate" not in second.headers
    assert client.gateway.tracing is None and client.gateway.endpoint.tracing is None


def test_O2_tracing_off_imports_no_opentelemetry(tmp_path):
    """Off means off: building the whole gateway loads no OpenTelemetry module (P: nothing on the hot path)."""
    import subprocess
    import sys

    (tmp_path / "p.cedar").write_text("permit (principal, action, resource);\n")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gateway.app import Gateway\n"
        "from gateway.config import parse_config\n"
        "config = parse_config({'server': {'public_url': 'https://gw.example.com/mcp'}, 'upstream': {'url': 'http://127.0.0.1:1/mcp'},"
        " 'auth': {'issuers': [{'issuer': 'https://idp.example.com'}]}, 'authorization': {'policies': 'p.cedar'}},"
        f" base_dir=Path({str(tmp_path)!r}))\n"
        "Gateway(config).create_app()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- a real OTLP/HTTP receiver and a real serve process ------------------------------------------------------


@dataclass
class OtlpReceiver:
    """Decodes what the exporter posts to /v1/traces; answers as a collector does."""

    bodies: list[bytes] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        return app

    async def _export(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self.bodies.append(await request.read())
        self.content_types.append(request.headers.get("Content-Type", ""))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    def spans(self) -> list[dict]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = []
        for body in self.bodies:
            export = ExportTraceServiceRequest()
            export.ParseFromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append({
                            "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(), "kind": span.kind, "resource": resource,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
                            "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        })
        return spans


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@pytest.fixture
async def otlp(aiohttp_server) -> tuple[OtlpReceiver, str]:
    receiver = OtlpReceiver()
    server = await aiohttp_server(receiver.app())
    return receiver, str(server.make_url("/v1/traces"))


@pytest.fixture
async def traced(serve_gateway, otlp, aiohttp_server, policies_dir, monkeypatch):
    """A served gateway with tracing on in front of a recording upstream; ``stop()`` ends the process.

    The batch processor's delay is set to 10 minutes (the SDK's own variable), so every span the receiver
    gets was sent by the flush at shutdown."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    (policies_dir / "no-deletes.cedar").write_text(
        '@id("no-deletes")\nforbid (principal, action == Action::"tools/call", resource == Tool::"delete_records");\n')
    receiver, endpoint = otlp
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.app())
    served = await serve_gateway(str(server.make_url("/mcp")), tracing={
        "enabled": True, "endpoint": endpoint, "service_name": "gateway-under-test", "sample_ratio": 1.0})

    async def stop() -> None:
        assert receiver.bodies == []  # nothing exported before the shutdown
        served.process.terminate()
        assert await served.process.wait() == 0, served.log_text()

    return served, receiver, recorder, stop


def by_name(spans: list[dict], trace_id: str) -> dict[str, dict]:
    return {span["name"]: span for span in spans if span["trace_id"] == trace_id}


async def test_O2_spans_continue_the_callers_trace_and_the_upstream_continues_the_gateways(traced, issuer):
    served, receiver, upstream, stop = traced
    token = issuer.mint(groups=["secret-group-name"])
    secret_argument = "argument-" + secrets.token_hex(8)
    async with aiohttp.ClientSession() as http:
        # From the header; the client also sent _meta (SEP-414), which the header wins over.
        async with http.post(f"{served.url}/mcp", json=call("echo", {"text": secret_argument},
                                                           meta={"traceparent": f"00-{META_TRACE_ID}-{META_PARENT_ID}-01"}),
                             headers={**bearer(token), "traceparent": TRACEPARENT, "tracestate": "vendor=opaque-value"}) as response:
            assert response.status == 200
            request_id = response.headers["X-Request-Id"]
        # From _meta alone.
        async with http.post(f"{served.url}/mcp", json=call("echo", {}, meta={"traceparent": f"00-{META_TRACE_ID}-{META_PARENT_ID}-01"}),
                             headers=bearer(token)) as response:
            assert response.status == 200
        # Malformed: a new trace, never an error.
        async with http.post(f"{served.url}/mcp", json=call("echo", {}), headers={**bearer(token), "traceparent": "00-zz-zz-01"}) as response:
            assert response.status == 200
        async with http.post(f"{served.url}/mcp", json=call("delete_records", {}), headers=bearer(token)) as response:
            denied_status = response.status
        # R: a tool name as long as the client likes is cut in the span (which waits in a bounded queue).
        async with http.post(f"{served.url}/mcp", json=call("t" * 5000, {}), headers=bearer(token)) as response:
            assert response.status == 200
        # The caller did not sample: neither does the gateway, and the upstream is told so.
        unsampled = "1" * 32
        async with http.post(f"{served.url}/mcp", json=call("echo", {}), headers={**bearer(token), "traceparent": f"00-{unsampled}-{PARENT_ID}-00"}) as response:
            assert response.status == 200
    await stop()  # the spans below were flushed at shutdown
    spans = receiver.spans()
    assert receiver.content_types and set(receiver.content_types) == {"application/x-protobuf"}
    assert {span["resource"].get("service.name") for span in spans} == {"gateway-under-test"}

    # 1. Parent from the traceparent header.
    trace = by_name(spans, TRACE_ID)
    server = trace["POST /mcp"]
    assert server["parent_id"] == PARENT_ID and server["kind"] == 2  # SPAN_KIND_SERVER
    assert {"token", "message", "scopes", "policy", "upstream"} <= set(trace)
    for stage in ("token", "message", "scopes", "policy", "upstream"):
        assert trace[stage]["parent_id"] == server["span_id"], stage
        assert server["start"] <= trace[stage]["start"] <= trace[stage]["end"] <= server["end"]
    assert trace["upstream"]["kind"] == 3  # SPAN_KIND_CLIENT
    attributes = server["attributes"]
    assert attributes["mcp.method.name"] == "tools/call" and attributes["gen_ai.tool.name"] == "echo"
    assert attributes["mcp_gateway.decision"] == "allow" and attributes["http.response.status_code"] == 200
    assert attributes["mcp_gateway.reason"] and attributes["mcp_gateway.policies"]
    assert attributes["mcp_gateway.trace_parent_source"] == "header"
    assert attributes["mcp_gateway.request_id"] == request_id
    assert [name for name, _ in server["events"]] == ["decision"]

    # The upstream's parent is the gateway's upstream span, in the header and in the _meta the client used.
    first, second = upstream.received[:2]
    expected = f"00-{TRACE_ID}-{trace['upstream']['span_id']}-01"
    assert first.headers.getall("traceparent") == [expected]
    assert first.headers.getall("tracestate") == ["vendor=opaque-value"]
    assert json.loads(first.body)["params"]["_meta"] == {"traceparent": expected, "tracestate": "vendor=opaque-value"}

    # 2. Parent from params._meta.traceparent (SEP-414).
    meta_trace = by_name(spans, META_TRACE_ID)
    assert meta_trace["POST /mcp"]["parent_id"] == META_PARENT_ID
    assert meta_trace["POST /mcp"]["attributes"]["mcp_gateway.trace_parent_source"] == "meta"
    meta_expected = f"00-{META_TRACE_ID}-{meta_trace['upstream']['span_id']}-01"
    assert second.headers.getall("traceparent") == [meta_expected]
    assert json.loads(second.body)["params"]["_meta"] == {"traceparent": meta_expected}

    # 3. Malformed: a root span of a new trace; the upstream still gets the gateway's context.
    roots = [s for s in spans if s["name"] == "POST /mcp" and s["parent_id"] == "" and s["attributes"]["mcp_gateway.decision"] == "allow"]
    assert len(roots) == 2
    [long_name] = [s for s in roots if s["attributes"]["gen_ai.tool.name"].startswith("ttt")]
    assert long_name["attributes"]["gen_ai.tool.name"] == "t" * 256
    roots.remove(long_name)
    third = upstream.received[2]
    assert third.headers["traceparent"].split("-")[1] == roots[0]["trace_id"]

    # 4. A denial: the deciding policy and reason on the span, no upstream span, nothing forwarded.
    assert denied_status == 403 and len(upstream.received) == 5  # the denied call never went
    denied = [s for s in spans if s["name"] == "POST /mcp" and s["attributes"].get("mcp_gateway.decision") == "deny"]
    assert len(denied) == 1
    assert denied[0]["attributes"]["gen_ai.tool.name"] == "delete_records"
    assert denied[0]["attributes"]["http.response.status_code"] == 403
    assert any("no-deletes" in policy for policy in denied[0]["attributes"]["mcp_gateway.policies"])
    denied_children = {s["name"] for s in spans if s["parent_id"] == denied[0]["span_id"]}
    assert "policy" in denied_children and "upstream" not in denied_children

    assert not [s for s in spans if s["trace_id"] == unsampled]
    last = upstream.received[-1].headers["traceparent"]
    assert last.startswith(f"00-{unsampled}-") and last.endswith("-00") and PARENT_ID not in last

    # Never a token, claim value or argument in anything exported.
    exported = b"".join(receiver.bodies)
    for secret in (token, token.split(".")[-1], secret_argument, "secret-group-name", issuer.claims()["sub"]):
        assert secret.encode() not in exported, secret


async def test_O2_refused_before_the_message_is_one_span_with_the_reason(traced):
    served, receiver, upstream, stop = traced
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/mcp", json=call("echo", {}), headers={"traceparent": TRACEPARENT,
                                                                                 "Authorization": "Bearer not-a-token"}) as response:
            assert response.status == 401
    await stop()
    trace = by_name(receiver.spans(), TRACE_ID)
    server = trace["POST /mcp"]
    assert server["attributes"]["http.response.status_code"] == 401
    assert server["attributes"]["mcp_gateway.decision"] == "deny" and server["attributes"]["mcp_gateway.reason"]
    assert set(trace) == {"POST /mcp", "token"} and upstream.received == []
    assert b"not-a-token" not in b"".join(receiver.bodies)


# -- configuration -------------------------------------------------------------------------------------------


def tracing_config(tmp_path, tracing: dict):
    from gateway.config import parse_config

    (tmp_path / "p.cedar").write_text("permit (principal, action, resource);\n")
    return parse_config({"server": {"public_url": "https://gw.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
                         "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "p.cedar"},
                         "tracing": tracing}, source="gateway.yaml", base_dir=tmp_path)


def test_O2_tracing_keys_and_defaults(tmp_path):
    default = tracing_config(tmp_path, {}).tracing
    assert (default.enabled, default.endpoint, default.service_name, default.sample_ratio) == (
        False, "http://localhost:4318/v1/traces", "mcp-auth-gateway", 1.0)
    on = tracing_config(tmp_path, {"enabled": True, "endpoint": "http://otel:4318/v1/traces", "sample_ratio": 0.25}).tracing
    assert on.enabled and on.endpoint == "http://otel:4318/v1/traces" and on.sample_ratio == 0.25


def test_O2_bad_tracing_configuration_names_the_key(tmp_path, monkeypatch):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        tracing_config(tmp_path, {"enabled": True, "endpoint": "otel:4318", "sample_ratio": 1.5, "sampel_ratio": 1})
    problems = "\n".join(caught.value.problems)
    assert "gateway.yaml: tracing.endpoint: must be an absolute http(s) URL" in problems
    assert "gateway.yaml: tracing.sample_ratio: must be between 0 and 1" in problems
    assert "gateway.yaml: tracing.sampel_ratio: unknown key (did you mean 'sample_ratio'?)" in problems
    # The packages are dependencies of the gateway; were they left out, validate says so rather than serve fail.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("opentelemetry") else real(name, *a))
    with pytest.raises(ConfigError) as caught:
        tracing_config(tmp_path, {"enabled": True})
    assert caught.value.problems == ["gateway.yaml: tracing.enabled: needs the Python package opentelemetry-sdk "
                                     "(a dependency of mcp-auth-gateway: was it left out?)"]
    assert tracing_config(tmp_path, {"enabled": False}).tracing.enabled is False  # off: no check at all
