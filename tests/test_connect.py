"""Connected accounts through the BFF: /bff/connect -> consent page -> /bff/connect/callback."""

from __future__ import annotations

import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bff.emulator.myaccount_spec import INSUFFICIENT_SCOPE_CODE, error_body
from tests.conftest import TOKEN_BINDINGS, Stack
from tests.support.browser import login, submit_form
from tests.support.problems import assert_problem, assert_sent_back


@pytest.fixture(params=TOKEN_BINDINGS)
def token_binding(request: pytest.FixtureRequest) -> str:
    """Every test here holds with Bearer tokens and with DPoP-bound ones."""
    return str(request.param)


def returned(response: requests.Response) -> tuple[str, str]:
    """Where a failed completion sent the browser back to, and the ``error`` it carries; it always
    carries a short ``error_description`` too."""
    location = urlsplit(response.headers["Location"])
    query = parse_qs(location.query)
    assert query.get("error_description"), location
    return location.path, query["error"][0]

CONNECT_CALLS = "POST /connected-accounts/connect"


def start(http: requests.Session, stack: Stack, **body: t.Any) -> requests.Response:
    return http.post(stack.bff_url + "/bff/connect", json={"connection": "google-oauth2", **body})


def started_url(http: requests.Session, stack: Stack, **body: t.Any) -> str:
    response = start(http, stack, **body)
    assert response.status_code == 200, response.text
    return t.cast(str, response.json()["redirect_url"])


def consent(http: requests.Session, redirect_url: str, decision: str = "allow") -> str:
    """Press Allow or Deny on the provider's consent page; returns the callback URL it redirects to."""
    page = http.get(redirect_url, timeout=10)
    assert page.status_code == 200, page.text
    answer = submit_form(http, page, {}, button=decision)
    assert answer.status_code == 302, answer.text
    return t.cast(str, answer.headers["Location"])


def cross_site_get(http: requests.Session, stack: Stack, url: str) -> requests.Response:
    """What a browser sends on a top-level navigation from another site: no SameSite=Strict cookie."""
    navigation = requests.Session()
    navigation.trust_env = False
    for cookie in http.cookies:
        if cookie.name != stack.settings.session_cookie_name:
            navigation.cookies.set_cookie(cookie)
    return navigation.get(url, allow_redirects=False, timeout=10)


def accounts(http: requests.Session, stack: Stack) -> list[dict[str, t.Any]]:
    response = http.get(stack.bff_url + "/me/v1/connected-accounts/accounts")
    assert response.status_code == 200, response.text
    return t.cast(list[dict[str, t.Any]], response.json()["accounts"])


def test_connect_consent_callback_links_the_account_which_can_then_be_deleted(stack: Stack) -> None:
    http = stack.logged_in()
    redirect_url = started_url(http, stack, returnTo="/accounts?tab=linked")
    assert redirect_url.startswith(stack.emulator.url + "/connect?ticket=")

    callback = consent(http, redirect_url)
    assert callback.startswith(stack.bff_url + "/bff/connect/callback?")
    back = cross_site_get(http, stack, callback)

    assert back.status_code == 302, back.text
    assert back.headers["Location"] == "/accounts?tab=linked&connected=google-oauth2"
    assert back.headers["Cache-Control"] == "no-store"
    linked = accounts(http, stack)
    assert [account["connection"] for account in linked] == ["google-oauth2"]
    deleted = http.delete(stack.bff_url + "/me/v1/connected-accounts/accounts/" + linked[0]["id"])
    assert deleted.status_code == 204
    assert accounts(http, stack) == []


def test_the_flow_uses_pkce_and_keeps_the_auth_session_sealed(stack: Stack) -> None:
    http = stack.logged_in()
    redirect_url = started_url(http, stack)
    requests_ = list(stack.idp.my_account._connect_requests.values())
    assert len(requests_) == 1
    upstream = requests_[0]
    assert upstream.code_challenge and len(upstream.code_challenge) == 43
    assert upstream.redirect_uri == stack.bff_url + "/bff/connect/callback"
    state = t.cast(str, upstream.state)
    stored = stack.store.get("connect:" + state)
    assert stored is not None and upstream.auth_session.encode() not in stored
    assert "auth_session" not in redirect_url and upstream.auth_session not in redirect_url


def test_callback_also_completes_when_the_session_cookie_is_sent(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack, connection="github", returnTo="/x#frag"))
    back = http.get(callback, allow_redirects=False)
    assert back.status_code == 302
    assert back.headers["Location"] == "/x?connected=github#frag"


