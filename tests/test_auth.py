"""Login, callback, user and logout over real HTTP against the emulator."""

from __future__ import annotations

import json
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.conftest import Stack, StackFactory
from tests.support.browser import follow, login, submit_form
from tests.support.problems import assert_error_page, assert_problem, assert_sent_back

__all__ = ["assert_problem"]  # other test modules take it from here


def test_login_reaches_user_and_logout_ends_everything(stack: Stack) -> None:
    http = stack.browser()
    callback = login(http, stack.bff_url, return_to="/settings?tab=1")
    assert callback.status_code == 302
    assert callback.headers["Location"] == "/settings?tab=1"

    user = http.get(stack.bff_url + "/bff/user")
    assert user.status_code == 200
    assert user.headers["Content-Type"] == "application/json"
    body = user.json()
    assert body["claims"]["email"] == "alice@example.com"
    assert body["claims"]["sub"].startswith("auth0|")
    assert 0 < body["session"]["expires_in"] <= stack.settings.session_lifetime
    assert body["logout_url"].startswith("/bff/logout?sid=")
    assert "token" not in json.dumps(body).lower()

    logout = http.post(stack.bff_url + "/bff/logout")
    assert logout.status_code == 200
    url = urlsplit(logout.json()["logout_url"])
    query = parse_qs(url.query)
    assert url.path.endswith("/oidc/logout")
    assert query["client_id"] == [stack.settings.client_id]
    assert query["post_logout_redirect_uri"] == [stack.bff_url + "/"]
    # The IdP session is named by its sid (logout_hint); the ID token never reaches the browser.
    assert "id_token_hint" not in query
    assert len(query["logout_hint"]) == 1 and query["logout_hint"][0].count(".") == 0
    assert stack.settings.session_cookie_name not in http.cookies
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")


def test_logout_revokes_the_refresh_token_family(stack: Stack) -> None:
    http = stack.logged_in()
    record = _only_record(stack)
    refresh_token = stack.app.extensions["bff"].box.open(record.fields["rt"]).decode()
    family = stack.idp.family_of(refresh_token)
    assert not stack.idp.family_revoked(family)
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200
    assert stack.idp.family_revoked(family)


def _only_record(stack: Stack) -> t.Any:
    client = _redis(stack)
    keys = [key.decode() for key in client.keys("bff:s:*")]
    assert len(keys) == 1, keys
    record = stack.store.load(keys[0].removeprefix("bff:s:{").removesuffix("}"))
    assert record is not None
    return record


def _redis(stack: Stack) -> t.Any:
    import redis

    return redis.Redis.from_url(t.cast(str, stack.settings.session_store))


def test_user_is_401_problem_when_not_logged_in(stack: Stack) -> None:
    response = stack.browser().get(stack.bff_url + "/bff/user", allow_redirects=False)
    body = assert_problem(response, 401, "not-authenticated")
    assert body["login_url"] == "/bff/login"


@pytest.mark.parametrize(
    "return_to",
    ["//evil.example", "/\\evil.example", "https://evil.example/", "javascript:alert(1)",
     "%2F%2Fevil.example", "/%2F%2Fevil.example", "/%5Cevil.example", "/ok\r\nX: y", "/ok%0d%0aX:%20y"],
)
def test_login_rejects_non_local_return_urls_before_anything_happens(stack: Stack, return_to: str) -> None:
    http = stack.browser()
    response = http.get(stack.bff_url + "/bff/login", params={"returnTo": return_to}, allow_redirects=False)
    assert_error_page(response, 400)  # a navigation, with nowhere safe to send the browser back to
    assert "Set-Cookie" not in response.headers
    asked = http.get(stack.bff_url + "/bff/login", params={"returnTo": return_to},
                     headers={"Accept": "application/json"}, allow_redirects=False)
    assert_problem(asked, 400, "invalid-return-url")
    assert _redis(stack).keys("bff:k:login:*") == []


def test_login_redirect_uses_pkce_s256_state_and_nonce(stack: Stack) -> None:
    response = stack.browser().get(stack.bff_url + "/bff/login", allow_redirects=False)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 20 and len(query["nonce"][0]) >= 20
    assert query["redirect_uri"] == [stack.bff_url + "/bff/callback"]
    assert "offline_access" in query["scope"][0].split()


def test_login_issues_a_new_session_id(stack: Stack) -> None:
    http = stack.browser()
    name = stack.settings.session_cookie_name
    http.cookies.set(name, "A" * 43, domain="127.0.0.1", path="/")  # a planted id is never adopted
    login(http, stack.bff_url)
    first = http.cookies.get(name)
    assert first and first != "A" * 43
    login(http, stack.bff_url)
    second = http.cookies.get(name)
    assert second and second != first
    assert stack.store.load(first) is None  # the previous session ended at re-login
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def _authorize_until_callback(http: requests.Session, stack: Stack) -> str:
    response = http.get(stack.bff_url + "/bff/login", allow_redirects=False)
    page = follow(http, response, until=stack.bff_url)
    response = submit_form(http, page, {"email": "alice@example.com", "password": "alice"})
    redirect = follow(http, response, until=stack.bff_url)
    return t.cast(str, redirect.headers["Location"])


