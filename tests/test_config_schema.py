"""O5: the JSON Schema of gateway.yaml (docs/gateway.schema.json) is generated from the loader, accepts every
configuration example the project ships, and refuses what ``mcp-auth-gateway validate`` refuses.

The schema is checked with jsonschema (Draft 7, what yaml-language-server reads), the loader with
``parse_config`` / ``mcp-auth-gateway validate``: two independent readers of one file must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway import config as loader
from gateway.config_schema import SCHEMA_FILE, generate_schema, schema_text, unknown_keys
from tests.conftest import deep_merge

REPO = Path(__file__).resolve().parents[1]
DOCS_WITH_EXAMPLES = ["docs/configuration.md", "README.md", "deploy/README.md", "policies/README.md"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}" for error in validator.iter_errors(data)]


@pytest.fixture
def minimal(tmp_path: Path) -> dict[str, Any]:
    """A configuration both readers accept: config.md's minimal file, with a policies folder that exists."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.cedar").write_text("permit (principal, action, resource);\n")
    return {
        "server": {"public_url": "https://mcp.example.com/mcp"},
        "upstream": {"url": "http://127.0.0.1:3000/mcp"},
        "auth": {"issuers": [{"issuer": "https://idp.example.com"}]},
        "authorization": {"policies": str(tmp_path / "policies")},
    }


# ---- generated, shipped, printed -------------------------------------------------------------------------

def test_O5_the_shipped_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/gateway.schema.json is out of date: run `mcp-auth-gateway config schema > docs/gateway.schema.json`")