def test_requested_scopes_and_authorization_params_reach_the_provider(stack: Stack) -> None:
    http = stack.logged_in()
    scopes = ["openid", "https://www.googleapis.com/auth/calendar"]
    params = {"prompt": "consent", "login_hint": "alice@example.com", "max_age": 0, "ui_locales": "en fr-CA"}
    callback = consent(http, started_url(http, stack, scopes=scopes, authorization_params=params))
    assert cross_site_get(http, stack, callback).status_code == 302
    assert accounts(http, stack)[0]["scopes"] == scopes


def test_denied_consent_redirects_with_access_denied_and_ends_the_flow(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack, returnTo="/accounts"), decision="deny")
    back = cross_site_get(http, stack, callback)
    assert back.status_code == 302
    assert returned(back) == ("/accounts", "access_denied")
    assert accounts(http, stack) == []
    assert_sent_back(cross_site_get(http, stack, callback), "/", "connect_failed")


def test_replayed_callback_is_rejected(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack))
    assert cross_site_get(http, stack, callback).status_code == 302
    assert_sent_back(cross_site_get(http, stack, callback), "/", "connect_failed")
    assert len(accounts(http, stack)) == 1


def test_forged_or_missing_state_is_rejected(stack: Stack) -> None:
    http = stack.logged_in()
    consent(http, started_url(http, stack))
    url = stack.bff_url + "/bff/connect/callback"
    forged = {"connect_code": "x", "state": "forged-state-value-000000"}
    assert_sent_back(http.get(url, params=forged, allow_redirects=False), "/", "connect_failed")
    assert_sent_back(http.get(url, params={"connect_code": "x"}, allow_redirects=False), "/", "connect_failed")
    # A caller that asks for JSON gets the problem itself.
    asked = http.get(url, params=forged, headers={"Accept": "application/json"}, allow_redirects=False)
    assert_problem(asked, 400, "connect-failed")


def test_callback_planted_in_another_browser_links_nothing_there(stack: Stack) -> None:
    attacker = stack.logged_in()
    callback = consent(attacker, started_url(attacker, stack))
    victim = stack.logged_in()

    assert_sent_back(victim.get(callback, allow_redirects=False), "/", "connect_failed")
    assert_sent_back(cross_site_get(victim, stack, callback), "/", "connect_failed")

    assert accounts(victim, stack) == []
    # The foreign attempts did not burn the flow: its owner still completes it.
    assert cross_site_get(attacker, stack, callback).status_code == 302


def test_callback_for_a_session_that_was_replaced_is_rejected(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack))
    login(http, stack.bff_url)  # a new session in the same browser: the flow belonged to the old one
    assert_sent_back(http.get(callback, allow_redirects=False), "/", "connect_failed")
    assert accounts(http, stack) == []


def test_callback_after_the_session_ended_redirects_with_login_required(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack, returnTo="/a"))
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200
    back = cross_site_get(http, stack, callback)
    assert back.status_code == 302 and returned(back) == ("/a", "login_required")


def test_expired_flow_is_rejected(stack: Stack) -> None:
    stack.idp.my_account.connect_lifetime = 1  # the BFF keeps a flow only for the API's expires_in
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack))
    # The flow's lapse is the store's; wait for it rather than sleeping past it, within the same 1.3 s.
    flow = "connect:" + parse_qs(urlsplit(callback).query)["state"][0]
    deadline = time.monotonic() + 1.3
    while stack.store.get(flow) is not None:
        assert time.monotonic() < deadline, "the BFF kept the connect flow beyond the API's expires_in"
        time.sleep(0.01)
    assert_sent_back(cross_site_get(http, stack, callback), "/", "connect_failed")


def test_two_flows_started_in_parallel_both_complete(stack: Stack) -> None:
    http = stack.logged_in()
    google = started_url(http, stack, returnTo="/tab-1")
    github = started_url(http, stack, connection="github", returnTo="/tab-2")
    google_callback = consent(http, google)
    github_callback = consent(http, github)

    assert cross_site_get(http, stack, github_callback).headers["Location"] == "/tab-2?connected=github"
    assert cross_site_get(http, stack, google_callback).headers["Location"] == "/tab-1?connected=google-oauth2"
    assert sorted(account["connection"] for account in accounts(http, stack)) == ["github", "google-oauth2"]


def test_a_completed_request_answered_409_redirects_with_already_connected(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack, returnTo="/accounts"))
    stack.idp.my_account.fail_next(409)
    back = cross_site_get(http, stack, callback)
    assert back.status_code == 302
    assert returned(back) == ("/accounts", "already_connected")


