"""Logging one session in over real HTTP, as a browser would: BFF (or another relying party) -> the
emulator's form -> callback."""

from __future__ import annotations

import typing as t
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests

__all__ = ["log_in", "log_in_relying_party"]

_MAX_REDIRECTS = 10


class _Form(HTMLParser):
    """The first form on a page: its action, its fields, and its first submit button."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.button: tuple[str, str] | None = None
        self._inside = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and not self._done:
            self._inside = True
            self.action = values.get("action", "")
        elif self._inside and tag in ("input", "button") and values.get("name"):
            kind = values.get("type", "submit" if tag == "button" else "text")
            if kind == "submit":
                if self.button is None:
                    self.button = (values["name"], values.get("value", ""))
            else:
                self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._inside:
            self._inside = False
            self._done = True


def _follow(http: requests.Session, response: requests.Response, *, stop_at: str) -> requests.Response:
    """Follow redirects by hand, stopping before one that leads back to ``stop_at``."""
    for _ in range(_MAX_REDIRECTS):
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        location = urljoin(response.url, response.headers["Location"])
        if location.startswith(stop_at):
            return response
        response = http.get(location, allow_redirects=False, timeout=10)
    raise RuntimeError("login: too many redirects")


DEMO_EMAIL = "alice@example.com"
DEMO_PASSWORD = "alice"  # noqa: S105 - the emulator's demo user


def _through_form(http: requests.Session, page: requests.Response, *, email: str, password: str,
                  stop_at: str) -> requests.Response:
    """Fill in and submit the emulator's login form on ``page`` (if it is a form), up to the way back."""
    page = _follow(http, page, stop_at=stop_at)
    if page.status_code == 200:
        form = _Form()
        form.feed(page.text)
        if form.action is None:
            raise RuntimeError(f"login: no form on {page.url}")
        data: dict[str, t.Any] = {**form.fields, "email": email, "password": password}
        if form.button is not None:
            data[form.button[0]] = form.button[1]
        response = http.post(urljoin(page.url, form.action or page.url), data=data, allow_redirects=False,
                             timeout=10)
        page = _follow(http, response, stop_at=stop_at)
    if page.status_code not in (302, 303):
        raise RuntimeError(f"login: the emulator answered {page.status_code}: {page.text[:300]}")
    return page


def _client(verify: str | bool = True) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.verify = verify
    return http


def log_in(bff_url: str, *, email: str = DEMO_EMAIL, password: str = DEMO_PASSWORD,
           via: str | None = None) -> requests.Session:
    """A logged-in ``requests`` session (cookie jar holds the BFF session cookie).

    ``via``: the address of another BFF process configured with ``bff_url`` as its base URL (the one
    callback the emulator knows); the login starts and ends there.
    """
    http = _client()
    http.headers["X-CSRF"] = "1"
    start = via or bff_url
    response = http.get(start + "/bff/login", params={"returnTo": "/"}, allow_redirects=False, timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"login: /bff/login answered {response.status_code}: {response.text[:300]}")
    page = _through_form(http, response, email=email, password=password, stop_at=bff_url)
    callback = urljoin(page.url, page.headers["Location"])
    if not callback.startswith(bff_url + "/bff/callback"):
        raise RuntimeError(f"login: unexpected redirect to {callback}")
    done = http.get(start + callback[len(bff_url):], allow_redirects=False, timeout=10)
    if done.status_code not in (302, 303):
        raise RuntimeError(f"login: /bff/callback answered {done.status_code}: {done.text[:300]}")
    return http


def log_in_relying_party(
    base_url: str, protected_path: str, *, redirect_path: str, email: str = DEMO_EMAIL,
    password: str = DEMO_PASSWORD, verify: str | bool = True,
) -> requests.Session:
    """Log in at a relying party that starts its login on any protected URL (mod_auth_openidc).

    ``GET base_url + protected_path`` without a session redirects to the emulator; after its form the
    emulator redirects to ``base_url + redirect_path``, where the relying party redeems the code, sets
    its session cookie and redirects back to the protected URL. ``verify``: the CA bundle for an
    emulator served over https with its own certificate.
    """
    http = _client(verify)
    response = http.get(base_url + protected_path, allow_redirects=False, timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"login: {protected_path} answered {response.status_code}: {response.text[:300]}")
    page = _through_form(http, response, email=email, password=password, stop_at=base_url)
    callback = urljoin(page.url, page.headers["Location"])
    if not callback.startswith(base_url + redirect_path):
        raise RuntimeError(f"login: unexpected redirect to {callback}")
    done = http.get(callback, allow_redirects=False, timeout=10)
    if done.status_code not in (302, 303):
        raise RuntimeError(f"login: {redirect_path} answered {done.status_code}: {done.text[:300]}")
    return http
