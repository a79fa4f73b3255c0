"""Another site open in the same browser cannot use the logged-in user's BFF session.

The attacker's pages are served from a second loopback server, in two positions:

* cross-site, ``http://127.0.0.1:<port>``: the ``SameSite=Strict`` session cookie is not even sent;
* same-site but cross-origin, ``http://localhost:<other port>`` (ports do not make sites): the
  cookie *is* sent, so only the BFF's anti-forgery check (``X-CSRF: 1``, ``Origin``,
  ``Sec-Fetch-Site``) stands between the page and the session.

Each page tries a credentialed CORS read of the proxy with ``X-CSRF: 1`` (needs a preflight),
simple no-CORS ``fetch`` POSTs (enroll a method, start a connect flow, log out) and top-level form
POSTs to ``/bff/logout`` and ``/bff/connect``. Afterwards the emulator has seen no My Account call
and no token or revocation request, the BFF's store holds the same session and no connect
transaction, and the SPA still shows the user logged in.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import typing as t

import pytest
from playwright.sync_api import Page, expect

from tests.browser.spa import Spa, store_keys
from tests.conftest import Stack
from tests.support.servers import ThreadedServer

pytestmark = pytest.mark.browser

FETCHES = """
const bff = BFF;
const simple = (path, body) => fetch(bff + path, {
  method: "POST", mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"}, body,
});
const attempts = {
  read_with_csrf_header: () => fetch(bff + "/me/v1/authentication-methods", {
    credentials: "include", headers: {"X-CSRF": "1"},
  }),
  read_user: () => fetch(bff + "/bff/user", {credentials: "include"}),
  enroll: () => simple("/me/v1/authentication-methods", JSON.stringify({type: "email", email: "mallory@example.com"})),
  connect: () => simple("/bff/connect", JSON.stringify({connection: "github", returnTo: "/"})),
  logout: () => fetch(bff + "/bff/logout", {method: "POST", mode: "no-cors", credentials: "include"}),
};
window.results = {};
(async () => {
  for (const [name, attempt] of Object.entries(attempts)) {
    try {
      const response = await attempt();
      window.results[name] = response.type === "opaque" ? "opaque" : `read ${response.status}`;
    } catch (error) {
      window.results[name] = error.name;
    }
  }
  document.title = "done";
})();
"""

#: Top-level form posts; the connect one smuggles JSON in a text/plain body.
FORMS = {
    "/form-logout": '<form method="post" action="{bff}/bff/logout"></form>',
    "/form-connect": (
        '<form method="post" action="{bff}/bff/connect" enctype="text/plain">'
        """<input type="hidden" name='{{"connection":"github","returnTo":"/?a' value='"}}'></form>"""
    ),
}


def attacker_app(bff_url: str) -> t.Callable[..., list[bytes]]:
    def app(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/":
            body = f"<!doctype html><title>offers</title><script>{FETCHES.replace('BFF', json.dumps(bff_url))}</script>"
        elif path in FORMS:
            form = FORMS[path].format(bff=bff_url)
            body = f"<!doctype html><title>offers</title>{form}<script>document.forms[0].submit()</script>"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode()]

    return app


@dataclasses.dataclass(frozen=True)
class Arrival:
    method: str
    path: str
    origin: str | None
    cookie: bool
    status: int


def record_arrivals(stack: Stack) -> list[Arrival]:
    """Every request the BFF answers, with its ``Origin``, whether it carried a cookie, and the status."""
    arrivals: list[Arrival] = []
    inner = stack.app.wsgi_app

    def recorder(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Any:
        def recording_start(status: str, headers: list[tuple[str, str]], *args: t.Any) -> t.Any:
            arrivals.append(Arrival(
                environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_ORIGIN"),
                stack.settings.session_cookie_name in environ.get("HTTP_COOKIE", ""), int(status.split()[0]),
            ))
            return start_response(status, headers, *args)

        return inner(environ, recording_start)

    stack.app.wsgi_app = recorder
    return arrivals



@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"], ids=["cross-site", "same-site"])
def test_another_site_cannot_call_the_proxy_or_start_a_flow(
    spa: Spa, page: Page, demo: Stack, attacker_host: str
) -> None:
    spa.open("/")
    spa.log_in("/")
    spa.screenshots.take("logged-in")
    before_calls = collections.Counter(demo.idp.my_account.calls)
    before_tokens = demo.idp.counters()
    before_keys = store_keys(demo)
    assert any(key.startswith("bff:s:") for key in before_keys)
    arrivals = record_arrivals(demo)

    attacker = ThreadedServer()
    attacker.serve(attacker_app(demo.bff_url))
    try:
        origin = attacker.url(attacker_host)
        page.goto(origin + "/")
        expect(page).to_have_title("done")
        results = page.evaluate("window.results")
        spa.screenshots.take("attacker-fetches")
        for path in FORMS:
            with page.expect_response(lambda response: response.request.method == "POST") as answer:
                page.goto(origin + path)
            assert answer.value.url.startswith(demo.bff_url + "/bff/"), answer.value.url
            assert answer.value.status in (401, 403), answer.value.status
            spa.screenshots.take("attacker" + path.replace("/", "-"))
    finally:
        attacker.stop()

    # Nothing could be read: the preflight for X-CSRF is refused, plain reads get no CORS grant.
    assert results == {
        "read_with_csrf_header": "TypeError",
        "read_user": "TypeError",
        "enroll": "opaque",
        "connect": "opaque",
        "logout": "opaque",
    }
    from_attacker = [arrival for arrival in arrivals if arrival.origin == origin]
    assert {(a.method, a.path) for a in from_attacker} == {
        ("OPTIONS", "/me/v1/authentication-methods"),  # the preflight; the GET itself never left
        ("GET", "/bff/user"),
        ("POST", "/me/v1/authentication-methods"),
        ("POST", "/bff/connect"),
        ("POST", "/bff/logout"),
    }, from_attacker
    for arrival in from_attacker:
        assert arrival.method == "GET" or arrival.status in (401, 403, 405), arrival
    if attacker_host == "localhost":
        # Same site: the session cookie went along, and the anti-forgery check alone refused.
        posts = [a for a in from_attacker if a.method == "POST"]
        assert all(a.cookie and a.status == 403 for a in posts), posts

    # Nothing happened: no My Account call, no token or revocation, the same session, no flow.
    assert demo.idp.my_account.calls == before_calls
    assert demo.idp.counters() == before_tokens
    after_keys = store_keys(demo)
    assert after_keys == before_keys, after_keys ^ before_keys

    # The user is still logged in, in the same session.
    spa.open("/")
    spa.expect_signed_in()
    spa.screenshots.take("still-logged-in")
    assert store_keys(demo) == before_keys