def test_O5_config_schema_command_prints_the_shipped_schema():
    result = subprocess.run([sys.executable, "-m", "gateway", "config", "schema"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_FILE.read_text()
    assert json.loads(result.stdout)["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_O5_every_key_the_loader_reads_has_a_schema_of_its_kind():
    """A key read by a means the generator does not know would get an empty (accept-anything) schema."""
    assert unknown_keys() == []


def _dataclass_fields(cls: type, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], type]:
    hints = typing.get_type_hints(cls)
    found: dict[tuple[str, ...], type] = {}
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        found[(*path, item.name)] = hint
        for inner in (hint, *typing.get_args(hint)):
            for candidate in (inner, *typing.get_args(inner)):
                # A section of the file is a dataclass of gateway.config; a value type (SigningKey) is one key.
                if dataclasses.is_dataclass(candidate) and candidate.__module__ == loader.__name__:
                    found.update(_dataclass_fields(candidate, (*path, item.name)))
    return found


def _schema_keys(schema: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        keys.add((*path, key))
        items = sub.get("items", {}) if isinstance(sub, dict) else {}
        for nested in (sub, items):
            if isinstance(nested, dict) and "properties" in nested:
                keys |= _schema_keys(nested, (*path, key))
    return keys


def test_O5_the_schema_has_a_key_for_every_field_of_the_configuration_model_and_no_other():
    """The typed model (gateway/config.py's dataclasses) and the schema name the same keys: a field added
    without a loader key, or a loader key without a field, fails here. A secret field is its key and its
    ``*_file`` twin."""
    fields = {path for path in _dataclass_fields(loader.Config) if path[-1] not in ("source", "warnings")}
    keys = _schema_keys(generate_schema())
    twins = {(*path[:-1], path[-1][: -len("_file")]) for path in keys if path[-1].endswith("_file")}
    assert fields - keys == set(), f"fields of the model that no key sets: {sorted(fields - keys)}"
    assert keys - fields - {(*p[:-1], p[-1] + "_file") for p in twins & fields} == set()


# ---- accepts every example --------------------------------------------------------------------------------

def yaml_examples() -> list[tuple[str, Any]]:
    examples = []
    for name in DOCS_WITH_EXAMPLES:
        text = (REPO / name).read_text()
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            line = text[: match.start()].count("\n") + 1
            data = yaml.safe_load(match.group(1))
            if match.group(1).startswith("# .gitlab-ci.yml"):  # a CI file, not gateway.yaml
                continue
            # Not a Kubernetes object, nor a `policy test` case file (A4: cases, defaults, tools)
            if isinstance(data, dict) and not {"apiVersion", "kind", "cases"} & set(data):
                examples.append((f"{name}:{line}", data))
    return examples


def shipped_files() -> list[Path]:
    return sorted((REPO / "deploy").rglob("gateway.yaml"))


@pytest.mark.parametrize("where, example", yaml_examples(), ids=[where for where, _ in yaml_examples()])
def test_O5_the_schema_accepts_every_example_in_the_docs(where, example, validator, minimal):
    """A snippet shows some sections; it is checked inside a file that has the rest."""
    assert schema_errors(validator, deep_merge(minimal, example)) == [], where


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_O5_the_schema_accepts_every_configuration_in_deploy(path, validator):
    text = path.read_text()
    reference = re.search(r"^# yaml-language-server: \$schema=(\S+)$", text, re.M)
    assert reference, f"{path.name} names the schema for editors"
    assert (path.parent / reference.group(1)).resolve() == SCHEMA_FILE
    assert schema_errors(validator, yaml.safe_load(text)) == []


def test_O5_the_schema_accepts_the_demo_configuration(validator, monkeypatch, tmp_path):
    from gateway.demo import run as demo

    seen: list[dict] = []
    monkeypatch.setattr(demo, "parse_config", lambda data, **kwargs: seen.append(data) or loader.parse_config(data, **kwargs))
    demo.demo_config(gateway_port=8080, upstream_port=3000, issuer_url="http://127.0.0.1:9000", audit_file=tmp_path / "audit")
    assert len(seen) == 1 and schema_errors(validator, seen[0]) == []


def test_O5_the_schema_accepts_what_the_loader_accepts_in_its_other_spellings(validator, minimal):
    """Numbers and booleans as strings, ${VAR} anywhere, null for absent, a scope list as one string."""
    data = deep_merge(minimal, {
        "server": {"port": "8080", "max_connections": "${MAX_CONNECTIONS}", "shutdown_grace": None, "allowed_origins": None},
        "auth": {"required_scopes": "mcp mcp.read", "jwks": {"cache_min": "1h30m", "cache_max": "2h"},
                 "issuers": [{"issuer": "${ISSUER_URL}", "algorithms": "ES256 RS256"}]},
        "authorization": {"reload": "false"},
        "limits": {"per_principal": {"rate": "2.5", "burst": 5}},
        "upstream": {"auth": {"type": "static", "value_file": "/var/run/secrets/token"}},
    })
    assert schema_errors(validator, data) == []
    checked = json.loads(json.dumps(data).replace("${MAX_CONNECTIONS}", "100").replace("${ISSUER_URL}", "https://idp.example.com"))
    checked["upstream"]["auth"] = {"type": "static", "value": "Bearer x"}  # no file to read here
    loader.parse_config(checked, source="gateway.yaml")  # the loader agrees


# ---- refuses what validate refuses --------------------------------------------------------------------------

def _set(data: dict, dotted: str, value: Any) -> dict:
    data = copy.deepcopy(data)
    *parents, last = re.split(r"\.(?![^\[]*\])", dotted)
    node: Any = data
    for part in parents:
        name, _, index = part.partition("[")
        node = node.setdefault(name, {}) if not index else node[name][int(index[:-1])]
    node[last] = value
    return data


MISSING = object()

# (what, key path, value): each makes the minimal configuration one that both readers refuse.
REFUSED = [
    ("unknown top-level key", "tracing_typo", {}),
    ("unknown key in a section", "server.prot", 8080),
    ("unknown key in a list item", "auth.issuers[0].audience", "x"),
    ("required key missing", "server.public_url", MISSING),
    ("required section missing", "upstream", MISSING),
    ("no issuer", "auth.issuers", []),
    ("port is not a number", "server.port", "eighty"),
    ("port out of range", "server.port", 70000),
    ("admin port out of range", "server.admin_port", -1),
    ("boolean is not true or false", "authorization.reload", "yes"),
    ("duration without unit", "server.shutdown_grace", "30"),
    ("duration as a number", "auth.issuers[0].leeway", 60),
    ("choice not offered", "logging.format", "xml"),
    ("token_type not offered", "auth.issuers[0].token_type", "jwt"),
    ("not an http URL", "upstream.url", "ftp://mcp.example.com/mcp"),
    ("URL with a fragment", "server.public_url", "https://mcp.example.com/mcp#x"),
    ("symmetric algorithm", "auth.issuers[0].algorithms", ["HS256"]),
    ("no algorithm", "auth.issuers[0].algorithms", []),
    ("section is not a mapping", "server", "8080"),
    ("list is a mapping", "auth.required_scopes", {"mcp": True}),
    ("secret and its file", "auth.introspection", {"client_id": "g", "client_secret": "s", "client_secret_file": "/x"}),
    ("required secret missing", "auth.introspection", {"client_id": "g"}),
    ("key of another upstream auth type", "upstream.auth", {"type": "none", "token_endpoint": "https://idp.example.com/token"}),
    ("client_credentials without its keys", "upstream.auth", {"type": "client_credentials"}),
    ("static with a client id", "upstream.auth", {"type": "static", "value": "Bearer x", "client_id": "g"}),
    ("negative rate", "limits.per_principal.rate", -1),
    ("concurrency below 1", "limits.per_principal.concurrent", 0),
    ("blank required string", "auth.introspection", {"client_id": "  ", "client_secret": "s"}),
]


@pytest.mark.parametrize("what, dotted, value", REFUSED, ids=[what for what, _, _ in REFUSED])
def test_O5_the_schema_refuses_what_validate_refuses(what, dotted, value, validator, minimal, tmp_path):
    assert schema_errors(validator, minimal) == []
    loader.parse_config(minimal, source="gateway.yaml")  # the starting point is good for both
    if value is MISSING:
        bad = copy.deepcopy(minimal)
        *parents, last = dotted.split(".")
        node = bad
        for part in parents:
            node = node[part]
        del node[last]
    else:
        bad = _set(minimal, dotted, value)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1, f"validate accepted {what}: {result.stdout}"
    assert schema_errors(validator, bad), f"the schema accepted {what}, which validate refuses:\n{result.stderr}"
