"""E2 metrics: served without a token, bounded labels, and never a token, subject or tool name."""

from __future__ import annotations

import os
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.factories import bearer

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def scrape(client) -> tuple[str, dict]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    return text, samples(text)


async def test_e2_metrics_count_outcomes_reasons_and_decisions_without_secrets(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False)
    token = issuer.mint(sub="alice-the-secret-subject")
    await client.post("/mcp", json=INIT, headers=bearer(token))
    await client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "secret_tool"}}, headers=bearer(token))
    await client.post("/mcp", json=INIT)  # no token
    await client.post("/mcp", json=INIT, headers=bearer(issuer.mint(aud="https://elsewhere")))
    text, values = await scrape(client)
    assert values[("mcp_gateway_requests_total", (("outcome", "forwarded"), ("status", "200")))] == 2
    assert values[("mcp_gateway_refusals_total", (("reason", "no_token"), ("stage", "credentials")))] == 1
    assert values[("mcp_gateway_refusals_total", (("reason", "jwt_wrong_audience"), ("stage", "token")))] == 1
    assert values[("mcp_gateway_policy_decisions_total", (("decision", "allow"), ("reason", "allowed")))] == 1
    assert values[("mcp_gateway_jwks_fetches_total", (("issuer", issuer.url),))] == 1
    assert values[("mcp_gateway_policy_version", ())] == 1
    assert ("mcp_gateway_upstream_response_seconds_count", ()) in values
    for secret in (token, "alice-the-secret-subject", "secret_tool"):
        assert secret not in text


async def test_e2_policy_version_metric_follows_reloads(upstream, start_gateway, issuer, policies_dir):
    client = await start_gateway(upstream.url, authenticated=False)
    (policies_dir / "allow-all.cedar").write_text("permit (principal, action, resource);\n// changed\n")
    os.utime(policies_dir / "allow-all.cedar", ns=(1, 10**18))
    assert client.gateway.policies.reload_if_changed()
    _, values = await scrape(client)
    assert values[("mcp_gateway_policy_version", ())] == 2
    assert values[("mcp_gateway_policy_reloads_total", (("result", "applied"),))] == 1


async def test_e2_metric_names_follow_prometheus_conventions(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False)
    text, _ = await scrape(client)
    for family in text_string_to_metric_families(text):
        if family.name.startswith("mcp_gateway"):
            assert re.fullmatch(r"mcp_gateway_[a-z_]+", family.name)
            if family.type == "counter":
                assert not family.name.endswith("_total")  # the client library adds _total to samples
