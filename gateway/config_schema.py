"""O5: the JSON Schema of ``gateway.yaml``, generated from the loader itself (gateway.config).

The loader is the model: every key is read by one ``take_*`` call of a ``_Section``, which names its kind
(string, URL, path, secret, whole number, duration, list...), its default and its bounds. To write the
schema, the loader runs on empty input with a *recording* section that notes every call instead of
trusting the data. Branches are found by running it again for every value of every choice and boolean
(``upstream.auth.type: static`` reads other keys than ``none``): keys read only on one branch get an
``if``/``then`` that refuses them on the others, as the loader does. A key added to the loader is therefore
in the schema without anything else to edit; ``docs/gateway.schema.json`` is this module's output
(``mcp-auth-gateway config schema``), and a test fails when the two differ.

What the schema cannot say, ``mcp-auth-gateway validate`` still checks: files that must exist, checks
across keys (``cache_min`` not above ``cache_max``, names of several issuers, ``admin_port`` not
``port``), and values inside ``${VAR}`` references, which only the environment at start-up knows.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import config as loader

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "gateway.schema.json"
DIALECT = "http://json-schema.org/draft-07/schema#"  # what yaml-language-server and most editors read

# A ${NAME} reference: its value is only known at start-up, so any string holding one is accepted here.
ENV = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"}
DURATION = {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?(ms|s|m|h))+\s*$"}
WHOLE_NUMBER_TEXT = {"type": "string", "pattern": r"^\s*[+-]?[0-9]+\s*$"}
NUMBER_TEXT = {"type": "string", "pattern": r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"}
BOOLEAN_TEXT = {"type": "string", "pattern": r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\s*$"}
# _url_problem: absolute http(s), a host, no whitespace or #fragment (its finer points are validate's).
URL = {"type": "string", "pattern": r"^https?://[^\s/?#]+([/?][^\s#]*)?$"}
TEXT = {"type": ["string", "number"]}  # _Section._string takes numbers as their text

_ALGS = "|".join(loader.ASYMMETRIC_ALGORITHMS)
# Constraints the loader states in code rather than in a take_* call; each has a row in
# tests/test_config_schema.py's table of refused configurations.
EXTRA: dict[tuple[str, ...], dict[str, Any]] = {
    ("auth", "issuers"): {"minItems": 1},  # "required: at least one issuer"
    ("auth", "issuers[]", "algorithms"): {  # T2: asymmetric algorithms only, never none or HS*
        "anyOf": [{"type": "array", "items": {"enum": list(loader.ASYMMETRIC_ALGORITHMS)}, "minItems": 1},
                  {"type": "string", "pattern": rf"^\s*({_ALGS})(\s+({_ALGS}))*\s*$"}, {"type": "null"}],
    },
}


@dataclass
class _Key:
    kind: str
    options: dict[str, Any]


@dataclass
class _SectionRecord:
    keys: dict[str, _Key] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    children: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> the child section's path


class _Book:
    """What one recording run saw: the sections by path (``("auth", "issuers[]")``) and their keys."""

    def __init__(self) -> None:
        self.sections: dict[tuple[str, ...], _SectionRecord] = {}

    def note(self, path: tuple[str, ...], key: str, kind: str, options: dict[str, Any], required: bool = False) -> None:
        record = self.sections.setdefault(path, _SectionRecord())
        record.keys.setdefault(key, _Key(kind, options))
        if required and key not in record.required:
            record.required.append(key)


_RECORDED = {  # method -> kind; the method's arguments become the key's options
    "take_str": "str", "take_choice": "choice", "take_url": "url", "take_path": "path", "take_secret": "secret",
    "take_int": "int", "take_float": "float", "take_bool": "bool", "take_duration": "duration",
    "take_str_list": "str_list", "take_scope_map": "scope_map", "take_str_map": "str_map",
}


def _recording(name: str, kind: str):
    original = getattr(loader._Section, name)
    signature = inspect.signature(original)

    def method(self: _Recorder, *args: Any, **kwargs: Any) -> Any:
        if self.depth == 0:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            options = {k: v for k, v in bound.arguments.items() if k not in ("self", "key")}
            self.book.note(self.schema_path, bound.arguments["key"], kind, options, bool(options.get("required")))
        self.depth += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            self.depth -= 1

    return method


class _Recorder(loader._Section):
    """A ``_Section`` that notes every key the loader reads. ``has`` says yes to every key, so optional
    sections (``identity_assertion``, ``introspection``) are walked too."""

    book: _Book
    schema_path: tuple[str, ...] = ()
    depth = 0

    def has(self, key: str) -> bool:
        return True

    def _raw(self, key: str) -> Any:
        if self.depth == 0:  # read without a take_* this module knows: noted, and refused by a test
            self.book.note(self.schema_path, key, "unknown", {})
        return super()._raw(key)

    def _child(self, data: Any, key_path: str, schema_path: tuple[str, ...]) -> _Recorder:
        child = _Recorder(data, key_path, self.problems, self.base_dir)
        child.book, child.schema_path = self.book, schema_path
        self.book.sections.setdefault(schema_path, _SectionRecord())
        return child

    def section(self, key: str) -> loader._Section:
        self.book.note(self.schema_path, key, "section", {"required": key in loader.REQUIRED_SECTIONS and not self.schema_path})
        self.used.add(key)
        raw = self.data.get(key)
        self.book.sections[self.schema_path].children[key] = (*self.schema_path, key)
        return self._child(raw, self.key_path(key), (*self.schema_path, key))

    def sections(self, key: str) -> list[loader._Section]:
        self.book.note(self.schema_path, key, "sections", {})
        self.used.add(key)
        raw = self.data.get(key)
        items = raw if isinstance(raw, list) and raw else [{}]
        self.book.sections[self.schema_path].children[key] = (*self.schema_path, f"{key}[]")
        return [self._child(item, f"{self.key_path(key)}[{i}]", (*self.schema_path, f"{key}[]")) for i, item in enumerate(items)]


for _name, _kind in _RECORDED.items():
    setattr(_Recorder, _name, _recording(_name, _kind))


def _record(data: dict[str, Any]) -> _Book:
    book = _Book()

    class Top(_Recorder):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.book = book
            book.sections.setdefault((), _SectionRecord())

    try:
        loader.parse_config(data, source="(schema)", base_dir=Path("/nonexistent"), reader=Top)
    except loader.ConfigError:
        pass  # empty input has problems; the recording is what counts
    top_required = book.sections[()].required
    top_required.extend(name for name in loader.REQUIRED_SECTIONS if name not in top_required)
    return book


def _with_value(path: tuple[str, ...], key: str, value: Any) -> dict[str, Any]:
    """Input with ``value`` at ``path``/``key`` (a list of one item where a segment ends in ``[]``)."""
    data: Any = {key: value}
    for segment in reversed(path):
        data = {segment[:-2]: [data]} if segment.endswith("[]") else {segment: data}
    return data


def _merged(base: Any, extra: Any) -> Any:
    """``extra`` laid over ``base``: mappings key by key, one-item lists item by item."""
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{k: _merged(base[k], v) if k in base else v for k, v in extra.items()}}
    if isinstance(base, list) and isinstance(extra, list) and len(base) == len(extra) == 1:
        return [_merged(base[0], extra[0])]
    return extra


# ---- the schema of one key -------------------------------------------------------------------------------

def _default(kind: str, value: Any) -> Any:
    if value is None or kind in ("secret", "path", "section", "sections"):
        return None
    if kind == "duration":
        return _duration_text(value)
    if isinstance(value, tuple):
        return list(value)
    return value if isinstance(value, (str, int, float, bool, list, dict)) else None


def _duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _string_list() -> dict[str, Any]:
    return {"anyOf": [{"type": "array", "items": TEXT}, {"type": "string"}]}  # "a b c" is a list of three


def _key_schema(key: _Key, *, required: bool) -> dict[str, Any]:
    kind, o = key.kind, key.options
    if kind in ("str", "path"):
        return {**TEXT, "pattern": r"\S"} if required else dict(TEXT)  # a required string must not be blank
    if kind == "url":
        return {"anyOf": [URL, ENV]}
    if kind == "choice":
        return {"anyOf": [{"enum": list(o["choices"])}, ENV]}
    if kind == "int":
        number = {"type": "integer", "minimum": o["minimum"]}
        if o.get("maximum") is not None:
            number["maximum"] = o["maximum"]
        return {"anyOf": [number, WHOLE_NUMBER_TEXT, ENV]}
    if kind == "float":
        return {"anyOf": [{"type": "number", "minimum": o["minimum"]}, NUMBER_TEXT, ENV]}
    if kind == "bool":
        return {"anyOf": [{"type": "boolean"}, BOOLEAN_TEXT, ENV]}
    if kind == "duration":
        return {"anyOf": [DURATION, ENV]}
    if kind == "str_list":
        return _string_list()
    if kind == "scope_map":
        return {"type": "object", "additionalProperties": _string_list()}
    if kind == "str_map":
        return {"type": "object", "additionalProperties": TEXT}
    return {}  # "unknown": tests/test_config_schema.py refuses a schema with such a key


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The loader reads ``key: null`` (or ``key:``) as an absent key."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return schema


# ---- the schema of a section ------------------------------------------------------------------------------

class _Generator:
    def __init__(self) -> None:
        self.base = _record({})
        # Every choice and boolean, with the input that takes each of its values. A choice read only on a
        # branch of another (upstream.auth.auth_method, read for type: client_credentials) is found on that
        # branch's run and explored with the branch's input; each (section, key) is explored once.
        self.branches: dict[tuple[tuple[str, ...], str], dict[Any, _Book]] = {}
        self.parents: dict[tuple[tuple[str, ...], str], tuple[tuple[str, ...], str, Any]] = {}  # nested choice -> its branch
        pending: list[tuple[dict[str, Any], _Book, Any]] = [({}, self.base, None)]
        while pending:
            data, book, origin = pending.pop()
            for path, record in list(book.sections.items()):
                for key, spec in record.keys.items():
                    values = list(spec.options["choices"]) if spec.kind == "choice" else [True, False] if spec.kind == "bool" else []
                    if not values or (path, key) in self.branches:
                        continue
                    books: dict[Any, _Book] = {}
                    for value in values:
                        branch_input = _merged(data, _with_value(path, key, value))
                        books[value] = _record(branch_input)
                        pending.append((branch_input, books[value], (path, key, value)))
                    self.branches[(path, key)] = books
                    if origin is not None:
                        self.parents[(path, key)] = origin

    def all_keys(self, path: tuple[str, ...]) -> dict[str, _Key]:
        keys = dict(self.base.sections.get(path, _SectionRecord()).keys)
        for (_, _), books in self.branches.items():
            for book in books.values():
                for key, spec in book.sections.get(path, _SectionRecord()).keys.items():
                    keys.setdefault(key, spec)
        return keys

    def children(self, path: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        children = dict(self.base.sections.get(path, _SectionRecord()).children)
        for books in self.branches.values():
            for book in books.values():
                children.update(book.sections.get(path, _SectionRecord()).children)
        return children

    def section(self, path: tuple[str, ...]) -> dict[str, Any]:
        keys = self.all_keys(path)
        children = self.children(path)
        base_required = self.always_required(path)
        properties: dict[str, Any] = {}
        for key, spec in keys.items():
            if spec.kind == "secret":
                for name in (key, f"{key}_file"):
                    properties[name] = _nullable(dict(TEXT))
                continue
            if spec.kind == "section":
                properties[key] = self.section(children[key])
                if key not in base_required:
                    properties[key] = _nullable(properties[key])
                continue
            if spec.kind == "sections":
                items = {"type": "array", "items": self.section(children[key]), **EXTRA.get((*path, key), {})}
                properties[key] = items if "minItems" in items else _nullable(items)
                continue
            required = key in base_required
            schema = _key_schema(spec, required=required)
            schema = schema if required else _nullable(schema)
            schema.update(EXTRA.get((*path, key), {}))
            default = None if required else _default(spec.kind, spec.options.get("default"))  # no placeholders
            if default is not None:
                schema["default"] = default
            properties.setdefault(key, schema)
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [k for k in self.base.sections.get(path, _SectionRecord()).required
                    if k in base_required and keys[k].kind != "secret"]  # a secret: its key or its file (secret_rules)
        required += [k for k, spec in keys.items() if spec.kind == "sections" and "minItems" in EXTRA.get((*path, k), {})]
        if required:
            schema["required"] = list(dict.fromkeys(required))
        rules = [rule for key, spec in keys.items() for rule in self.secret_rules(key, spec, key in base_required)]
        rules += [rule for (where, key), books in self.branches.items() if where == path for rule in self.branch_rules(path, key, books)]
        if rules:
            schema["allOf"] = rules
        return schema

    def always_required(self, path: tuple[str, ...]) -> set[str]:
        """Keys required on every branch of every choice in this section; the others are in branch rules."""
        required = set(self.base.sections.get(path, _SectionRecord()).required)
        for (where, _), books in self.branches.items():
            if where == path:
                for book in books.values():
                    required &= set(book.sections.get(path, _SectionRecord()).required)
        return required

    @staticmethod
    def secret_rules(key: str, spec: _Key, required: bool) -> list[dict[str, Any]]:
        if spec.kind != "secret":
            return []
        rules: list[dict[str, Any]] = [{"not": {"required": [key, f"{key}_file"]}}]  # "give key or key_file, not both"
        if required:
            rules.append({"anyOf": [{"required": [key]}, {"required": [f"{key}_file"]}]})
        return rules

    def branch_rules(self, path: tuple[str, ...], key: str, books: dict[Any, _Book]) -> list[dict[str, Any]]:
        """Keys the loader reads only for some values of ``key``: refused (like unknown keys) for the others."""
        seen = {value: book.sections.get(path, _SectionRecord()) for value, book in books.items()}
        union = set().union(*(set(self.expand(r.keys)) for r in seen.values()))
        if all(set(self.expand(r.keys)) == union for r in seen.values()) and len({tuple(r.required) for r in seen.values()}) <= 1:
            return []
        default = self.all_keys(path)[key].options.get("default")
        rules = []
        for value, record in seen.items():
            condition: dict[str, Any] = {"properties": {key: {"enum": [value, None] if value == default else [value]}}}
            if value != default:
                condition["required"] = [key]
            self.add_parent_conditions(condition, path, key)
            then: dict[str, Any] = {}
            absent = sorted(union - set(self.expand(record.keys)))
            if absent:
                then["properties"] = {name: False for name in absent}
            always = self.always_required(path)
            nested = self.required_by_nested_choice(path, key, value, record)
            extra_required = [k for k in record.required if k not in always and k not in nested]
            requirements = [self.requirement(k, record.keys[k]) for k in extra_required]
            if requirements:
                then["allOf"] = requirements
            if then:
                rules.append({"if": condition, "then": then})
        return rules

    def add_parent_conditions(self, condition: dict[str, Any], path: tuple[str, ...], key: str) -> None:
        """A nested choice's rule holds only on its branch: ``auth_method``'s only with ``type: client_credentials``
        (or token_exchange, each explored once; the loader reads the same keys on both)."""
        origin = self.parents.get((path, key))
        while origin is not None and origin[0] == path:
            _, parent, value = origin
            same = [v for v, book in self.branches[(path, parent)].items()
                    if v == value or key in book.sections.get(path, _SectionRecord()).keys]
            default = self.all_keys(path)[parent].options.get("default")
            condition["properties"][parent] = {"enum": same + ([None] if default in same else [])}
            if default not in same:
                condition.setdefault("required", []).append(parent)
            origin = self.parents.get((path, parent))

    def required_by_nested_choice(self, path: tuple[str, ...], key: str, value: Any, record: _SectionRecord) -> set[str]:
        """Keys this branch requires only for some values of a choice read on it (``client_secret`` for
        ``type: client_credentials`` unless ``auth_method: private_key_jwt``): the nested choice's rules say so."""
        nested = [self.branches[child] for child, origin in self.parents.items()
                  if origin[:2] == (path, key) and child[0] == path and child[1] in record.keys]
        return {name for books in nested for book in books.values() for name in record.required
                if name not in book.sections.get(path, _SectionRecord()).required}

    @staticmethod
    def expand(keys: dict[str, _Key]) -> list[str]:
        return [name for key, spec in keys.items() for name in ((key, f"{key}_file") if spec.kind == "secret" else (key,))]

    @staticmethod
    def requirement(key: str, spec: _Key) -> dict[str, Any]:
        if spec.kind == "secret":
            return {"anyOf": [{"required": [key]}, {"required": [f"{key}_file"]}]}
        return {"required": [key]}


def generate_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.yaml, as the loader reads it today."""
    body = _Generator().section(())
    return {
        "$schema": DIALECT,
        "title": "mcp-auth-gateway configuration (gateway.yaml)",
        "description": "Generated from gateway/config.py by `mcp-auth-gateway config schema`; every key is described in "
                       "docs/configuration.md. `mcp-auth-gateway validate` checks what a schema cannot: files, keys "
                       "that depend on each other, and ${VAR} values.",
        **body,
    }


def schema_text() -> str:
    return json.dumps(generate_schema(), indent=2, ensure_ascii=False) + "\n"


def unknown_keys() -> list[str]:
    """Keys read by a means this module does not know (their schema is ``{}``): teach ``_RECORDED`` them."""
    generator = _Generator()
    books = [generator.base, *(book for books in generator.branches.values() for book in books.values())]
    return sorted({".".join((*path, key)) for book in books for path, record in book.sections.items()
                   for key, spec in record.keys.items() if spec.kind == "unknown"})
