"""The ``bff`` command: check, emulator and demo, run as a newcomer would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import typing as t

import requests

from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, Stack
from tests.support.browser import bff_session, login
from tests.support.redis_server import free_port


def run_cli(*args: str, env: t.Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bff.cli", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def stack_env(stack: Stack, **changes: str) -> dict[str, str]:
    return {
        "BFF_ISSUER_URL": stack.settings.issuer_url,
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": stack.bff_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": t.cast(str, stack.settings.session_store),
        **changes,
    }


def test_check_passes_with_a_reachable_issuer_and_store(stack: Stack) -> None:
    result = run_cli("check", env=stack_env(stack))
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout


def test_check_advises_a_rotation_overlap_above_the_token_timeout(stack: Stack) -> None:
    without = run_cli("check", env=stack_env(stack))
    assert "note: BFF_REFRESH_TOKEN_OVERLAP is 0s" in without.stdout
    with_overlap = run_cli("check", env=stack_env(stack, BFF_REFRESH_TOKEN_OVERLAP="30"))
    assert with_overlap.returncode == 0, with_overlap.stderr
    assert "BFF_REFRESH_TOKEN_OVERLAP" not in with_overlap.stdout


def test_check_reports_client_credentials_the_token_endpoint_refuses(stack: Stack) -> None:
    result = run_cli("check", env=stack_env(stack, BFF_CLIENT_SECRET="not-the-secret-0123456789"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["BFF_CLIENT_SECRET"], lines
    assert "invalid_client" in lines[0]


def test_check_names_each_unreachable_dependency(stack: Stack) -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    result = run_cli("check", env=stack_env(
        stack, BFF_ISSUER_URL=dead, BFF_SESSION_STORE=f"redis://127.0.0.1:{free_port()}/0",
        BFF_PROXY_ROUTES="factors,bogus"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["BFF_ISSUER_URL", "BFF_SESSION_STORE", "BFF_PROXY_ROUTES"]


def test_check_reports_every_invalid_variable_at_once_one_line_each() -> None:
    result = run_cli("check", env={"BFF_CLIENT_ID": "x", "BFF_TOKEN_TIMEOUT": "soon", "BFF_LOG_FORMAT": "xml"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "bff: BFF_ISSUER_URL: is required but not set",
        "bff: BFF_CLIENT_SECRET: is required but not set",
        "bff: BFF_BASE_URL: is required but not set",
        "bff: BFF_SECRET_KEY: is required but not set",
        "bff: BFF_TOKEN_TIMEOUT: must be a float, got 'soon'",
        "bff: BFF_LOG_FORMAT: must be one of json, text, got 'xml'",
    ]


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError("process exited: " + (process.stderr.read() if process.stderr else ""))
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r}")


def test_emulator_command_serves_discovery_on_the_given_port() -> None:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "BFF_CLIENT_ID": CLIENT_ID, "BFF_CLIENT_SECRET": CLIENT_SECRET,
           "BFF_BASE_URL": "http://127.0.0.1:8000", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "bff.cli", "emulator", "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                document = requests.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
        assert document.json()["issuer"] == f"http://127.0.0.1:{port}/"
    finally:
        stop(process)


def test_demo_starts_and_a_login_through_it_reaches_the_user() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "demo", "--port", str(port)],
        env={"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "HOME": os.environ.get("HOME", "/tmp")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = _wait_for_line(process, r"open (http://\S+)/").group(1)
        assert url == f"http://localhost:{port}"
        http = bff_session(url)
        assert login(http, url).status_code == 302
        user = http.get(url + "/bff/user")
        assert user.status_code == 200
        assert user.json()["claims"]["email"] == "alice@example.com"
        page = http.get(url + "/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert http.get(url + "/bff/static/bff.js").status_code == 200
        methods = http.get(url + "/me/v1/authentication-methods")
        assert methods.status_code == 200
    finally:
        stop(process)
