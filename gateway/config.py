"""The gateway's configuration: one typed, frozen object built once at start.

The key names are a contract (shared/design/config.md). Loading checks everything and collects *every*
problem before failing, each named by file and key path (``gateway.yaml: auth.issuers[0].issuer:
required``), so ``mcp-auth-gateway validate`` can list them all at once. Unknown keys are errors: a typo
must never silently switch a protection off.

String values may contain ``${NAME}`` (an environment variable; unset is an error). Every secret has a
``*_file`` twin for Kubernetes Secret mounts. Durations are strings such as ``500ms``, ``30s``, ``5m``,
``1h`` or ``1h30m``. Relative file paths are taken relative to the configuration file's folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway.auth.client_auth import CLIENT_AUTH_METHODS, ClientAuthMethod
from gateway.auth.keys import SigningKey
from gateway.observe.tracing import tracing_problem

__all__ = [
    "AuditConfig",
    "AuthConfig",
    "AuthorizationConfig",
    "Config",
    "ConfigError",
    "DpopConfig",
    "IdentityAssertionConfig",
    "IntrospectionConfig",
    "IssuerConfig",
    "JwksConfig",
    "LoggingConfig",
    "MtlsConfig",
    "ResourceConfig",
    "Secret",
    "ServerConfig",
    "StepUpRule",
    "StateConfig",
    "TracingConfig",
    "UpstreamAuthConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]

ENV_VAR = "MCP_AUTH_GATEWAY_CONFIG"

# T2: asymmetric algorithms only. `none` and HS* can never be used with keys from a JWKS.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists every one, each naming file and key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A secret string whose ``repr`` and ``str`` never show the value (Starlette's ``Secret``)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---------------------------------------------------------------------------------------------------
# The typed configuration
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    public_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    shutdown_grace: float = 20.0
    header_timeout: float = 10.0  # R1: request line and headers must arrive within this
    body_timeout: float = 30.0  # R1: a POST body must arrive within this once its headers have
    keepalive_timeout: float = 75.0  # R1: idle client connections close after this
    max_connections: int = 4096  # R1: open client connections; more are closed at once
    max_batch: int = 50  # R4: messages in one JSON-RPC batch
    workers: int = 1  # P4: processes sharing the port (SO_REUSEPORT)
    session_key_file: Path | None = None  # P4: the key that binds session ids; replicas need the same one
    admin_port: int = 9090  # O1: /healthz, /readyz, /metrics on their own listener; 0 = on the main port

    @property
    def mcp_path(self) -> str:
        """The MCP endpoint's path: the path of ``public_url`` (``/`` when it has none)."""
        return urlsplit(self.public_url).path or "/"


