"""A4: ``mcp-auth-gateway policy test DIR``: policy unit tests in YAML, decided exactly as the gateway decides.

A case file (``DIR/tests/*.yaml``) holds cases; each names a token's claims, one MCP request and the
decision expected of the policies::

    defaults:                          # optional: merged into every case's claims
      claims: {iss: https://idp.example.com}
    tools:                             # optional: what the upstream's tools/list says (learned, as at runtime)
      - {name: delete_records, annotations: {destructiveHint: true}}
    cases:
      - name: admins may delete records
        claims: {sub: alice, groups: [admins]}
        request: {method: tools/call, name: delete_records, arguments: {table: dev_orders}}
        expect: allow
        policies: [admins-may-do-anything]          # optional: the deciding policies (@id or file:line)
      - name: engineers see search in tools/list
        claims: {sub: bob, groups: [engineering]}
        request: {method: tools/call, name: search, listing: true}
        expect: allow
        reason: allowed                               # optional: allowed, denied_by_policy, ...

Nothing here is a second model of the gateway: claims become a ``Principal`` with
``gateway.auth.principal`` (issuer-qualified when the configuration has several issuers), the request is
parsed by ``gateway.mcp.jsonrpc.parse_body`` (so what the gateway refuses with 400 is refused here too),
and ``gateway.authz.cedar.Authorizer`` decides it with the policies, schema and static entities loaded by
``load_policies``; a ``listing`` case is decided as the list filter decides an item, and the filter itself
(``Authorizer.item_check``) must agree. Scopes (``auth.*_scopes``) and step-up rules are configuration, not
policy: they are not part of a case (``policy explain`` shows scopes).

With a candidate policy folder, every case is decided by both sets and the differences are reported;
expectations are checked against the enforced set only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.principal import Principal, principal_from_claims, principal_namespace
from gateway.authz.cedar import LIST_CHECKS, Authorizer, PolicyStore
from gateway.config import AuthorizationConfig, IssuerConfig, _UniqueKeyLoader
from gateway.errors import BadRequest
from gateway.mcp.jsonrpc import Message, parse_body

FILE_KEYS = frozenset({"defaults", "tools", "cases"})
CASE_KEYS = frozenset({"name", "claims", "token_type", "request", "expect", "reason", "policies"})
REQUEST_KEYS = frozenset({"method", "name", "uri", "arguments", "params", "listing"})
EXPECTATIONS = ("allow", "deny")
REASONS = ("allowed", "denied_by_policy", "no_policy_permits", "policy_error", "not_evaluated")
# A listing case asks "is this item in the list?": the list method the item's call method is checked for.
LIST_OF = {call: list_method for list_method, (call, _) in LIST_CHECKS.items() if list_method != "resources/templates/list"}
MAX_CASE_FILE_BYTES = 4 * 1024 * 1024
MAX_REQUEST_NODES = 100_000


class CaseFileError(Exception):
    """A case file that cannot be read or is not a valid case file: every problem, with file and key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Case:
    file: Path
    name: str
    claims: Mapping[str, Any]
    token_type: str
    body: bytes  # the JSON-RPC request as a client would POST it
    listing: bool
    expect: str
    reason: str | None = None
    policies: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CaseFile:
    path: Path
    cases: tuple[Case, ...]
    tools: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What the policies made of one case: ``allow``, ``deny``, or ``refused`` (400 before any decision)."""

    decision: str
    reason: str
    policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    note: str = ""

    def describe(self) -> str:
        by = f" by {', '.join(self.policies)}" if self.policies else ""
        errors = f"; errors: {'; '.join(self.errors)}" if self.errors else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.decision} ({self.reason}){by}{errors}{note}"


@dataclass
class CaseResult:
    case: Case
    outcome: Outcome
    problems: list[str]
    seconds: float
    candidate: Outcome | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def differs(self) -> bool:
        return self.candidate is not None and (
            (self.candidate.decision, set(self.candidate.policies)) != (self.outcome.decision, set(self.outcome.policies)))


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    candidate: str | None = None

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]


# -- reading case files ----------------------------------------------------------------------------------------


def case_files(path: Path) -> list[Path]:
    """The case files for ``path``: itself if a file, else ``path/tests/*.yaml`` (or ``*.yml``) when that
    folder exists, else ``path/*.yaml``."""
    if path.is_file():
        return [path]
    folder = path / "tests" if (path / "tests").is_dir() else path
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))


def load_case_file(path: Path) -> CaseFile:
    try:
        if path.stat().st_size > MAX_CASE_FILE_BYTES:
            raise CaseFileError([f"{path}: larger than {MAX_CASE_FILE_BYTES} bytes"])
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except CaseFileError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError([f"{path}: cannot read: {exc}"]) from exc
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise CaseFileError([f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from exc
    problems: list[str] = []
    if not isinstance(data, dict):
        raise CaseFileError([f"{path}: must be a mapping with a `cases` list"])
    _unknown_keys(data, FILE_KEYS, str(path), "", problems)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"claims"} or not isinstance(defaults.get("claims", {}), dict):
        problems.append(f"{path}: defaults: must be a mapping with one key, claims (a mapping)")
        defaults = {}
    tools = data.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        problems.append(f"{path}: tools: must be a list of tool definitions, each with a name (as in a tools/list answer)")
        tools = []
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        problems.append(f"{path}: cases: required, a non-empty list")
        raw_cases = []
    cases: list[Case] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_cases):
        case = _case(path, index, raw, defaults.get("claims", {}), problems)
        if case is None:
            continue
        if case.name in names:
            problems.append(f"{path}: cases[{index}].name: {case.name!r} is used by another case in this file")
        names.add(case.name)
        cases.append(case)
    if problems:
        raise CaseFileError(problems)
    return CaseFile(path=path, cases=tuple(cases), tools=tuple(tools))


def _unknown_keys(data: Mapping[str, Any], known: frozenset[str], file: str, where: str, problems: list[str]) -> None:
    for key in data:
        if key not in known:
            problems.append(f"{file}: {where}{key}: unknown key (known: {', '.join(sorted(known))})")


def _case(path: Path, index: int, raw: Any, default_claims: Mapping[str, Any], problems: list[str]) -> Case | None:
    where = f"cases[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{path}: {where}: must be a mapping")
        return None
    before = len(problems)
    _unknown_keys(raw, CASE_KEYS, str(path), f"{where}.", problems)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{path}: {where}.name: required, a string")
        name = f"case {index}"
    where = f"{where} ({name!r})"
    claims = raw.get("claims", {})
    if not isinstance(claims, dict):
        problems.append(f"{path}: {where}.claims: must be a mapping of token claims")
        claims = {}
    claims = {**default_claims, **claims}
    if _nodes(claims) > MAX_REQUEST_NODES:
        problems.append(f"{path}: {where}.claims: more than {MAX_REQUEST_NODES} values")
        claims = {}
    if not isinstance(claims.get("sub"), str):
        problems.append(f"{path}: {where}.claims.sub: required (here or in defaults.claims), a string")
    token_type = raw.get("token_type", "jwt")
    if token_type not in ("jwt", "introspected"):
        problems.append(f"{path}: {where}.token_type: must be jwt or introspected")
    expect = raw.get("expect")
    if expect not in EXPECTATIONS:
        problems.append(f"{path}: {where}.expect: required, allow or deny")
    reason = raw.get("reason")
    if reason is not None and reason not in REASONS:
        problems.append(f"{path}: {where}.reason: must be one of {', '.join(REASONS)}")
    policies = raw.get("policies")
    if policies is not None and (not isinstance(policies, list) or not all(isinstance(p, str) for p in policies)):
        problems.append(f"{path}: {where}.policies: must be a list of policy ids")
        policies = None
    body, listing = _request(path, where, raw.get("request"), problems)
    if len(problems) > before:
        return None
    return Case(file=path, name=name, claims=claims, token_type=token_type, body=body, listing=listing,
                expect=expect, reason=reason, policies=tuple(policies) if policies is not None else None)


def _request(path: Path, where: str, raw: Any, problems: list[str]) -> tuple[bytes, bool]:
    """``{method, name | uri, arguments, listing}`` or ``{method, params}`` → the JSON-RPC body a client sends."""
    if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
        problems.append(f"{path}: {where}.request: required, a mapping with a method")
        return b"", False
    _unknown_keys(raw, REQUEST_KEYS, str(path), f"{where}.request.", problems)
    method = raw["method"]
    listing = raw.get("listing", False)
    if not isinstance(listing, bool):
        problems.append(f"{path}: {where}.request.listing: must be true or false")
    if listing and method not in LIST_OF:
        problems.append(f"{path}: {where}.request.listing: only for {', '.join(LIST_OF)} (is the item listed?)")
    if listing and "arguments" in raw:
        problems.append(f"{path}: {where}.request.arguments: lists are filtered with empty arguments; leave them out")
    if "params" in raw and any(key in raw for key in ("name", "uri", "arguments")):
        problems.append(f"{path}: {where}.request: give params, or name/uri/arguments, not both")
    params = raw.get("params")
    if params is None:
        params = {key: raw[key] for key in ("name", "uri", "arguments") if key in raw}
    elif not isinstance(params, dict):
        problems.append(f"{path}: {where}.request.params: must be a mapping")
        params = {}
    if _nodes(params) > MAX_REQUEST_NODES:  # YAML aliases can nest a small file into a huge request
        problems.append(f"{path}: {where}.request: more than {MAX_REQUEST_NODES} values")
        return b"", False
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if not method.startswith("notifications/"):
        message["id"] = 1
    if params:
        message["params"] = params
    try:
        return json.dumps(message, allow_nan=False).encode(), listing is True
    except (TypeError, ValueError) as exc:
        problems.append(f"{path}: {where}.request: cannot be sent as JSON: {exc}")
        return b"", False


def _nodes(value: Any) -> int:
    """How many values ``value`` holds, counting each use of a YAML alias again; stops past the limit."""
    count, stack = 0, [value]
    while stack and count <= MAX_REQUEST_NODES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


# -- deciding ----------------------------------------------------------------------------------------------------


class PolicyHarness:
    """One policy set, loaded and decided with the gateway's own ``PolicyStore`` and ``Authorizer``."""

    def __init__(self, config: AuthorizationConfig, *, server_name: str = "mcp", issuers: Sequence[IssuerConfig] = ()):
        self.config = config
        self.authorizer = Authorizer(PolicyStore(config), config, server_name=server_name)  # PolicyLoadError
        self.issuers = tuple(issuers)

    def with_policies(self, policies: Path) -> PolicyHarness:
        """The same configuration (schema, entities, group claims) with another policy folder: a candidate set."""
        return PolicyHarness(dataclasses.replace(self.config, policies=policies),
                             server_name=self.authorizer.server_name, issuers=self.issuers)

    def start_file(self, tools: Sequence[Any]) -> None:
        """Each case file starts afresh (a new Authorizer over the same loaded policies: no decision, cache or
        learned tool carries over from another file), knowing the tools its ``tools`` list describes, learned
        as the gateway learns them from the upstream's tools/list answers it relays."""
        old = self.authorizer
        self.authorizer = Authorizer(old.store, self.config, server_name=old.server_name)
        if tools:
            self.authorizer.catalogue.learn(list(tools))

    def principal(self, case: Case) -> Principal:
        namespace = principal_namespace(self.issuers, case.claims) if self.issuers else None
        return principal_from_claims(case.claims, token_type=case.token_type, namespace=namespace)  # type: ignore[arg-type]

    def decide(self, case: Case) -> Outcome:
        try:
            principal = self.principal(case)
        except ValueError as exc:
            return Outcome("refused", "bad_claims", note=str(exc))
        try:
            [message] = parse_body(case.body, "application/json").messages
        except BadRequest as exc:
            return Outcome("refused", exc.reason, note=f"the gateway answers 400 before any policy: {exc.detail}")
        if not message.evaluated:
            return Outcome("allow", "not_evaluated", note=f"{message.method} passes without a decision (Z1)")
        if case.listing:
            return self._listed(principal, message)
        [decision] = self.authorizer.decide_all(principal, [message])
        return Outcome("allow" if decision.allowed else "deny", decision.reason, decision.policies, decision.errors)

    def _listed(self, principal: Principal, message: Message) -> Outcome:
        """Z4: an item is listed when its call, with empty arguments and ``context.listing``, is allowed."""
        list_method = LIST_OF[message.method or ""]
        call, key = LIST_CHECKS[list_method]
        name = message.params.get(key)
        if not isinstance(name, str):
            return Outcome("refused", "no_name", note=f"a listing case needs the item's {key}")
        item = Message(kind="request", method=call, params={key: name})
        decision = self.authorizer.evaluate(self.authorizer.build(principal, item, listing=True))
        listed = self.authorizer.item_check(principal)(list_method, name)
        note = f"{'listed' if listed else 'not listed'} in {list_method}"
        if listed != decision.allowed:  # never expected: the filter decides items in groups (P2)
            note += "; THE LIST FILTER DISAGREES WITH THE DECISION (a gateway bug: please report it)"
        return Outcome("allow" if decision.allowed else "deny", decision.reason, decision.policies, decision.errors, note)


def check(case: Case, outcome: Outcome) -> list[str]:
    problems = []
    if outcome.decision != case.expect:
        problems.append(f"expected {case.expect}, got {outcome.describe()}")
    elif case.reason is not None and outcome.reason != case.reason:
        problems.append(f"expected reason {case.reason}, got {outcome.describe()}")
    if case.policies is not None and set(case.policies) != set(outcome.policies):
        problems.append(f"expected deciding policies [{', '.join(case.policies)}], got [{', '.join(outcome.policies)}]")
    if "DISAGREES" in outcome.note:
        problems.append(outcome.note)
    return problems


def run(files: Sequence[CaseFile], harness: PolicyHarness, candidate: PolicyHarness | None = None,
        candidate_name: str | None = None) -> Report:
    report = Report(candidate=candidate_name)
    for case_file in files:
        for each in (harness, candidate):
            if each is not None:
                each.start_file(case_file.tools)
        for case in case_file.cases:
            started = time.perf_counter()
            outcome = harness.decide(case)
            seconds = time.perf_counter() - started
            report.results.append(CaseResult(case, outcome, check(case, outcome), seconds,
                                             candidate.decide(case) if candidate is not None else None))
    return report


# -- reporting ---------------------------------------------------------------------------------------------------


def format_report(report: Report) -> str:
    lines: list[str] = []
    current: Path | None = None
    for result in report.results:
        if result.case.file != current:
            current = result.case.file
            lines.append(str(current))
        lines.append(f"  {'PASS' if result.passed else 'FAIL'}  {result.case.name}")
        for problem in result.problems:
            lines.append(f"        {problem}")
    failed = len(report.failed)
    lines.append(f"{len(report.results)} cases: {len(report.results) - failed} passed, {failed} failed")
    if report.candidate is not None:
        differing = [r for r in report.results if r.differs]
        lines.append(f"candidate {report.candidate}: {len(differing)} of {len(report.results)} decisions differ")
        for result in differing:
            assert result.candidate is not None
            lines.append(f"  {result.case.file.name}: {result.case.name}")
            lines.append(f"        enforced  {result.outcome.describe()}")
            lines.append(f"        candidate {result.candidate.describe()}")
    return "\n".join(lines)


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """XML 1.0 cannot hold most control characters, even escaped: a case name with one would make the whole
    file unreadable to the CI server."""
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(report: Report) -> bytes:
    """JUnit XML as CI servers read it: one testsuite per case file, one testcase per case."""
    suites = ET.Element("testsuites", name="mcp-auth-gateway policy test", tests=str(len(report.results)),
                        failures=str(len(report.failed)), errors="0")
    by_file: dict[Path, list[CaseResult]] = {}
    for result in report.results:
        by_file.setdefault(result.case.file, []).append(result)
    for path, results in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=_xml(str(path)), tests=str(len(results)),
                              failures=str(sum(not r.passed for r in results)), errors="0", skipped="0",
                              time=f"{sum(r.seconds for r in results):.6f}")
        for result in results:
            case = ET.SubElement(suite, "testcase", classname=_xml(path.stem), name=_xml(result.case.name),
                                 time=f"{result.seconds:.6f}")
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=_xml(result.problems[0]), type="decision")
                failure.text = _xml("\n".join(result.problems))
            out = [f"decision: {result.outcome.describe()}"]
            if result.candidate is not None:
                out.append(f"candidate: {result.candidate.describe()}{' (differs)' if result.differs else ''}")
            ET.SubElement(case, "system-out").text = _xml("\n".join(out))
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


# -- the command -------------------------------------------------------------------------------------------------

EXIT_PASSED, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def command(target: str, *, config: str | None = None, schema: str | None = None, entities: str | None = None,
            candidate: str | None = None, junit: str | None = None) -> int:
    """``mcp-auth-gateway policy test``: 0 every case passed, 1 some failed, 2 input that cannot be read."""
    from gateway.authz.cedar import PolicyLoadError
    from gateway.config import ConfigError, load_config

    path = Path(target)
    try:
        if not path.exists():
            raise CaseFileError([f"{path}: does not exist"])
        if config is not None:
            if schema or entities:
                raise CaseFileError(["--schema and --entities go with a policy folder; with --config the configuration names them"])
            loaded = load_config(config)
            harness = PolicyHarness(loaded.authorization, server_name=loaded.resource.name or "mcp", issuers=loaded.auth.issuers)
        else:
            if not path.is_dir():
                raise CaseFileError([f"{path}: without --config, DIR must be a policy folder"])
            harness = PolicyHarness(_folder_config(path, schema, entities))
        files = case_files(path)
        if not files:
            raise CaseFileError([f"{path}: no case files (*.yaml in {path / 'tests' if (path / 'tests').is_dir() else path})"])
        case_sets, problems = [], []
        for file in files:
            try:
                case_sets.append(load_case_file(file))
            except CaseFileError as error:
                problems.extend(error.problems)
        if problems:
            raise CaseFileError(problems)
        other = harness.with_policies(Path(candidate)) if candidate is not None else None
    except (CaseFileError, ConfigError, PolicyLoadError) as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{len(error.problems)} problem(s): no case was run", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as error:
        print(f"{error.filename or path}: cannot read: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    report = run(case_sets, harness, other, candidate)
    print(format_report(report))
    if junit is not None:
        try:
            Path(junit).write_bytes(junit_xml(report))
        except OSError as error:
            print(f"{junit}: cannot write: {error.strerror}", file=sys.stderr)
            return EXIT_UNREADABLE
    return EXIT_FAILED if report.failed else EXIT_PASSED


def _folder_config(folder: Path, schema: str | None, entities: str | None) -> AuthorizationConfig:
    """A policy folder as the gateway would be pointed at it: its .cedar files, its schema and entities."""
    def given_or_beside(value: str | None, name: str) -> Path | None:
        if value is not None:
            return Path(value)
        return folder / name if (folder / name).is_file() else None

    return AuthorizationConfig(policies=folder, schema=given_or_beside(schema, "mcp.cedarschema"),
                               entities=given_or_beside(entities, "entities.json"))
