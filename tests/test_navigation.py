"""Browser navigations never end on raw JSON: back to the SPA with an error, or a small page."""

from __future__ import annotations

import typing as t
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from tests.conftest import Stack
from tests.support.browser import follow, submit_form
from tests.support.problems import assert_error_page, assert_problem, assert_sent_back

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _browser(stack: Stack) -> requests.Session:
    http = stack.browser()
    http.headers.update(BROWSER)
    return http


def _until_callback(http: requests.Session, stack: Stack, return_to: str) -> str:
    response = http.get(stack.bff_url + "/bff/login", params={"returnTo": return_to}, allow_redirects=False)
    redirect = follow(http, response, until=stack.bff_url)
    if redirect.status_code == 200:
        response = submit_form(http, redirect, {"email": "alice@example.com", "password": "alice"})
        redirect = follow(http, response, until=stack.bff_url)
    return urljoin(redirect.url, redirect.headers["Location"])


def test_a_cancelled_login_returns_to_the_page_it_started_from_with_the_idps_error(stack: Stack) -> None:
    http = _browser(stack)
    started = http.get(stack.bff_url + "/bff/login", params={"returnTo": "/settings?tab=2"}, allow_redirects=False)
    state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
    cancelled = http.get(stack.bff_url + "/bff/callback", allow_redirects=False,
                         params={"error": "access_denied", "error_description": "User cancelled", "state": state})
    query = assert_sent_back(cancelled, "/settings", "access_denied")
    assert query["tab"] == "2"  # the page's own query is kept
    assert "User cancelled" in query["error_description"]


def test_an_expired_or_used_login_goes_home_with_an_error(stack: Stack) -> None:
    http = _browser(stack)
    callback = _until_callback(http, stack, "/settings")
    assert http.get(callback, allow_redirects=False).status_code == 302
    assert_sent_back(http.get(callback, allow_redirects=False), "/", "login_failed")
    asked = http.get(callback, headers={"Accept": "application/json"}, allow_redirects=False)
    assert_problem(asked, 400, "login-failed")


def test_a_store_outage_at_the_callback_returns_to_the_page_with_a_temporary_error(
    stack: Stack, redis_server: t.Any
) -> None:
    http = _browser(stack)
    callback = _until_callback(http, stack, "/settings")
    redis_server.stop()
    try:
        back = http.get(callback, allow_redirects=False)
    finally:
        redis_server.start()
    assert_sent_back(back, "/settings", "temporarily_unavailable")


def test_an_idp_outage_at_the_code_exchange_returns_to_the_page_with_a_temporary_error(stack: Stack) -> None:
    http = _browser(stack)
    callback = _until_callback(http, stack, "/settings")
    stack.idp.fail_next_token("temporarily_unavailable", 503)
    assert_sent_back(http.get(callback, allow_redirects=False), "/settings", "temporarily_unavailable")


def test_a_login_with_a_foreign_return_url_gets_a_page_that_reflects_nothing(stack: Stack) -> None:
    http = _browser(stack)
    hostile = "https://evil.example/<script>alert(1)</script>"
    page = assert_error_page(http.get(stack.bff_url + "/bff/login", params={"returnTo": hostile}), 400)
    assert "evil.example" not in page and "alert(1)" not in page
    assert 'href="/bff/login"' in page


def test_a_logout_link_without_a_session_goes_home(stack: Stack) -> None:
    response = _browser(stack).get(stack.bff_url + "/bff/logout", params={"sid": "x"}, allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"] == stack.bff_url + "/"


def test_a_connect_callback_that_is_not_this_browsers_goes_home_with_an_error(stack: Stack) -> None:
    http = _browser(stack)
    url = stack.bff_url + "/bff/connect/callback"
    back = http.get(url, params={"state": "s" * 40, "connect_code": "x"}, allow_redirects=False)
    assert_sent_back(back, "/", "connect_failed")
