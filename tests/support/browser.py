"""User actions over real HTTP: log in through the emulator's HTML form, as a browser would."""

from __future__ import annotations

import typing as t
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, t.Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append({"action": values.get("action", ""), "method": values.get("method", "get"),
                               "fields": {}, "buttons": []})
        elif tag in ("input", "button") and self.forms:
            name = values.get("name")
            kind = values.get("type", "submit" if tag == "button" else "text")
            if not name:
                return
            if kind == "submit":
                self.forms[-1]["buttons"].append((name, values.get("value", "")))
            else:
                self.forms[-1]["fields"][name] = values.get("value", "")


def parse_forms(html: str) -> list[dict[str, t.Any]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def submit_form(
    http: requests.Session, page: requests.Response, values: dict[str, str], button: str | None = None
) -> requests.Response:
    """Fill the first form on ``page`` that has the given fields and submit it (no redirects followed)."""
    forms = [form for form in parse_forms(page.text) if set(values) <= set(form["fields"]) | set(values)]
    assert forms, f"no form on {page.url}"
    form = next((f for f in forms if set(values) & set(f["fields"])), forms[0])
    data = dict(form["fields"])
    data.update(values)
    for name, value in form["buttons"]:
        if button is None or value == button or name == button:
            data[name] = value
            break
    action = urljoin(page.url, form["action"] or page.url)
    return http.post(action, data=data, allow_redirects=False, timeout=10)


def follow(http: requests.Session, response: requests.Response, *, until: str | None = None,
           limit: int = 10) -> requests.Response:
    """Follow redirects by hand (stopping before ``until`` if a Location starts with it)."""
    for _ in range(limit):
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        location = urljoin(response.url, response.headers["Location"])
        if until is not None and location.startswith(until):
            return response
        response = http.get(location, allow_redirects=False, timeout=10)
    raise AssertionError("too many redirects")


def login(
    http: requests.Session,
    bff_url: str,
    *,
    email: str = "alice@example.com",
    password: str = "alice",
    return_to: str = "/",
    otp: t.Callable[[], str] | None = None,
    extra: dict[str, str] | None = None,
) -> requests.Response:
    """Drive /bff/login -> emulator form -> /bff/callback; returns the callback's response."""
    params = {"returnTo": return_to, **(extra or {})}
    response = http.get(bff_url + "/bff/login", params=params, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    page = follow(http, response, until=bff_url)
    if page.status_code == 200:
        response = submit_form(http, page, {"email": email, "password": password})
        page = follow(http, response, until=bff_url)
        if page.status_code == 200 and otp is not None:
            response = submit_form(http, page, {"otp": otp()})
            page = follow(http, response, until=bff_url)
    assert page.status_code in (302, 303), page.text[:500]
    callback = urljoin(page.url, page.headers["Location"])
    assert callback.startswith(bff_url + "/bff/callback"), callback
    return http.get(callback, allow_redirects=False, timeout=10)


def bff_session(bff_url: str) -> requests.Session:
    """A requests session that behaves like the SPA: same-origin, CSRF header on every call."""
    http = requests.Session()
    http.trust_env = False
    http.headers["X-CSRF"] = "1"
    return http
