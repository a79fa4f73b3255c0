"""Configuration is validated at startup and every failure names its variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bff.settings import ConfigError, Settings

GOOD = {
    "BFF_ISSUER_URL": "https://tenant.us.auth0.com/",
    "BFF_CLIENT_ID": "client",
    "BFF_CLIENT_SECRET": "secret",
    "BFF_BASE_URL": "https://app.example.com",
    "BFF_SECRET_KEY": "k" * 32,
    "BFF_SESSION_STORE": "redis://127.0.0.1:6390/0",
}


def env(**changes: str | None) -> dict[str, str]:
    result = dict(GOOD)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def test_a_complete_environment_gives_settings_with_derived_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.issuer_url == "https://tenant.us.auth0.com/"
    assert settings.my_account_url == "https://tenant.us.auth0.com/me/v1"
    assert settings.my_account_audience == "https://tenant.us.auth0.com/me/"
    assert settings.scopes == "openid profile email offline_access"
    assert settings.session_cookie_name == "__Host-bff-session"
    assert settings.origin == "https://app.example.com"
    assert settings.redirect_uri == "https://app.example.com/bff/callback"


@pytest.mark.parametrize("issuer", ["https://t.auth0.com", "https://t.auth0.com/"])
def test_urls_derived_from_the_issuer_are_the_same_with_or_without_its_trailing_slash(issuer: str) -> None:
    settings = Settings.from_env(env(BFF_ISSUER_URL=issuer))
    assert settings.issuer_url == issuer  # kept as configured: discovery decides the exact spelling
    assert settings.discovery_url == "https://t.auth0.com/.well-known/openid-configuration"
    assert settings.my_account_url == "https://t.auth0.com/me/v1"
    assert settings.my_account_audience == "https://t.auth0.com/me/"


def test_an_issuer_with_a_path_keeps_it() -> None:
    settings = Settings.from_env(env(BFF_ISSUER_URL="https://op.example/realms/app"))
    assert settings.discovery_url == "https://op.example/realms/app/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BFF_ISSUER_URL", None, "BFF_ISSUER_URL: is required"),
        ("BFF_CLIENT_ID", None, "BFF_CLIENT_ID: is required"),
        ("BFF_CLIENT_SECRET", "", "BFF_CLIENT_SECRET: is required"),
        ("BFF_BASE_URL", None, "BFF_BASE_URL: is required"),
        ("BFF_SECRET_KEY", None, "BFF_SECRET_KEY: is required"),
        ("BFF_ISSUER_URL", "http://tenant.auth0.com/", "BFF_ISSUER_URL: http:// is accepted only for loopback"),
        ("BFF_ISSUER_URL", "tenant.auth0.com", "BFF_ISSUER_URL: must be an absolute"),
        ("BFF_BASE_URL", "https://app.example.com/spa", "BFF_BASE_URL: must be an origin without a path"),
        ("BFF_BASE_URL", "http://app.example.com", "BFF_BASE_URL: http:// is accepted only for loopback"),
        ("BFF_SECRET_KEY", "short", "BFF_SECRET_KEY: secret #1 is shorter"),
        ("BFF_SECRET_KEY", "k" * 32 + ",tiny", "BFF_SECRET_KEY: secret #2 is shorter"),
        ("BFF_SESSION_STORE", "memcached://x", "BFF_SESSION_STORE: must start with"),
        ("BFF_SCOPES", "openid profile", "BFF_SCOPES: must include offline_access"),
        ("BFF_SCOPES", "profile offline_access", "BFF_SCOPES: must include openid"),
        ("BFF_TOKEN_REFRESH_MARGIN", "soon", "BFF_TOKEN_REFRESH_MARGIN: must be a int"),
        ("BFF_UPSTREAM_READ_TIMEOUT", "-1", "BFF_UPSTREAM_READ_TIMEOUT: must be greater than zero"),
        ("BFF_REFRESH_LOCK_LEASE", "5", "BFF_REFRESH_LOCK_LEASE: must be longer than BFF_TOKEN_TIMEOUT"),
    ],
)
def test_a_bad_variable_stops_startup_naming_it(variable: str, value: str | None, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env(**{variable: value}))
    assert str(raised.value).startswith(message)
    assert raised.value.variable == variable


def test_loopback_http_is_allowed_for_the_emulator() -> None:
    settings = Settings.from_env(
        env(BFF_ISSUER_URL="http://127.0.0.1:9000/", BFF_BASE_URL="http://localhost:8000")
    )
    assert settings.secure_cookies is False
    assert settings.session_cookie_name == "bff-session"


def test_several_secret_keys_are_accepted_for_rotation() -> None:
    settings = Settings.from_env(env(BFF_SECRET_KEY=f"{'a' * 32}, {'b' * 32}"))
    assert settings.secret_keys == ("a" * 32, "b" * 32)


def test_secrets_are_not_shown_in_the_settings_repr() -> None:
    text = repr(Settings.from_env(GOOD))
    assert "k" * 32 not in text and "secret'" not in text


def test_the_command_line_prints_one_line_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bff.cli", "serve"],
        env={**env(BFF_BASE_URL="ftp://nope"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["bff: BFF_BASE_URL: must be an absolute https:// URL, got 'ftp://nope'"]