def test_idp_error_is_a_400_problem_and_keeps_the_existing_session(stack: Stack) -> None:
    http = stack.logged_in()
    started = http.get(stack.bff_url + "/bff/login", allow_redirects=False)
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    response = http.get(stack.bff_url + "/bff/callback", params={"error": "access_denied", "state": state},
                        allow_redirects=False)
    query = assert_sent_back(response, "/", "access_denied")
    assert "access_denied" in query["error_description"]
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_callback_without_state_is_rejected(stack: Stack) -> None:
    http = stack.logged_in()
    missing = http.get(stack.bff_url + "/bff/callback", params={"code": "abc"}, allow_redirects=False)
    assert_sent_back(missing, "/", "login_failed")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_callback_with_unknown_state_is_rejected(stack: Stack) -> None:
    http = stack.browser()
    response = http.get(stack.bff_url + "/bff/callback", params={"code": "abc", "state": "forged"},
                        headers={"Accept": "application/json"})
    assert_problem(response, 400, "login-failed")


def test_callback_delivered_to_another_browser_is_rejected(stack: Stack) -> None:
    attacker = stack.browser()
    callback = _authorize_until_callback(attacker, stack)
    victim = stack.logged_in()
    response = victim.get(callback, allow_redirects=False)
    assert_sent_back(response, "/", "login_failed")
    # The victim's own session is untouched and still theirs.
    assert victim.get(stack.bff_url + "/bff/user").json()["claims"]["email"] == "alice@example.com"


def test_replayed_callback_is_rejected_and_keeps_the_session(stack: Stack) -> None:
    http = stack.browser()
    callback = _authorize_until_callback(http, stack)
    assert http.get(callback, allow_redirects=False).status_code == 302
    assert_sent_back(http.get(callback, allow_redirects=False), "/", "login_failed")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_logout_requires_the_csrf_header(stack: Stack) -> None:
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/bff/logout", headers={"X-CSRF": ""})
    assert_problem(response, 403, "csrf")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_logout_rejects_a_foreign_origin(stack: Stack) -> None:
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/bff/logout", headers={"Origin": "https://evil.example"})
    assert_problem(response, 403, "csrf")
    ok = http.post(stack.bff_url + "/bff/logout", headers={"Origin": stack.bff_url})
    assert ok.status_code == 200


def test_logout_link_requires_the_sessions_sid(stack: Stack) -> None:
    http = stack.logged_in()
    forged = http.get(stack.bff_url + "/bff/logout", params={"sid": "guess"}, allow_redirects=False)
    assert_error_page(forged, 403)
    link = http.get(stack.bff_url + "/bff/user").json()["logout_url"]
    response = http.get(stack.bff_url + link, allow_redirects=False)
    assert response.status_code == 302
    assert "/oidc/logout?" in response.headers["Location"]
    assert http.get(stack.bff_url + "/bff/user").status_code == 401


def test_session_cookie_attributes_on_loopback(stack: Stack) -> None:
    http = stack.browser()
    callback = login(http, stack.bff_url)
    cookie = next(value for value in callback.raw.headers.getlist("Set-Cookie") if value.startswith("bff-session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie and "Expires" not in cookie


def test_https_origin_gives_host_prefixed_secure_cookies(make_stack: StackFactory) -> None:
    from bff import create_app
    from bff.settings import Settings

    plain = make_stack()
    settings = Settings(**{**plain.settings.__dict__, "base_url": "https://app.example.com"})
    # The emulator registered the loopback callback; reuse it only for cookie attributes.
    app = create_app(settings, store=plain.store)
    response = app.test_client().get("/bff/login", base_url="https://app.example.com")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-bff-login=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie
    # The session cookie, as the session interface sets it for a session that just started.
    from flask import Response

    from bff.session import BffSession, LiveSession

    session = BffSession(sid="", permanent=True)
    session.adopt(LiveSession("s" * 43, {"sub": "auth0|1"}, {}))
    response = Response()
    app.session_interface.save_session(app, session, response)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-bff-session=" + "s" * 43)
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie and "Expires" not in cookie


def test_store_outage_gives_503_then_recovers_without_a_new_login(stack: Stack, redis_server: t.Any) -> None:
    http = stack.logged_in()
    redis_server.stop()
    try:
        assert_problem(http.get(stack.bff_url + "/bff/user"), 503, "store-unavailable")
        assert_problem(http.get(stack.bff_url + "/readyz"), 503, "store-unavailable")
        assert http.get(stack.bff_url + "/healthz").status_code == 200
    finally:
        redis_server.start()
    assert http.get(stack.bff_url + "/readyz").status_code == 200
    user = http.get(stack.bff_url + "/bff/user")
    assert user.status_code == 200, user.text
    assert user.json()["claims"]["email"] == "alice@example.com"


def test_logout_without_a_session_is_idempotent(stack: Stack) -> None:
    response = stack.browser().post(stack.bff_url + "/bff/logout")
    assert response.status_code == 200
    query = parse_qs(urlsplit(response.json()["logout_url"]).query)
    assert "id_token_hint" not in query
    assert query["client_id"] == [stack.settings.client_id]


def test_logout_during_a_store_outage_is_a_503_and_keeps_the_session(stack: Stack, redis_server: t.Any) -> None:
    http = stack.logged_in()
    redis_server.stop()
    try:
        assert_problem(http.post(stack.bff_url + "/bff/logout"), 503, "store-unavailable")
    finally:
        redis_server.start()
    assert http.get(stack.bff_url + "/bff/user").status_code == 200
