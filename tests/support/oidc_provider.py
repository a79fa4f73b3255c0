"""A certified OpenID provider (oidc-provider, a pinned Node project in ``oidc_provider/``) run by the tests.

:func:`ensure_installed` runs ``npm ci`` into ``tests/support/oidc_provider/`` when its ``node_modules``
is missing (once installed, nothing touches the network); without Node.js or npm it fails with one
message saying what to install. :class:`OidcProvider` starts ``node server.mjs`` on a free loopback port
with one confidential client, reads the issuer it prints (``http://127.0.0.1:<port>``, no trailing
slash) and stops it. :meth:`OidcProvider.events` is the provider's own account of what it did.

:func:`login` drives the provider's login and consent pages the way
:func:`tests.support.browser.login` drives the emulator's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
import typing as t
from urllib.parse import urljoin

import requests

from tests.support.browser import follow, parse_forms, submit_form

__all__ = ["PROJECT", "OidcProvider", "ProviderUnavailable", "ensure_installed", "login"]

PROJECT = pathlib.Path(__file__).with_name("oidc_provider")
_START_TIMEOUT = 20.0
_INSTALL_TIMEOUT = 300.0
_MIN_NODE = (20, 12)  # what the pinned oidc-provider needs (package.json "engines")


class ProviderUnavailable(RuntimeError):
    """Node.js or npm is missing, or the provider's dependencies could not be installed."""


def _installed() -> bool:
    return (PROJECT / "node_modules" / "oidc-provider" / "package.json").is_file()


def ensure_installed() -> None:
    """``npm ci`` into the provider's folder unless its dependencies are already there."""
    node = shutil.which("node")
    if node is None:
        raise ProviderUnavailable("Node.js is not installed: the standard-provider tests run oidc-provider on it")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < _MIN_NODE:
        raise ProviderUnavailable(
            f"Node.js {version.strip() or '(unknown version)'} is too old for oidc-provider: "
            f"{'.'.join(map(str, _MIN_NODE))} or later is needed"
        )
    if _installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ProviderUnavailable(
            f"npm is not installed: it installs oidc-provider into {PROJECT} (npm ci) before the first run"
        )
    # One install at a time, whoever runs the tests.
    with (pathlib.Path(tempfile.gettempdir()) / "bff-oidc-provider-npm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PROJECT, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT, check=False,
        )
        if result.returncode != 0 or not _installed():
            raise ProviderUnavailable(f"npm ci failed in {PROJECT}:\n{result.stderr[-2000:]}")


class OidcProvider:
    """``node server.mjs`` for one client of the BFF at ``base_url``; :meth:`start` returns once it listens."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        base_url: str,
        resource: str,
        resource_scopes: t.Sequence[str],
        access_token_ttl: int = 3600,
        log_dir: pathlib.Path | None = None,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.base_url = base_url
        self.resource = resource
        self.resource_scopes = tuple(resource_scopes)
        self.access_token_ttl = access_token_ttl
        self._log_dir = log_dir
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.issuer = ""
        self.log_path: pathlib.Path | None = None

    def start(self) -> OidcProvider:
        ensure_installed()
        if self._log_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="bff-oidc-provider-")
            self._log_dir = pathlib.Path(self._own_dir.name)
        self.log_path = self._log_dir / "oidc-provider.log"
        command = [
            "node", "server.mjs", "--port", "0",
            "--client-id", self.client_id,
            "--redirect-uri", self.base_url + "/bff/callback",
            "--redirect-uri", self.base_url + "/bff/connect/callback",
            "--post-logout-redirect-uri", self.base_url + "/",
            "--backchannel-logout-uri", self.base_url + "/bff/backchannel-logout",
            "--resource", self.resource,
            "--resource-scopes", " ".join(self.resource_scopes),
            "--access-token-ttl", str(self.access_token_ttl),
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OIDC_CLIENT_SECRET": self._secret}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("ready "):
                    self.issuer = line.removeprefix("ready ").strip()
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited ({self.process.returncode}): {self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"oidc-provider did not start within {_START_TIMEOUT:g}s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def metadata(self) -> dict[str, t.Any]:
        response = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        return t.cast(dict[str, t.Any], response.json())

    def events(self, kind: str | None = None, **match: t.Any) -> list[dict[str, t.Any]]:
        """What the provider did, oldest first: every event, or those of ``kind`` whose fields equal ``match``."""
        response = requests.get(self.issuer + "/_test/events", timeout=10)
        response.raise_for_status()
        found = t.cast(list[dict[str, t.Any]], response.json())
        return [
            event for event in found
            if (kind is None or event["type"] == kind) and all(event.get(k) == v for k, v in match.items())
        ]

    def refresh(self, refresh_token: str, **params: str) -> requests.Response:
        """A refresh-token grant as this client, sent directly (not through the BFF)."""
        return requests.post(
            self.metadata()["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id,
                  "client_secret": self._secret, **params},
            timeout=10,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                self._own_dir.cleanup()
            self._own_dir = None


def login(
    http: requests.Session,
    bff_url: str,
    *,
    email: str = "alice@example.com",
    password: str = "alice",
    return_to: str = "/",
) -> requests.Response:
    """``/bff/login`` -> the provider's login page -> its consent page (when it asks) -> ``/bff/callback``.

    Returns the callback's response. With a provider session already open, no page is shown.
    """
    response = http.get(bff_url + "/bff/login", params={"returnTo": return_to}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    page = follow(http, response, until=bff_url)
    for _ in range(3):
        if page.status_code != 200:
            break
        forms = parse_forms(page.text)
        if any("email" in form["fields"] for form in forms):
            response = submit_form(http, page, {"email": email, "password": password})
        else:
            assert forms, page.text[:500]
            response = submit_form(http, page, {}, button="allow")
        page = follow(http, response, until=bff_url)
    assert page.status_code in (302, 303), page.text[:500]
    callback = urljoin(page.url, page.headers["Location"])
    assert callback.startswith(bff_url + "/bff/callback"), callback
    return http.get(callback, allow_redirects=False, timeout=10)