UpstreamAuthType = Literal["none", "static", "client_credentials", "token_exchange"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamAuthConfig:
    type: UpstreamAuthType = "none"
    header: str = "Authorization"
    value: Secret | None = None
    value_file: Path | None = None
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None
    auth_method: ClientAuthMethod = "client_secret_basic"  # O6: how the gateway authenticates to token_endpoint
    private_key: SigningKey | None = None  # O6: private_key_jwt (RFC 7523)
    assertion_audience: str | None = None  # O6: the client assertion's aud; default the endpoint's URL


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityAssertionConfig:
    key_file: Path
    header: str = "X-MCP-Identity"
    ttl: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    url: str
    connect_timeout: float = 5.0
    response_timeout: float = 300.0
    auth: UpstreamAuthConfig = field(default_factory=UpstreamAuthConfig)
    identity_headers: Mapping[str, str] = field(default_factory=dict)
    identity_assertion: IdentityAssertionConfig | None = None
    strip_headers: tuple[str, ...] = ()  # I5: more client headers never forwarded
    max_list_bytes: int = 8 * 1024 * 1024  # R2: a larger list answer fails closed (502)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceConfig:
    name: str | None = None
    documentation: str | None = None
    scopes_supported: tuple[str, ...] = ()
    authorization_servers: tuple[str, ...] = ()


TokenTypePolicy = Literal["at+jwt", "any"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    issuer: str
    name: str | None = None  # I7: qualifies principal ids when several issuers are configured
    jwks_uri: str | None = None
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    token_type: TokenTypePolicy = "at+jwt"
    leeway: float = 60.0


IntrospectionAuthMethod = ClientAuthMethod


@dataclass(frozen=True, slots=True, kw_only=True)
class IntrospectionConfig:
    client_id: str
    client_secret: Secret | None = None  # every auth_method but private_key_jwt
    endpoint: str | None = None
    auth_method: IntrospectionAuthMethod = "client_secret_basic"
    private_key: SigningKey | None = None  # O6: private_key_jwt (RFC 7523)
    assertion_audience: str | None = None  # O6: the client assertion's aud; default the endpoint's URL
    cache_ttl: float = 60.0
    max_concurrent: int = 16  # R6: introspection calls in flight; more get 503 with Retry-After


@dataclass(frozen=True, slots=True, kw_only=True)
class JwksConfig:
    cache_min: float = 60.0
    cache_max: float = 3600.0
    refresh_cooldown: float = 30.0
    fetch_timeout: float = 5.0
    max_bytes: int = 256 * 1024


# S1: the DPoP proof algorithms the gateway accepts by default (config.md); RFC 9449 §4.2: asymmetric only.
DPOP_DEFAULT_ALGORITHMS = ("ES256", "RS256")


@dataclass(frozen=True, slots=True, kw_only=True)
class DpopConfig:
    required: bool = False  # S1: true refuses every token that is not DPoP-bound (and the Bearer scheme)
    algorithms: tuple[str, ...] = DPOP_DEFAULT_ALGORITHMS
    max_age: float = 60.0  # S1: a proof's iat may be this old
    nonce: bool = False  # S1, RFC 9449 §9: proofs must carry a DPoP-Nonce this gateway issued
    jti_cache_size: int = 100_000  # R2, S1: proofs inside their window held in memory (without state.redis_url)


@dataclass(frozen=True, slots=True, kw_only=True)
class MtlsConfig:
    trusted_proxies: tuple[str, ...] = ()  # S3: peers (addresses, CIDRs) whose X-Forwarded-Client-Cert is believed


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    redis_url: Secret | None = None  # S2: the DPoP replay window shared by replicas
    timeout: float = 0.5  # S2: one Redis call; slower is 503, never an acceptance
    key_prefix: str = "mcp-auth-gateway:dpop:"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepUpRule:
    """A6 (RFC 9470): calls of these tools, or messages with these methods, need a user authentication
    with one of ``acr_values`` (the token's ``acr``) and/or no older than ``max_age`` seconds (``auth_time``)."""

    tools: tuple[str, ...] = ()  # tool names or globs (tools/call only)
    methods: tuple[str, ...] = ()  # MCP method names or globs
    acr_values: tuple[str, ...] = ()  # in order of preference, as the challenge lists them
    max_age: int | None = None  # whole seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    issuers: tuple[IssuerConfig, ...]
    introspection: IntrospectionConfig | None = None
    jwks: JwksConfig = field(default_factory=JwksConfig)
    dpop: DpopConfig = field(default_factory=DpopConfig)
    mtls: MtlsConfig = field(default_factory=MtlsConfig)
    required_scopes: tuple[str, ...] = ()
    method_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tool_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    step_up: tuple[StepUpRule, ...] = ()  # A6


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationConfig:
    policies: Path
    schema: Path | None = None
    entities: Path | None = None
    group_claims: tuple[str, ...] = ("groups", "roles")
    reload: bool = True
    candidate_policies: Path | None = None  # A5: evaluated beside the enforced set, never enforced
    tool_changes: Literal["warn", "deny"] = "warn"  # A2: what a changed tool definition does to its calls
    tool_pins: Path | None = None  # A2: accepted tool definition digests (mcp-auth-gateway pins accept)


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "json"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    enabled: bool = True
    file: Path | None = None


# Pooled connections to the upstream (gateway.upstream.proxy); a principal's share must stay below it.
UPSTREAM_POOL_SIZE = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalLimitsConfig:
    concurrent: int = 64  # R3: requests and streams in flight per principal
    rate: float = 0.0  # R3: requests per second per principal (token bucket); 0 = off
    burst: int = 0  # R3: bucket size; 0 = max(1, rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    per_principal: PrincipalLimitsConfig = field(default_factory=PrincipalLimitsConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    enabled: bool = False  # O2: OpenTelemetry spans over OTLP/HTTP (gateway.observe.tracing)
    endpoint: str = "http://localhost:4318/v1/traces"  # the OTLP/HTTP traces URL (the OTLP default)
    service_name: str = "mcp-auth-gateway"
    sample_ratio: float = 1.0  # for traces that start here; a caller's sampled flag is followed


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig
    upstream: UpstreamConfig
    auth: AuthConfig
    authorization: AuthorizationConfig
    resource: ResourceConfig = field(default_factory=ResourceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    source: str = "<config>"
    warnings: tuple[str, ...] = ()

    @property
    def authorization_servers(self) -> tuple[str, ...]:
        """What PRM advertises: ``resource.authorization_servers``, else every configured issuer."""
        return self.resource.authorization_servers or tuple(i.issuer for i in self.auth.issuers)


# ---------------------------------------------------------------------------------------------------
# Scalars
# ---------------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


MAX_DURATION = 366 * 24 * 3600.0


def parse_duration(text: str) -> float:
    """``"1h30m"`` → ``5400.0`` seconds. Raises ``ValueError`` for anything else."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 5m or 1h")
    if not total <= MAX_DURATION:
        raise ValueError(f"{text[:40]!r} is longer than a year")  # 10^400 s would read as infinity: no limit
    return total


def _is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or bool(host and host.startswith("127."))


# ---------------------------------------------------------------------------------------------------
# The reader: walks the YAML tree, converts values, remembers every problem with its key path
# ---------------------------------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.source}: {path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")


_MISSING = object()


class _Section:
    """One mapping of the YAML file. Every ``take_*`` marks its key as known; ``close`` reports the rest."""

    def __init__(self, data: Any, path: str, problems: _Problems, base_dir: Path):
        self.path = path
        self.problems = problems
        self.base_dir = base_dir
        self.used: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.error(path or "(top level)", "must be a mapping of keys to values")
            data = {}
        for key in [key for key in data if not isinstance(key, str)]:
            # YAML allows 1:, true: or [a, b]: as keys; no key of ours is one (and str() of a 5,000-digit
            # integer raises).
            problems.error(path or "(top level)", f"keys must be strings, not {type(key).__name__}")
            data = {k: v for k, v in data.items() if isinstance(k, str)}
        self.data: dict[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key, _MISSING)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def close(self) -> None:
        for key in self.data:
            if key not in self.used:
                hint = _close_match(str(key), self.used)
                suffix = f" (did you mean {hint!r}?)" if hint else ""
                self.problems.error(self.key_path(str(key)), f"unknown key{suffix}")

    # -- strings and friends -------------------------------------------------------------------

    def _interpolate(self, value: str, path: str) -> str | None:
        missing = [name for name in _ENV_REF.findall(value) if name not in os.environ]
        if missing:
            for name in missing:
                self.problems.error(path, f"environment variable {name} is not set")
            return None
        return _ENV_REF.sub(lambda m: os.environ[m.group(1)], value)

    def _string(self, value: Any, path: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problems.error(path, "must be a string")
            return None
        try:
            text = str(value)
        except ValueError:  # an integer of thousands of digits
            self.problems.error(path, "must be a string")
            return None
        return self._interpolate(text, path)

    def take_str(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            if required:
                self.problems.error(self.key_path(key), "required")
            return default
        value = self._string(raw, self.key_path(key))
        if value is not None and required and not value.strip():
            self.problems.error(self.key_path(key), "must not be empty")
            return default
        return default if value is None else value

    def take_choice(self, key: str, choices: tuple[str, ...], default: str) -> Any:
        value = self.take_str(key, default)
        if value not in choices:
            self.problems.error(self.key_path(key), f"must be one of {', '.join(choices)}, not {value!r}")
            return default
        return value

    def take_url(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.take_str(key, None, required=required)
        if value is None:
            return default
        problem = _url_problem(value)
        if problem:
            self.problems.error(self.key_path(key), problem)
            return default
        return value

    def take_path(self, key: str, *, required: bool = False) -> Path | None:
        value = self.take_str(key, None, required=required)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path

    def take_secret(self, key: str, *, required: bool = False, read_file: bool = True) -> Secret | None:
        """``key`` or its ``key_file`` twin, never both. The file is read now (trailing newline dropped)."""
        file_key = f"{key}_file"
        inline = self.take_str(key)
        file_path = self.take_path(file_key)
        if inline is not None and file_path is not None:
            self.problems.error(self.key_path(key), f"give {key} or {file_key}, not both")
            return None
        if file_path is not None:
            if not read_file:
                return None
            try:
                return Secret(file_path.read_text(encoding="utf-8").rstrip("\r\n"))
            except OSError as exc:
                self.problems.error(self.key_path(file_key), f"cannot read {file_path}: {exc.strerror}")
                return None
            except ValueError:  # not UTF-8 (UnicodeDecodeError), or a NUL in the path
                self.problems.error(self.key_path(file_key), f"cannot read {file_path}: not a UTF-8 text file")
                return None
        if inline is not None:
            return Secret(inline)
        if required:
            self.problems.error(self.key_path(key), f"required (or {file_key})")
        return None

    # -- numbers, booleans, durations ----------------------------------------------------------

    def take_int(self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return default
        if isinstance(raw, str):
            raw = self._interpolate(raw, self.key_path(key))
            if raw is None:
                return default
            try:
                raw = int(raw.strip())
            except ValueError:
                pass
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.problems.error(self.key_path(key), "must be a whole number")
            return default
        if raw < minimum or (maximum is not None and raw > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            self.problems.error(self.key_path(key), f"must be at least {minimum}{upper}")
            return default
        return raw

    def take_float(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            self.problems.error(self.key_path(key), "must be a number")
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.error(self.key_path(key), f"must be a number, not {raw!r}")
            return default
        if not value >= minimum or value == float("inf"):
            self.problems.error(self.key_path(key), f"must be a finite number of at least {minimum:g}")
            return default
        return value

    def take_bool(self, key: str, default: bool) -> bool:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return default
        if isinstance(raw, str):
            text = self._interpolate(raw, self.key_path(key))
            if text is not None and text.strip().lower() in ("true", "false"):
                return text.strip().lower() == "true"
        if not isinstance(raw, bool):
            self.problems.error(self.key_path(key), "must be true or false")
            return default
        return raw

    def take_duration(self, key: str, default: float) -> float:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return default
        if not isinstance(raw, str):
            self.problems.error(self.key_path(key), "must be a duration string such as 30s, 5m or 1h")
            return default
        text = self._interpolate(raw, self.key_path(key))
        if text is None:
            return default
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.problems.error(self.key_path(key), str(exc))
            return default

    # -- collections ---------------------------------------------------------------------------

    def take_str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return default
        return self._str_list(raw, self.key_path(key))

    def _str_list(self, raw: Any, path: str) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = raw.split()  # "a b c" is accepted for scope lists
        if not isinstance(raw, list):
            self.problems.error(path, "must be a list of strings")
            return ()
        values = []
        for index, item in enumerate(raw):
            value = self._string(item, f"{path}[{index}]")
            if value is not None:
                values.append(value)
        return tuple(values)

    def take_scope_map(self, key: str) -> dict[str, tuple[str, ...]]:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problems.error(self.key_path(key), "must map names to lists of scopes")
            return {}
        return {name: self._str_list(scopes, f"{self.key_path(key)}.{name}") for name, scopes in raw.items()
                if self._is_name(name, key)}

    def take_str_map(self, key: str) -> dict[str, str]:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problems.error(self.key_path(key), "must map names to strings")
            return {}
        result = {}
        for name, value in raw.items():
            if not self._is_name(name, key):
                continue
            text = self._string(value, f"{self.key_path(key)}.{name}")
            if text is not None:
                result[name] = text
        return result

    def _is_name(self, name: Any, key: str) -> bool:
        if isinstance(name, str):
            return True
        self.problems.error(self.key_path(key), f"names must be strings, not {type(name).__name__}")
        return False

    def section(self, key: str) -> _Section:
        return _Section(self._raw(key) if self.has(key) else None, self.key_path(key), self.problems, self.base_dir)

    def sections(self, key: str) -> list[_Section]:
        raw = self._raw(key)
        if raw is _MISSING or raw is None:
            return []
        if not isinstance(raw, list):
            self.problems.error(self.key_path(key), "must be a list")
            return []
        return [_Section(item, f"{self.key_path(key)}[{i}]", self.problems, self.base_dir) for i, item in enumerate(raw)]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL in it
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _shown_url(value: str) -> str:
    """A URL for a message: userinfo (``user:password@``) is never shown, whatever else is wrong with it."""
    return repr(re.sub(r"(?<=//)[^/?#]*@", "***@", value, count=1))


def _url_problem(value: str) -> str | None:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        # urlsplit would quietly drop a tab or a leading space; a URL means one thing or is refused (I6).
        return f"must not contain whitespace or control characters: {_shown_url(value)}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return f"is not a URL: {_shown_url(value)}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an absolute http(s) URL, not {_shown_url(value)}"
    if parts.fragment:
        return "must not have a #fragment"
    port_text = parts.netloc.rpartition("]")[2].rpartition(":")[2] if ":" in parts.netloc.rpartition("]")[2] else None
    if port_text is not None and (port is None or port_text.startswith("0")):
        return f"has an empty port or one with leading zeros: {_shown_url(value)}"
    return None


def _close_match(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


def _closed(section: _Section, build: Callable[[_Section], T]) -> T:
    value = build(section)
    section.close()
    return value


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


def _server(s: _Section) -> ServerConfig:
    public_url = s.take_url("public_url", "http://invalid.invalid/mcp", required=True)
    if urlsplit(public_url).query:
        s.problems.error(s.key_path("public_url"), "must not have a ?query")
    origins = s.take_str_list("allowed_origins")
    for index, origin in enumerate(origins):
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:  # "http://[" and friends
            parts, hostname = None, None
        if origin != "*" and (parts is None or parts.scheme not in ("http", "https") or not hostname or parts.path not in ("", "/")):
            s.problems.error(f"{s.key_path('allowed_origins')}[{index}]", f"must be an origin like https://app.example.com, not {origin!r}")
    return ServerConfig(
        public_url=public_url,
        host=s.take_str("host", "0.0.0.0"),
        port=s.take_int("port", 8080, minimum=0, maximum=65535),
        allowed_origins=tuple(o.rstrip("/") for o in origins),
        max_body_bytes=s.take_int("max_body_bytes", 4 * 1024 * 1024, minimum=1),
        shutdown_grace=s.take_duration("shutdown_grace", 20.0),
        header_timeout=_positive(s, "header_timeout", 10.0),
        body_timeout=_positive(s, "body_timeout", 30.0),
        keepalive_timeout=_positive(s, "keepalive_timeout", 75.0),
        max_connections=s.take_int("max_connections", 4096, minimum=1),
        max_batch=s.take_int("max_batch", 50, minimum=1),
        workers=s.take_int("workers", 1, minimum=1, maximum=64),
        session_key_file=_session_key_file(s),
        admin_port=_admin_port(s),
    )


def _admin_port(s: _Section) -> int:
    admin_port = s.take_int("admin_port", 9090, minimum=0, maximum=65535)
    port = s.data.get("port", 8080)  # as written; a ${VAR} port is checked when the listeners bind
    if admin_port and admin_port == port:
        s.problems.error(s.key_path("admin_port"), f"{admin_port} is server.port; give the admin listener its own port (or 0)")
    return admin_port


def _session_key_file(s: _Section) -> Path | None:
    path = s.take_path("session_key_file")
    if path is None:
        return None
    try:
        size = len(path.read_bytes().strip())
    except (OSError, ValueError) as exc:
        s.problems.error(s.key_path("session_key_file"), f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    if size < 32:
        s.problems.error(s.key_path("session_key_file"), f"{path} holds {size} bytes; a session key needs at least 32")
    return path


def _positive(s: _Section, key: str, default: float) -> float:
    value = s.take_duration(key, default)
    if value <= 0:
        s.problems.error(s.key_path(key), "must be longer than 0s (a limit that never fires is no limit)")
    return value


_UPSTREAM_AUTH_KEYS = {
    "none": set(),
    "static": {"header", "value"},
    "client_credentials": {"token_endpoint", "client_id", "client_secret", "scope", "audience", "resource",
                           "auth_method", "private_key", "assertion_audience"},
    "token_exchange": {"token_endpoint", "client_id", "client_secret", "scope", "audience", "resource",
                       "auth_method", "private_key", "assertion_audience"},
}
_CLIENT_AUTH_KEYS = ("client_secret", "private_key", "assertion_audience")


def _upstream_auth(s: _Section) -> UpstreamAuthConfig:
    kind = s.take_choice("type", tuple(_UPSTREAM_AUTH_KEYS), "none")
    allowed = _UPSTREAM_AUTH_KEYS[kind]
    for key in ("header", "value", "token_endpoint", "client_id", "client_secret", "scope", "audience", "resource",
                "auth_method", "private_key", "assertion_audience"):
        for present in (key, f"{key}_file"):
            if s.has(present) and key not in allowed:
                s.problems.error(s.key_path(present), f"not used with type {kind}")
                s.used.add(present)
    if kind == "static":
        # value_file is re-read when it changes (rotated Kubernetes secrets), so keep its path.
        value = s.take_secret("value", read_file=False)
        value_file = s.take_path("value_file")
        if value is None and value_file is None:
            s.problems.error(s.key_path("value"), "required (or value_file) for type static")
        elif value_file is not None and not _is_file(value_file):
            s.problems.error(s.key_path("value_file"), f"cannot read {value_file}")
        return UpstreamAuthConfig(type=kind, header=s.take_str("header", "Authorization"), value=value, value_file=value_file)
    if kind in ("client_credentials", "token_exchange"):
        method, secret, key, audience = _client_auth(s)
        return UpstreamAuthConfig(
            type=kind,
            token_endpoint=s.take_url("token_endpoint", required=True),
            client_id=s.take_str("client_id", required=True),
            client_secret=secret,
            auth_method=method,
            private_key=key,
            assertion_audience=audience,
            scope=s.take_str("scope"),
            audience=s.take_str("audience"),
            resource=s.take_str("resource"),
        )
    return UpstreamAuthConfig(type="none")


def _client_auth(s: _Section) -> tuple[ClientAuthMethod, Secret | None, SigningKey | None, str | None]:
    """O6: ``auth_method`` and the credential it needs: a client secret, or (private_key_jwt) a private key."""
    method = s.take_choice("auth_method", CLIENT_AUTH_METHODS, "client_secret_basic")
    needed = {"private_key", "assertion_audience"} if method == "private_key_jwt" else {"client_secret"}
    for key in _CLIENT_AUTH_KEYS:
        for present in (key, f"{key}_file"):
            if s.has(present) and key not in needed:
                s.problems.error(s.key_path(present), f"not used with auth_method {method}")
                s.used.add(present)
    if method != "private_key_jwt":
        return method, s.take_secret("client_secret", required=True), None, None
    pem = s.take_secret("private_key", required=True)
    key = None
    if pem is not None:
        try:
            key = SigningKey.from_pem(pem.reveal().encode())
        except ValueError as exc:
            where = "private_key_file" if s.has("private_key_file") else "private_key"
            s.problems.error(s.key_path(where), f"{exc} (RSA, EC P-256/384/521 or Ed25519, PEM)")
    return method, None, key, s.take_str("assertion_audience")


def _identity_assertion(s: _Section) -> IdentityAssertionConfig:
    key_file = s.take_path("key_file", required=True)
    if key_file is not None and not _is_file(key_file):
        s.problems.error(s.key_path("key_file"), f"cannot read {key_file}")
    elif key_file is not None:
        try:  # checked now, so validate says what serve would fail on (O6: it is also published)
            SigningKey.from_pem(key_file.read_bytes())
        except (OSError, ValueError) as exc:
            s.problems.error(s.key_path("key_file"), f"{key_file}: {exc}")
    return IdentityAssertionConfig(
        key_file=key_file or Path("/nonexistent"),
        header=s.take_str("header", "X-MCP-Identity"),
        ttl=s.take_duration("ttl", 60.0),
    )


def _upstream(s: _Section) -> UpstreamConfig:
    identity_headers = s.take_str_map("identity_headers")
    return UpstreamConfig(
        url=s.take_url("url", "http://invalid.invalid/mcp", required=True),
        connect_timeout=s.take_duration("connect_timeout", 5.0),
        response_timeout=s.take_duration("response_timeout", 300.0),
        auth=_closed(s.section("auth"), _upstream_auth),
        identity_headers=identity_headers,
        identity_assertion=_closed(s.section("identity_assertion"), _identity_assertion) if s.has("identity_assertion") else None,
        strip_headers=_header_names(s, "strip_headers"),
        max_list_bytes=s.take_int("max_list_bytes", 8 * 1024 * 1024, minimum=1024),
    )


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.1 token


def _header_names(s: _Section, key: str) -> tuple[str, ...]:
    names = s.take_str_list(key)
    for index, name in enumerate(names):
        if not _HEADER_NAME.fullmatch(name):
            s.problems.error(f"{s.key_path(key)}[{index}]", f"{name!r} is not a header name")
    return names


def _resource(s: _Section) -> ResourceConfig:
    scopes = s.take_str_list("scopes_supported")
    if "offline_access" in scopes:
        # D3: offline_access is an authorization server scope, not a resource's.
        s.problems.error(s.key_path("scopes_supported"), "must not contain offline_access")
    servers = s.take_str_list("authorization_servers")
    for index, server in enumerate(servers):
        problem = _url_problem(server)
        if problem:
            s.problems.error(f"{s.key_path('authorization_servers')}[{index}]", problem)
    return ResourceConfig(
        name=s.take_str("name"),
        documentation=s.take_url("documentation"),
        scopes_supported=scopes,
        authorization_servers=servers,
    )


_ISSUER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _issuer(s: _Section) -> IssuerConfig:
    issuer = s.take_url("issuer", "http://invalid.invalid", required=True)
    if s.has("issuer") and urlsplit(issuer).scheme == "http" and not _is_loopback(urlsplit(issuer).hostname):
        s.problems.warn(s.key_path("issuer"), "plain http: keys and metadata can be tampered with in transit")
    algorithms = s.take_str_list("algorithms", ASYMMETRIC_ALGORITHMS)
    for index, alg in enumerate(algorithms):
        if alg not in ASYMMETRIC_ALGORITHMS:
            s.problems.error(
                f"{s.key_path('algorithms')}[{index}]",
                f"{alg!r} is not allowed; use asymmetric algorithms only: {', '.join(ASYMMETRIC_ALGORITHMS)}",
            )
    if not algorithms:
        s.problems.error(s.key_path("algorithms"), "must not be empty")
    audiences = s.take_str_list("audiences")
    for index, audience in enumerate(audiences):
        if not audience or any(ch.isspace() or not ch.isprintable() for ch in audience):
            # Such an audience never matches a token's aud (I6); say so now rather than refuse every token.
            s.problems.error(f"{s.key_path('audiences')}[{index}]", f"must not be empty or contain whitespace or control characters: {audience!r}")
    name = s.take_str("name")
    if name is not None and not _ISSUER_NAME.fullmatch(name):
        s.problems.error(s.key_path("name"), f"{name[:40]!r} must be letters, digits, '.', '_' or '-' (it becomes part of principal ids)")
    return IssuerConfig(
        issuer=issuer,
        name=name,
        jwks_uri=s.take_url("jwks_uri"),
        audiences=audiences,
        algorithms=tuple(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS) or ASYMMETRIC_ALGORITHMS,
        token_type=s.take_choice("token_type", ("at+jwt", "any"), "at+jwt"),
        leeway=s.take_duration("leeway", 60.0),
    )


def _introspection(s: _Section) -> IntrospectionConfig:
    method, secret, key, audience = _client_auth(s)
    return IntrospectionConfig(
        endpoint=s.take_url("endpoint"),
        client_id=s.take_str("client_id", "", required=True),
        client_secret=secret,
        auth_method=method,
        private_key=key,
        assertion_audience=audience,
        cache_ttl=s.take_duration("cache_ttl", 60.0),
        max_concurrent=s.take_int("max_concurrent", 16, minimum=1),
    )


def _principal_limits(s: _Section) -> PrincipalLimitsConfig:
    rate = s.take_float("rate", 0.0, minimum=0.0)
    return PrincipalLimitsConfig(
        # Below the upstream pool, so one principal can never hold every pooled connection (R3).
        concurrent=s.take_int("concurrent", 64, minimum=1, maximum=UPSTREAM_POOL_SIZE - 1),
        rate=rate,
        burst=s.take_int("burst", 0, minimum=0),
    )


def _limits(s: _Section) -> LimitsConfig:
    return LimitsConfig(per_principal=_closed(s.section("per_principal"), _principal_limits))


def _jwks(s: _Section) -> JwksConfig:
    config = JwksConfig(
        cache_min=s.take_duration("cache_min", 60.0),
        cache_max=s.take_duration("cache_max", 3600.0),
        refresh_cooldown=s.take_duration("refresh_cooldown", 30.0),
        fetch_timeout=s.take_duration("fetch_timeout", 5.0),
        max_bytes=s.take_int("max_bytes", 256 * 1024, minimum=1024),
    )
    if config.cache_min > config.cache_max:
        s.problems.error(s.key_path("cache_min"), "must not be larger than cache_max")
    return config


def _dpop(s: _Section) -> DpopConfig:
    algorithms = s.take_str_list("algorithms", DPOP_DEFAULT_ALGORITHMS)
    for index, alg in enumerate(algorithms):
        if alg not in ASYMMETRIC_ALGORITHMS:
            # RFC 9449 §4.3 (5): an asymmetric algorithm; none and HS* are never a proof.
            s.problems.error(f"{s.key_path('algorithms')}[{index}]",
                             f"{alg!r} is not allowed; use asymmetric algorithms only: {', '.join(ASYMMETRIC_ALGORITHMS)}")
    if not algorithms:
        s.problems.error(s.key_path("algorithms"), "must not be empty")
    return DpopConfig(
        required=s.take_bool("required", False),
        algorithms=tuple(dict.fromkeys(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS)) or DPOP_DEFAULT_ALGORITHMS,
        max_age=_positive(s, "max_age", 60.0),
        nonce=s.take_bool("nonce", False),
        jti_cache_size=s.take_int("jti_cache_size", 100_000, minimum=1),
    )


def _mtls(s: _Section) -> MtlsConfig:
    import ipaddress

    proxies = s.take_str_list("trusted_proxies")
    for index, value in enumerate(proxies):
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            s.problems.error(f"{s.key_path('trusted_proxies')}[{index}]", f"{value[:60]!r} is not an IP address or CIDR")
    return MtlsConfig(trusted_proxies=proxies)


def _redis_url_readable(url: str) -> bool:
    """What serve's Redis client will read (redis-py's own parser): ``redis://[::1`` or a port that is not a
    number raised a ValueError with a traceback from validate, and from serve at start-up."""
    from redis.connection import parse_url

    try:
        parse_url(url)  # raises ValueError for a scheme other than these three, too
    except ValueError:
        return False
    return True


def _state(s: _Section) -> StateConfig:
    url = s.take_secret("redis_url")
    if url is not None and not _redis_url_readable(url.reveal()):
        # The URL may carry a password: the message never shows it.
        s.problems.error(s.key_path("redis_url"), "must be a redis://, rediss:// or unix:// URL (with a numeric port)")
    return StateConfig(
        redis_url=url,
        timeout=_positive(s, "timeout", 0.5),
        key_prefix=s.take_str("key_prefix", "mcp-auth-gateway:dpop:"),
    )


def _auth(s: _Section) -> AuthConfig:
    issuers = tuple(_closed(item, _issuer) for item in s.sections("issuers"))
    if not issuers:
        s.problems.error(s.key_path("issuers"), "required: at least one issuer")
    seen: set[str] = set()
    names: set[str] = set()
    for index, issuer in enumerate(issuers):
        if issuer.issuer in seen:
            s.problems.error(f"{s.key_path('issuers')}[{index}].issuer", "configured twice")
        seen.add(issuer.issuer)
        if len(issuers) > 1 and issuer.name is None:
            # I7: with several issuers the same sub may be two people; principal ids carry the issuer's name.
            s.problems.error(f"{s.key_path('issuers')}[{index}].name", "required when several issuers are configured")
        elif issuer.name is not None and issuer.name in names:
            s.problems.error(f"{s.key_path('issuers')}[{index}].name", "used by another issuer")
        if issuer.name is not None:
            names.add(issuer.name)
    return AuthConfig(
        issuers=issuers,
        introspection=_closed(s.section("introspection"), _introspection) if s.has("introspection") else None,
        jwks=_closed(s.section("jwks"), _jwks),
        dpop=_closed(s.section("dpop"), _dpop),
        mtls=_closed(s.section("mtls"), _mtls),
        required_scopes=s.take_str_list("required_scopes"),
        method_scopes=s.take_scope_map("method_scopes"),
        tool_scopes=s.take_scope_map("tool_scopes"),
        step_up=tuple(_closed(item, _step_up_rule) for item in s.sections("step_up")),
    )


# RFC 9470 §3: acr_values is one space-separated quoted string; D4: no '"' or '\\' in challenge values.
_ACR_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,256}")


def _step_up_rule(s: _Section) -> StepUpRule:
    """A6: ``{tools: [...] | methods: [...], acr_values: [...], max_age: 5m}``."""
    tools = s.take_str_list("tools")
    methods = s.take_str_list("methods")
    if s.has("tools") == s.has("methods"):
        s.problems.error(s.path, "give tools or methods (one of the two)")
    for key, names in (("tools", tools), ("methods", methods)):
        if s.has(key) and not names:
            s.problems.error(s.key_path(key), "must not be empty")
        for index, name in enumerate(names):
            if not name or name != name.strip() or not name.isprintable():
                s.problems.error(f"{s.key_path(key)}[{index}]", f"must be a name or glob without spaces at its ends: {name[:80]!r}")
    acr_values = s.take_str_list("acr_values")
    for index, value in enumerate(acr_values):
        if not _ACR_VALUE.fullmatch(value):
            s.problems.error(f"{s.key_path('acr_values')}[{index}]",
                             f"{value[:80]!r} must be 1-256 printable ASCII characters without spaces, '\"' or '\\'")
    if s.has("acr_values") and not acr_values:
        s.problems.error(s.key_path("acr_values"), "must not be empty (leave the key out instead)")
    max_age = None
    if s.has("max_age"):
        seconds = s.take_duration("max_age", 0.0)
        if seconds != int(seconds) or seconds < 1:
            s.problems.error(s.key_path("max_age"), "must be a whole number of seconds, at least 1s (RFC 9470 max_age)")
        max_age = int(seconds)
    else:
        s.take_duration("max_age", 0.0)  # mark the key as known
    if not acr_values and max_age is None:
        s.problems.error(s.path, "needs acr_values, max_age or both")
    return StepUpRule(tools=tools, methods=methods, acr_values=acr_values, max_age=max_age)


def _authorization(s: _Section) -> AuthorizationConfig:
    policies = s.take_path("policies", required=True)
    if policies is not None and not _exists(policies):
        s.problems.error(s.key_path("policies"), f"{policies} does not exist")
    schema = s.take_path("schema")
    entities = s.take_path("entities")
    for key, path in (("schema", schema), ("entities", entities)):
        if path is not None and not _is_file(path):
            s.problems.error(s.key_path(key), f"{path} does not exist")
    candidates = s.take_path("candidate_policies")
    if candidates is not None and not _exists(candidates):
        s.problems.error(s.key_path("candidate_policies"), f"{candidates} does not exist")
    pins = s.take_path("tool_pins")
    if pins is not None and not pins.parent.is_dir():
        s.problems.error(s.key_path("tool_pins"), f"{pins.parent} is not a folder")
    return AuthorizationConfig(
        policies=policies or Path("/nonexistent"),
        schema=schema,
        entities=entities,
        group_claims=s.take_str_list("group_claims", ("groups", "roles")),
        reload=s.take_bool("reload", True),
        candidate_policies=candidates,
        tool_changes=s.take_choice("tool_changes", ("warn", "deny"), "warn"),
        tool_pins=pins,
    )


def _logging(s: _Section) -> LoggingConfig:
    return LoggingConfig(
        level=s.take_choice("level", ("debug", "info", "warning", "error"), "info"),
        format=s.take_choice("format", ("json", "text"), "json"),
    )


def _audit(s: _Section) -> AuditConfig:
    return AuditConfig(enabled=s.take_bool("enabled", True), file=s.take_path("file"))


def _tracing(s: _Section) -> TracingConfig:
    config = TracingConfig(
        enabled=s.take_bool("enabled", False),
        endpoint=s.take_url("endpoint", "http://localhost:4318/v1/traces"),
        service_name=s.take_str("service_name", "mcp-auth-gateway"),
        sample_ratio=s.take_float("sample_ratio", 1.0, minimum=0.0),
    )
    if config.sample_ratio > 1.0:
        s.problems.error(s.key_path("sample_ratio"), "must be between 0 and 1")
    if not config.service_name.strip():
        s.problems.error(s.key_path("service_name"), "must not be empty")
    problem = tracing_problem() if config.enabled else None
    if problem:
        s.problems.error(s.key_path("enabled"), problem)
    return config


REQUIRED_SECTIONS = ("server", "upstream", "auth", "authorization")


def parse_config(data: Any, *, source: str = "<config>", base_dir: Path | None = None,
                 reader: type[_Section] = _Section) -> Config:
    """Build the configuration from parsed YAML. Raises ``ConfigError`` listing every problem.

    ``reader``: the section class that reads the keys; gateway.config_schema passes one that records every
    key read, to generate the JSON Schema from this loader (O5)."""
    problems = _Problems(source)
    top = reader(data, "", problems, base_dir or Path.cwd())
    for required in REQUIRED_SECTIONS:
        if not top.has(required):
            problems.error(required, "required section is missing")
    config = Config(
        server=_closed(top.section("server"), _server),
        upstream=_closed(top.section("upstream"), _upstream),
        resource=_closed(top.section("resource"), _resource),
        auth=_closed(top.section("auth"), _auth),
        authorization=_closed(top.section("authorization"), _authorization),
        limits=_closed(top.section("limits"), _limits),
        state=_closed(top.section("state"), _state),
        logging=_closed(top.section("logging"), _logging),
        audit=_closed(top.section("audit"), _audit),
        tracing=_closed(top.section("tracing"), _tracing),
        source=source,
        warnings=tuple(problems.warnings),
    )
    top.close()
    if problems.errors:
        raise ConfigError(problems.errors)
    if config.server.workers > 1 and config.state.redis_url is None:
        problems.warn("state.redis_url", f"not set with server.workers {config.server.workers}: each worker keeps its own "
                                         "DPoP replay window, so a proof can be replayed once per worker (S2)")
        config = replace(config, warnings=tuple(problems.warnings))
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (the second would win silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    if not isinstance(node, yaml.MappingNode):  # '!!map x'
        raise yaml.constructor.ConstructorError(None, None, "expected a mapping", node.start_mark)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool, type(None))):  # '? [a, b]' is unhashable
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check the YAML file at ``path`` (default: ``$MCP_AUTH_GATEWAY_CONFIG``)."""
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise ConfigError([f"no configuration file: pass --config FILE or set {ENV_VAR}"])
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not a UTF-8 text file (byte {exc.start})"]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{file}:{where}: not valid YAML: {reason}"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{file}: not valid YAML: nested too deeply"]) from exc
    except (ValueError, TypeError, AttributeError, LookupError) as exc:
        # PyYAML's constructors raise these for values such as '!!int abc', '0x_' or 2001-13-45.
        raise ConfigError([f"{file}: not valid YAML: a value cannot be read ({type(exc).__name__})"]) from exc
    return parse_config(data, source=str(file), base_dir=file.resolve().parent)