def test_an_upstream_outage_at_completion_redirects_with_temporarily_unavailable(stack: Stack) -> None:
    http = stack.logged_in()
    callback = consent(http, started_url(http, stack))
    stack.idp.my_account.fail_next(503)
    assert returned(cross_site_get(http, stack, callback)) == ("/", "temporarily_unavailable")


@pytest.mark.parametrize(
    "headers",
    [{"X-CSRF": ""}, {"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["no-csrf-header", "foreign-origin", "cross-site-fetch"],
)
def test_a_cross_site_page_cannot_start_a_connection(stack: Stack, headers: dict[str, str]) -> None:
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/bff/connect", json={"connection": "google-oauth2"}, headers=headers)
    assert_problem(response, 403, "csrf")
    assert stack.idp.my_account.calls[CONNECT_CALLS] == 0
    assert "Set-Cookie" not in response.headers


def test_starting_needs_a_session(stack: Stack) -> None:
    response = start(stack.browser(), stack)
    assert_problem(response, 401, "not-authenticated")
    assert stack.idp.my_account.calls[CONNECT_CALLS] == 0


@pytest.mark.parametrize("return_to", ["//evil.example", "https://evil.example/", "/%5Cevil", "/ok\r\nX: y"])
def test_a_non_local_return_url_is_refused(stack: Stack, return_to: str) -> None:
    http = stack.logged_in()
    assert_problem(start(http, stack, returnTo=return_to), 400, "invalid-return-url")
    assert stack.idp.my_account.calls[CONNECT_CALLS] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"authorization_params": {"id_token_hint": "eyJ.x.y"}},
        {"authorization_params": {"redirect_uri": "https://evil.example/"}},
        {"authorization_params": {"max_age": "10"}},
        {"authorization_params": {"max_age": -1}},
        {"authorization_params": {"prompt": "bogus"}},
        {"authorization_params": {"display": "fullscreen"}},
        {"authorization_params": {"ui_locales": "english"}},
        {"authorization_params": {"acr_values": "a\nb"}},
        {"authorization_params": ["prompt"]},
        {"scopes": "openid email"},
        {"scopes": []},
        {"scopes": ["openid", "openid"]},
        {"scopes": ["two words"]},
        {"connection": ""},
        {"connection": "../admin"},
        {"connection": 7},
        {"returnTo": 7},
        {"redirect_uri": "https://evil.example/"},
        {"state": "mine"},
    ],
)
def test_malformed_or_disallowed_requests_are_400(stack: Stack, body: dict[str, t.Any]) -> None:
    http = stack.logged_in()
    assert_problem(start(http, stack, **body), 400, "invalid-connect-request")
    assert stack.idp.my_account.calls[CONNECT_CALLS] == 0


def test_a_body_that_is_not_json_is_415(stack: Stack) -> None:
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/bff/connect", data={"connection": "google-oauth2"})
    assert_problem(response, 415, "unsupported-media-type")


def test_an_unknown_connection_is_a_400_from_the_api(stack: Stack) -> None:
    http = stack.logged_in()
    body = assert_problem(start(http, stack, connection="slack"), 400, "connect-rejected")
    assert "slack" in body["detail"]


def test_insufficient_scope_twice_from_the_api_asks_for_step_up(stack: Stack) -> None:
    http = stack.logged_in()
    refused = error_body(403, "insufficient_scope", code=INSUFFICIENT_SCOPE_CODE)
    stack.idp.my_account.fail_next(403, refused)
    stack.idp.my_account.fail_next(403, refused)  # the retry with a fresh token is refused too
    body = assert_problem(start(http, stack, returnTo="/accounts"), 401, "step-up-required")
    query = parse_qs(urlsplit(body["login_url"]).query)
    assert query["returnTo"] == ["/accounts"] and "acr_values" in query


def test_insufficient_scope_once_is_retried_with_a_fresh_token_like_the_proxy(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.my_account.fail_next(403, error_body(403, "insufficient_scope", code=INSUFFICIENT_SCOPE_CODE))
    before = stack.idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0)
    assert start(http, stack).status_code == 200
    # The cached token was refused, so exactly one more exchange than the first one minted.
    assert stack.idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0) == before + 2


def test_the_binding_cookie_survives_the_cross_site_return_but_not_scripts(stack: Stack) -> None:
    http = stack.logged_in()
    response = start(http, stack)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("bff-connect=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Max-Age=300" in cookie
