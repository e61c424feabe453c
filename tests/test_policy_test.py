"""A4: ``mcp-auth-gateway policy test``: YAML cases, a readable report, exit codes, JUnit XML, candidates.

Every example folder under policies/examples and the default set in policies/ ships a tests/ folder; the
command runs each of them here, as CI would (``make test`` runs this file). The cases are decided by the
gateway's own code (principal, parser, Authorizer): the last test sends the default set's cases to a
running gateway and checks that it answers as ``policy test`` says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from gateway.authz.policytest import PolicyHarness, load_case_file
from gateway.config import AuthorizationConfig
from tests.factories import bearer
from tests.upstreams import RecordingUpstream

ROOT = Path(__file__).parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = POLICIES / "examples"
FOLDERS = [POLICIES, *sorted(p for p in EXAMPLES.iterdir() if p.is_dir())]


def policy_test(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "policy", "test", *args], capture_output=True, text=True, cwd=cwd)


def schema_args(folder: Path) -> list[str]:
    """policies/README.md section 13: an example without its own schema uses the shipped one."""
    return [] if (folder / "mcp.cedarschema").is_file() else ["--schema", str(POLICIES / "mcp.cedarschema")]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_a4_every_shipped_policy_set_passes_its_own_tests(folder):
    cases = sorted((folder / "tests").glob("*.yaml"))
    assert cases, f"{folder} has no tests/*.yaml"
    result = policy_test(str(folder), *schema_args(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(load_case_file(path).cases) for path in cases)
    assert f"{count} cases: {count} passed, 0 failed" in result.stdout


# -- a policy folder of our own ---------------------------------------------------------------------------------

POLICY = """\
@id("everyone-may-list")
permit (principal, action == Action::"tools/list", resource);

@id("engineers-may-search")
permit (principal in Group::"engineering", action == Action::"tools/call", resource == Tool::"search");

@id("no-prod")
forbid (principal, action == Action::"tools/call", resource)
when { context.arguments has db && context.arguments.db == "prod" };
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "policies.cedar").write_text(POLICY)
    (tmp_path / "tests").mkdir()
    return tmp_path


def write_cases(folder: Path, cases: list[dict], name: str = "cases.yaml", **top) -> Path:
    path = folder / "tests" / name
    path.write_text(yaml.safe_dump({"defaults": {"claims": {"iss": "https://idp.example.com"}}, **top, "cases": cases}))
    return path


SEARCH = {"method": "tools/call", "name": "search", "arguments": {"q": "x"}}


