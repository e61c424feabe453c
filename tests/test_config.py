"""The configuration contract (shared/design/config.md): every problem named by file and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, Secret, load_config, parse_duration

MINIMAL = """\
server: {public_url: https://mcp.example.com/mcp}
upstream: {url: http://127.0.0.1:3000/mcp}
auth: {issuers: [{issuer: https://idp.example.com}]}
authorization: {policies: policies}
"""


@pytest.fixture
def write(tmp_path: Path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.cedar").write_text("permit (principal, action, resource);")

    def write(text: str, name: str = "gateway.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_minimal_file_gets_secure_defaults(write):
    config = load_config(write(MINIMAL))
    assert config.server.mcp_path == "/mcp"
    assert config.server.port == 8080 and config.server.allowed_origins == ()
    assert config.auth.issuers[0].token_type == "at+jwt"
    assert "HS256" not in config.auth.issuers[0].algorithms and "none" not in config.auth.issuers[0].algorithms
    assert config.upstream.auth.type == "none"
    assert config.authorization_servers == ("https://idp.example.com",)
    assert config.authorization.policies == write(MINIMAL).parent / "policies"  # relative to the file


def test_typo_missing_public_url_and_bad_duration_are_all_reported(write):
    path = write(MINIMAL.replace("public_url", "publik_url").replace(
        "upstream: {url: http://127.0.0.1:3000/mcp}", "upstream: {url: http://127.0.0.1:3000/mcp, connect_timeout: 5 seconds}"))
    found = problems(path)
    assert f"{path}: server.public_url: required" in found
    assert any(p.startswith(f"{path}: server.publik_url: unknown key") and "public_url" in p for p in found)
    assert any(p.startswith(f"{path}: upstream.connect_timeout: ") for p in found)


def test_unknown_keys_anywhere_are_errors(write):
    text = MINIMAL.replace("{issuer: https://idp.example.com}", "{issuer: https://idp.example.com, audience: x}")
    text += "loging: {level: info}\n"
    found = problems(write(text))
    assert any("auth.issuers[0].audience: unknown key" in p for p in found)
    assert any("loging: unknown key" in p for p in found)


def test_missing_sections_and_empty_issuers(write):
    found = problems(write("server: {public_url: https://m/mcp}\nauth: {issuers: []}\n"))
    assert any(p.endswith("upstream: required section is missing") for p in found)
    assert any(p.endswith("authorization: required section is missing") for p in found)
    assert any("auth.issuers: required" in p for p in found)


def test_symmetric_and_none_algorithms_are_refused(write):
    text = MINIMAL.replace("{issuer: https://idp.example.com}", "{issuer: https://idp.example.com, algorithms: [RS256, HS256, none]}")
    found = problems(write(text))
    assert any("auth.issuers[0].algorithms[1]" in p for p in found)
    assert any("auth.issuers[0].algorithms[2]" in p for p in found)


def test_env_interpolation_and_unset_variable(write, monkeypatch):
    monkeypatch.setenv("UPSTREAM_PORT", "3999")
    config = load_config(write(MINIMAL.replace("http://127.0.0.1:3000/mcp", '"http://127.0.0.1:${UPSTREAM_PORT}/mcp"')))
    assert config.upstream.url == "http://127.0.0.1:3999/mcp"
    found = problems(write(MINIMAL.replace("http://127.0.0.1:3000/mcp", '"http://127.0.0.1:${NOT_SET_ANYWHERE}/mcp"')))
    assert any("upstream.url: environment variable NOT_SET_ANYWHERE is not set" in p for p in found)


def test_secret_file_twin_is_read_and_masked(write, tmp_path):
    (tmp_path / "secret").write_text("s3cr3t\n")
    text = MINIMAL.replace(
        "auth: {issuers: [{issuer: https://idp.example.com}]}",
        "auth:\n  issuers: [{issuer: https://idp.example.com}]\n"
        "  introspection: {client_id: gw, client_secret_file: secret}",
    )
    config = load_config(write(text))
    secret = config.auth.introspection.client_secret
    assert secret.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(config)


def test_secret_and_its_file_twin_together_are_an_error(write, tmp_path):
    (tmp_path / "secret").write_text("a")
    text = MINIMAL.replace(
        "auth: {issuers: [{issuer: https://idp.example.com}]}",
        "auth:\n  issuers: [{issuer: https://idp.example.com}]\n"
        "  introspection: {client_id: gw, client_secret: b, client_secret_file: secret}",
    )
    assert any("auth.introspection.client_secret: give client_secret or client_secret_file, not both" in p for p in problems(write(text)))


def test_upstream_auth_keys_must_fit_the_type(write):
    text = MINIMAL.replace("upstream: {url: http://127.0.0.1:3000/mcp}",
                           "upstream: {url: http://127.0.0.1:3000/mcp, auth: {type: static, token_endpoint: https://x/t}}")
    found = problems(write(text))
    assert any("upstream.auth.token_endpoint: not used with type static" in p for p in found)
    assert any("upstream.auth.value: required" in p for p in found)


def test_duplicate_yaml_key_is_an_error(write):
    found = problems(write(MINIMAL + "server: {public_url: https://other/mcp}\n"))
    assert "appears twice" in found[0]


def test_offline_access_is_not_a_resource_scope(write):
    found = problems(write(MINIMAL + "resource: {scopes_supported: [mcp, offline_access]}\n"))
    assert any("resource.scopes_supported: must not contain offline_access" in p for p in found)


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 minutes", "1d", "s30", "30s5"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_secret_repr_is_masked():
    assert "abc" not in repr(Secret("abc")) and "abc" not in str(Secret("abc"))


def test_validate_command_lists_every_problem_and_exits_nonzero(write):
    path = write(MINIMAL.replace("public_url", "publik_url") + "logging: {level: loud}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "server.public_url: required" in result.stderr
    assert "server.publik_url: unknown key" in result.stderr
    assert "logging.level: must be one of" in result.stderr


def test_validate_command_accepts_a_good_file(write):
    result = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(write(MINIMAL))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