def test_a4_passing_cases_exit_0_with_a_readable_report(folder):
    write_cases(folder, [
        {"name": "engineers may search", "claims": {"sub": "bob", "groups": ["engineering"]}, "request": SEARCH,
         "expect": "allow", "policies": ["engineers-may-search"]},
        {"name": "others may not", "claims": {"sub": "eve"}, "request": SEARCH, "expect": "deny", "reason": "no_policy_permits"},
        {"name": "search is listed for engineers", "claims": {"sub": "bob", "groups": ["engineering"]},
         "request": {"method": "tools/call", "name": "search", "listing": True}, "expect": "allow"},
    ])
    result = policy_test(str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  PASS  engineers may search" in result.stdout
    assert "3 cases: 3 passed, 0 failed" in result.stdout


def test_a4_a_failing_case_exits_1_and_says_why_and_which_policies_decided(folder):
    write_cases(folder, [
        {"name": "prod search should be allowed (wrong)", "claims": {"sub": "bob", "groups": ["engineering"]},
         "request": {**SEARCH, "arguments": {"db": "prod"}}, "expect": "allow"},
        {"name": "wrong deciding policy", "claims": {"sub": "bob"}, "request": {"method": "tools/list"},
         "expect": "allow", "policies": ["someone-else"]},
        {"name": "right", "claims": {"sub": "bob"}, "request": {"method": "tools/list"}, "expect": "allow"},
    ])
    result = policy_test(str(folder))
    assert result.returncode == 1
    assert "  FAIL  prod search should be allowed (wrong)\n        expected allow, got deny (denied_by_policy) by no-prod" in result.stdout
    assert "expected deciding policies [someone-else], got [everyone-may-list]" in result.stdout
    assert "3 cases: 1 passed, 2 failed" in result.stdout


def test_a4_a_request_the_gateway_refuses_fails_the_case_with_the_400_reason(folder):
    # I2: keys equal after case folding are refused before any policy: there is no decision to expect.
    write_cases(folder, [{"name": "folded twins", "claims": {"sub": "bob", "groups": ["engineering"]},
                          "request": {**SEARCH, "arguments": {"db": "dev", "DB": "prod"}}, "expect": "deny"}])
    result = policy_test(str(folder))
    assert result.returncode == 1
    assert "expected deny, got refused" in result.stdout and "400 before any policy" in result.stdout


@pytest.mark.parametrize("text, problem", [
    ("cases: [\n", "not valid YAML"),
    ("cases: []\n", "cases: required, a non-empty list"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
     "cases:\n  - {name: a, claims: {sub: x}, request: {method: tools/call, name: s, arguments: {v: *e}}, expect: allow}\n",
     "more than 100000 values"),
    ("tools: {search: {}}\ncases:\n  - {name: a, claims: {sub: x}, request: {method: tools/list}, expect: allow}\n",
     "tools: must be a list of tool definitions"),
    ("cases:\n  - {name: a, claims: {sub: x}, request: {method: tools/list}, expect: allow, expected: deny}\n", "cases[0].expected: unknown key"),
    ("cases:\n  - {name: a, claims: {sub: x}, request: {method: tools/list}, expect: permit}\n", "expect: required, allow or deny"),
    ("cases:\n  - {name: a, request: {method: tools/list}, expect: allow}\n", "claims.sub: required"),
    ("cases:\n  - {name: a, claims: {sub: x, sub: y}, request: {method: tools/list}, expect: allow}\n", "appears twice"),
    ("cases:\n  - {name: a, claims: {sub: x}, request: {method: tools/list}, expect: allow}\n"
     "  - {name: a, claims: {sub: x}, request: {method: tools/list}, expect: allow}\n", "used by another case"),
    ("cases:\n  - {name: a, claims: {sub: x}, request: {method: tools/call, name: s, arguments: {}, listing: true}, expect: allow}\n",
     "lists are filtered with empty arguments"),
])
def test_a4_an_unreadable_case_file_exits_2_naming_file_and_key(folder, text, problem):
    (folder / "tests" / "bad.yaml").write_text(text)
    result = policy_test(str(folder))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(folder / "tests" / "bad.yaml") in result.stderr and problem in result.stderr
    assert "no case was run" in result.stderr and "PASS" not in result.stdout


def test_a4_broken_policies_missing_folders_and_no_cases_exit_2(folder, tmp_path):
    assert policy_test(str(tmp_path / "nowhere")).returncode == 2
    result = policy_test(str(folder))  # tests/ is empty
    assert result.returncode == 2 and "no case files" in result.stderr
    write_cases(folder, [{"name": "a", "claims": {"sub": "x"}, "request": {"method": "tools/list"}, "expect": "allow"}])
    (folder / "broken.cedar").write_text("permit (principal, action, resource)\nwhen { oops };\n")
    result = policy_test(str(folder))
    assert result.returncode == 2 and f"{folder / 'broken.cedar'}:1:" in result.stderr


def test_a4_junit_file_for_ci(folder, tmp_path):
    write_cases(folder, [
        {"name": "passes", "claims": {"sub": "bob"}, "request": {"method": "tools/list"}, "expect": "allow"},
        {"name": "fails \x01 <&> \"quoted\"", "claims": {"sub": "eve"}, "request": SEARCH, "expect": "allow"},
    ])
    junit = tmp_path / "out" / "policy-tests.xml"
    junit.parent.mkdir()
    result = policy_test(str(folder), "--junit", str(junit))
    assert result.returncode == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    [suite] = root.findall("testsuite")
    assert suite.get("name") == str(folder / "tests" / "cases.yaml") and suite.get("failures") == "1"
    passed, failed = suite.findall("testcase")
    assert passed.get("name") == "passes" and passed.find("failure") is None and passed.get("classname") == "cases"
    assert failed.get("name") == "fails \ufffd <&> \"quoted\""  # a control character XML cannot hold is replaced
    assert failed.find("failure").get("message") == "expected allow, got deny (no_policy_permits)"
    assert "decision: deny (no_policy_permits)" in failed.find("system-out").text


def test_a4_candidate_policies_print_where_decisions_differ(folder, tmp_path):
    write_cases(folder, [
        {"name": "engineers may search", "claims": {"sub": "bob", "groups": ["engineering"]}, "request": SEARCH, "expect": "allow"},
        {"name": "lists", "claims": {"sub": "bob"}, "request": {"method": "tools/list"}, "expect": "allow"},
    ])
    candidate = tmp_path / "next"
    candidate.mkdir()
    (candidate / "next.cedar").write_text('@id("everyone-may-list")\npermit (principal, action == Action::"tools/list", resource);\n')
    result = policy_test(str(folder), "--candidate", str(candidate))
    assert result.returncode == 0, result.stdout + result.stderr  # expectations are the enforced set's
    assert f"candidate {candidate}: 1 of 2 decisions differ" in result.stdout
    assert ("  cases.yaml: engineers may search\n        enforced  allow (allowed) by engineers-may-search\n"
            "        candidate deny (no_policy_permits)") in result.stdout
    (candidate / "next.cedar").write_text("permit (principal, action, resource) when { oops };\n")
    assert policy_test(str(folder), "--candidate", str(candidate)).returncode == 2


def test_a4_with_a_config_principals_are_issuer_qualified_as_at_runtime(folder, tmp_path):
    # I7: with two issuers, User::"corp/alice" is not User::"partner/alice".
    (folder / "policies.cedar").write_text('@id("corp-alice")\npermit (principal == User::"corp/alice", action, resource);\n')
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({
        "server": {"public_url": "https://mcp.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
        "auth": {"issuers": [{"issuer": "https://corp.example.com", "name": "corp"},
                             {"issuer": "https://partner.example.com", "name": "partner"}]},
        "authorization": {"policies": str(folder)}}))
    write_cases(folder, [
        {"name": "corp alice", "claims": {"iss": "https://corp.example.com", "sub": "alice"}, "request": {"method": "tools/list"},
         "expect": "allow", "policies": ["corp-alice"]},
        {"name": "partner alice", "claims": {"iss": "https://partner.example.com", "sub": "alice"},
         "request": {"method": "tools/list"}, "expect": "deny"},
        {"name": "unknown issuer", "claims": {"iss": "https://other.example.com", "sub": "alice"},
         "request": {"method": "tools/list"}, "expect": "deny"},
    ])
    result = policy_test(str(folder), "--config", str(config))
    assert result.returncode == 1
    assert "PASS  corp alice" in result.stdout and "PASS  partner alice" in result.stdout
    assert "FAIL  unknown issuer\n        expected deny, got refused (bad_claims)" in result.stdout
    assert policy_test(str(folder), "--config", str(config), "--schema", "x").returncode == 2


async def test_a4_policy_test_decides_as_the_running_gateway_does(start_gateway, upstream: RecordingUpstream, issuer):
    """No second model: each decided case of the default set, sent by a real client with a token carrying
    its claims, is forwarded exactly when ``policy test`` says allow, and refused with 403 when it says deny."""
    case_file = load_case_file(POLICIES / "tests" / "default.yaml")
    authorization = AuthorizationConfig(policies=POLICIES, schema=POLICIES / "mcp.cedarschema", entities=POLICIES / "entities.json")
    harness = PolicyHarness(authorization)
    client = await start_gateway(upstream.url, authorization={
        "policies": str(POLICIES), "schema": str(POLICIES / "mcp.cedarschema"), "entities": str(POLICIES / "entities.json")})
    checked = 0
    for case in case_file.cases:
        outcome = harness.decide(case)
        if case.listing or outcome.reason == "not_evaluated":
            continue
        claims = {**case.claims, "iss": issuer.url}
        before = len(upstream.received)
        response = await client.post("/mcp", data=case.body, headers={
            **bearer(issuer.mint(**claims)), "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        forwarded = len(upstream.received) > before
        assert (response.status, forwarded) == ((200, True) if outcome.decision == "allow" else (403, False)), case.name
        checked += 1
    assert checked >= 8


def test_a4_the_readme_example_case_file_runs_as_shown(tmp_path):
    """policies/README.md section 14 teaches with a copyable case file: copied, it passes."""
    import re

    text = (POLICIES / "README.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("# policies/tests/default.yaml")]
    (tmp_path / "copied.yaml").write_text(block)
    result = policy_test(str(tmp_path / "copied.yaml"), "--config", str(readme_config(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 cases: 3 passed, 0 failed" in result.stdout


def readme_config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({
        "server": {"public_url": "https://mcp.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:3000/mcp"},
        "auth": {"issuers": [{"issuer": "https://idp.example.com"}]},
        "authorization": {"policies": str(POLICIES), "schema": str(POLICIES / "mcp.cedarschema"),
                          "entities": str(POLICIES / "entities.json")}}))
    return config
