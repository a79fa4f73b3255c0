"""The /me/v1 proxy: what it forwards, what it refuses (before any upstream call), and how."""

from __future__ import annotations

import json
import typing as t

import pyotp
import pytest
import requests

from tests.conftest import Stack, StackFactory
from tests.support.rawhttp import raw_request
from tests.support.upstream import RecordingUpstream, Reply
from tests.test_auth import assert_problem


def upstream_calls(stack: Stack) -> int:
    return sum(stack.idp.my_account.calls.values())


def token_calls(stack: Stack) -> int:
    return int(stack.idp.counters()["token_calls"])


# --- A logged-in session uses the My Account API through the BFF ------------------------------


def test_lists_authentication_methods_factors_and_connected_accounts(stack: Stack) -> None:
    http = stack.logged_in()
    methods = http.get(stack.bff_url + "/me/v1/authentication-methods")
    assert methods.status_code == 200
    assert methods.headers["Content-Type"] == "application/json"
    assert [m["type"] for m in methods.json()["authentication_methods"]] == ["password"]
    assert methods.headers["x-ratelimit-limit"]
    factors = http.get(stack.bff_url + "/me/v1/factors")
    assert factors.status_code == 200 and factors.json()["factors"]
    accounts = http.get(stack.bff_url + "/me/v1/connected-accounts/accounts")
    assert accounts.status_code == 200 and accounts.json()["accounts"] == []
    connections = http.get(stack.bff_url + "/me/v1/connected-accounts/connections")
    assert {c["name"] for c in connections.json()["connections"]} == {"google-oauth2", "github"}


def test_totp_enrollment_rename_and_delete_end_to_end(stack: Stack) -> None:
    http = stack.logged_in()
    started = http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "totp"})
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    assert location.startswith(stack.bff_url + "/me/v1/authentication-methods/totp%7C")
    enrollment = started.json()
    assert enrollment["barcode_uri"].startswith("otpauth://totp/")
    code = pyotp.TOTP(enrollment["manual_input_code"]).now()
    verified = http.post(
        location + "/verify",
        json={"auth_session": enrollment["auth_session"], "otp_code": code},
    )
    assert verified.status_code == 201, verified.text
    method_url = verified.headers["Location"]
    assert method_url.startswith(stack.bff_url + "/me/v1/authentication-methods/totp%7C")
    listed = http.get(stack.bff_url + "/me/v1/authentication-methods", params={"type": "totp"}).json()
    assert len(listed["authentication_methods"]) == 1
    renamed = http.patch(method_url, json={"name": "Work phone"})
    assert renamed.status_code == 200, renamed.text
    assert http.get(method_url).json()["name"] == "Work phone"
    assert http.delete(method_url).status_code == 204
    assert http.get(method_url).status_code == 404


def test_upstream_errors_pass_through_unchanged(stack: Stack) -> None:
    http = stack.logged_in()
    response = http.get(stack.bff_url + "/me/v1/authentication-methods/totp%7Cmissing")
    assert response.status_code == 404
    body = response.json()
    assert body["type"].startswith("https://auth0.com/api-errors/")
    assert response.headers["Content-Type"].startswith("application/")


def test_rate_limited_answers_pass_retry_after_and_ratelimit_headers(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200
    stack.idp.my_account.fail_next(429, headers={"Retry-After": "7", "x-ratelimit-limit": "25",
                                                 "x-ratelimit-remaining": "0", "x-ratelimit-reset": "123"})
    limited = http.get(stack.bff_url + "/me/v1/factors")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.headers["x-ratelimit-remaining"] == "0"


def test_cached_token_serves_repeated_calls_without_the_token_endpoint(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200
    before = token_calls(stack)
    for _ in range(5):
        assert http.get(stack.bff_url + "/me/v1/authentication-methods").status_code == 200
    assert token_calls(stack) == before


def test_upstream_401_refreshes_once_and_retries(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200
    before = token_calls(stack)
    stack.idp.my_account.fail_next(401)
    response = http.get(stack.bff_url + "/me/v1/factors")
    assert response.status_code == 200
    assert token_calls(stack) == before + 1


def test_repeated_upstream_401_ends_in_a_401_problem(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200
    stack.idp.my_account.fail_next(401)
    stack.idp.my_account.fail_next(401)
    body = assert_problem(http.get(stack.bff_url + "/me/v1/factors"), 401, "login-required")
    assert body["login_url"].startswith("/bff/login?returnTo=")


# --- Refusals happen before any token work or upstream call -------------------------------------

REJECTED_TARGETS = [
    (b"/me/v1/users", 404),
    (b"/me/v1/connected-accounts/connect", 404),
    (b"/me/v1/connected-accounts/complete", 404),
    (b"/me/v1/authentication-methods/../factors", 400),
    (b"/me/v1/./factors", 400),
    (b"/me/v1//factors", 400),
    (b"/me/v1/factors/", 400),
    (b"/me/v1/authentication-methods/a%2F..%2Ffactors", 400),
    (b"/me/v1/authentication-methods/a%2f..%2ffactors", 400),
    (b"/me/v1/authentication-methods/a%5Cb", 400),
    (b"/me/v1/authentication-methods/%2E%2E", 400),
    (b"/me/v1/authentication-methods/a%252Fb", 400),
    (b"/me/v1/authentication-methods/a\\b", 400),
    (b"/me/v1/authentication-methods/a%00b", 400),
    (b"/me/v1/authentication-methods/a%0Ab", 400),
    (b"/me/v1/authentication-methods/a\xc3\xa9", 400),
    (b"/me/v1/authentication-methods?bogus=1", 400),
    (b"/me/v1/connected-accounts/accounts?take=abc", 400),
    (b"/me/v1", 404),
    (b"/me/v2/factors", 404),
]


@pytest.mark.parametrize(("target", "status"), REJECTED_TARGETS)
def test_rejected_paths_never_reach_the_upstream(stack: Stack, target: bytes, status: int) -> None:
    http = stack.logged_in()
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies if c.domain.startswith("127"))
    before_upstream, before_tokens = upstream_calls(stack), token_calls(stack)
    code, headers, body = raw_request(stack.bff_url, "GET", target, {"X-CSRF": "1", "Cookie": cookie})
    assert code == status, body
    if code != 400 or headers.get("content-type", "").startswith("application/problem+json"):
        assert headers["content-type"].startswith("application/problem+json")
    assert upstream_calls(stack) == before_upstream
    assert token_calls(stack) == before_tokens


def test_wrong_method_is_not_found(stack: Stack) -> None:
    http = stack.logged_in()
    before = upstream_calls(stack)
    assert_problem(http.put(stack.bff_url + "/me/v1/factors", json={}), 404, "route-not-allowed")
    assert_problem(http.delete(stack.bff_url + "/me/v1/factors"), 404, "route-not-allowed")
    assert upstream_calls(stack) == before


def test_ids_with_encoded_pipe_are_forwarded_unmodified(make_stack: StackFactory) -> None:
    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies if c.domain.startswith("127"))
        for target in (b"/me/v1/authentication-methods/passkey%7Cnew", b"/me/v1/authentication-methods/totp|dev_1"):
            code, _, _ = raw_request(stack.bff_url, "GET", target, {"X-CSRF": "1", "Cookie": cookie})
            assert code == 200
        assert upstream.seen[-2].raw_target == "/me/v1/authentication-methods/passkey%7Cnew"
        assert upstream.seen[-1].raw_target in (
            "/me/v1/authentication-methods/totp|dev_1", "/me/v1/authentication-methods/totp%7Cdev_1")
    finally:
        upstream.stop()


def test_missing_csrf_header_is_refused_without_upstream_call(stack: Stack) -> None:
    http = stack.logged_in()
    before_upstream, before_tokens = upstream_calls(stack), token_calls(stack)
    assert_problem(http.get(stack.bff_url + "/me/v1/factors", headers={"X-CSRF": None}), 403, "csrf")
    assert_problem(http.get(stack.bff_url + "/me/v1/factors", headers={"X-CSRF": "0"}), 403, "csrf")
    assert upstream_calls(stack) == before_upstream and token_calls(stack) == before_tokens


def test_foreign_origin_is_refused_without_upstream_call(stack: Stack) -> None:
    http = stack.logged_in()
    before = upstream_calls(stack)
    response = http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "totp"},
                         headers={"Origin": "http://127.0.0.1:1"})
    assert_problem(response, 403, "csrf")
    cross_site = http.get(stack.bff_url + "/me/v1/factors", headers={"Sec-Fetch-Site": "cross-site"})
    assert_problem(cross_site, 403, "csrf")
    assert upstream_calls(stack) == before


def test_no_session_is_a_401_problem_without_upstream_call(stack: Stack) -> None:
    http = stack.browser()
    before_upstream, before_tokens = upstream_calls(stack), token_calls(stack)
    body = assert_problem(http.get(stack.bff_url + "/me/v1/factors"), 401, "not-authenticated")
    assert body["login_url"] == "/bff/login"
    assert upstream_calls(stack) == before_upstream and token_calls(stack) == before_tokens


def test_oversized_body_is_refused_without_upstream_call(make_stack: StackFactory) -> None:
    stack = make_stack(max_body_bytes=1024)
    http = stack.logged_in()
    before = upstream_calls(stack)
    response = http.post(stack.bff_url + "/me/v1/authentication-methods",
                         data=b'{"type":"email","email":"' + b"a" * 2000 + b'"}',
                         headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert upstream_calls(stack) == before


def test_wrong_content_type_or_unexpected_body_is_refused(stack: Stack) -> None:
    http = stack.logged_in()
    before = upstream_calls(stack)
    form = http.post(stack.bff_url + "/me/v1/authentication-methods", data={"type": "totp"})
    assert_problem(form, 415, "unsupported-media-type")
    body_on_get = http.get(stack.bff_url + "/me/v1/factors", data=b"x")
    assert_problem(body_on_get, 400, "unexpected-body")
    assert upstream_calls(stack) == before


# --- Header policy ------------------------------------------------------------------------------


def test_only_allowlisted_request_headers_are_forwarded(make_stack: StackFactory) -> None:
    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        response = http.get(
            stack.bff_url + "/me/v1/factors",
            headers={
                "Accept": "application/json",
                "Accept-Language": "fr",
                "If-None-Match": '"abc"',
                "X-Request-Id": "req-1",
                "User-Agent": "Browser/1.0",
                "Authorization": "Bearer from-the-browser",
                "X-Forwarded-For": "1.2.3.4",
                "X-Custom": "nope",
                "Connection": "keep-alive, X-Custom",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
            },
        )
        assert response.status_code == 200
        seen = upstream.seen[-1].headers
        assert seen["accept"] == "application/json"
        assert seen["accept-language"] == "fr"
        assert seen["if-none-match"] == '"abc"'
        assert seen["x-request-id"] == "req-1"
        assert seen["user-agent"] == "Browser/1.0"
        assert seen["authorization"].startswith("Bearer ey")
        for forbidden in ("cookie", "x-csrf", "x-forwarded-for", "x-custom", "keep-alive", "te"):
            assert forbidden not in seen, forbidden
    finally:
        upstream.stop()


def test_response_headers_are_filtered_and_location_rewritten(make_stack: StackFactory) -> None:
    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        upstream.reply_next(Reply(status=202, body=b'{"auth_session":"s"}', headers=[
            ("Content-Type", "application/json"),
            ("Location", upstream.url + "/me/v1/authentication-methods/passkey%7Cnew"),
            ("Set-Cookie", "upstream=1; Path=/"),
            ("Connection", "close"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Internal", "secret"),
            ("x-ratelimit-remaining", "24"),
        ]))
        response = http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "passkey"})
        assert response.status_code == 202
        # An absolute URL, as the spec declares Location a URI, on the BFF's origin.
        assert response.headers["Location"] == stack.bff_url + "/me/v1/authentication-methods/passkey%7Cnew"
        assert "upstream" not in response.headers.get("Set-Cookie", "")
        assert "Proxy-Authenticate" not in response.headers and "X-Internal" not in response.headers
        assert response.headers["x-ratelimit-remaining"] == "24"
        assert response.json() == {"auth_session": "s"}
        upstream.reply_next(Reply(status=302, body=b"", headers=[("Location", "https://elsewhere.example/x")]))
        elsewhere = http.get(stack.bff_url + "/me/v1/factors", allow_redirects=False)
        assert elsewhere.status_code == 302 and "Location" not in elsewhere.headers
    finally:
        upstream.stop()


def test_unreachable_upstream_is_a_502_problem_and_keeps_the_session(make_stack: StackFactory) -> None:
    stack = make_stack(my_account_url="http://127.0.0.1:9/me/v1")
    http = stack.logged_in()
    assert_problem(http.get(stack.bff_url + "/me/v1/factors"), 502, "upstream-unavailable")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_no_token_reaches_the_browser(stack: Stack) -> None:
    http = stack.logged_in()
    responses: list[requests.Response] = [
        http.get(stack.bff_url + "/bff/user"),
        http.get(stack.bff_url + "/me/v1/authentication-methods"),
        http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "totp"}),
    ]
    record_keys = t.cast(t.Any, stack.store).load
    del record_keys
    for response in responses:
        text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
        assert "eyJ" not in text  # no JWT (access or ID token) in any body or header
    for cookie in http.cookies:
        assert "eyJ" not in (cookie.value or "")


INSUFFICIENT = {"type": "https://auth0.com/api-errors/A0E-403-0002", "status": 403,
                "title": "Forbidden", "detail": "Insufficient scope"}


def test_insufficient_scope_upstream_retries_once_then_asks_for_step_up(stack: Stack) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200
    stack.idp.my_account.fail_next(403, INSUFFICIENT)
    assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200  # a fresh token fixed it
    before = token_calls(stack)
    stack.idp.my_account.fail_next(403, INSUFFICIENT)
    stack.idp.my_account.fail_next(403, INSUFFICIENT)
    body = assert_problem(http.get(stack.bff_url + "/me/v1/factors", headers={"Referer": stack.bff_url + "/mfa"}),
                          401, "step-up-required")
    assert body["login_url"].startswith("/bff/login?returnTo=%2Fmfa&acr_values=")
    assert body["required_scope"] == "read:me:factors"
    assert token_calls(stack) == before + 1
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_other_upstream_403_pass_through_unchanged(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.my_account.fail_next(403, {"type": "https://auth0.com/api-errors/A0E-403-0001", "status": 403,
                                         "title": "Forbidden", "detail": "nope"})
    response = http.get(stack.bff_url + "/me/v1/factors")
    assert response.status_code == 403
    assert response.json()["detail"] == "nope"


def _wsgi_get(app: t.Any, path: str, *, raw: bool) -> tuple[int, dict[str, t.Any]]:
    """Call the app as a WSGI server would: with the raw target (gunicorn's ``RAW_URI``), or, like
    servers that hand over only the decoded ``PATH_INFO``, without it."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(path=path, headers={"X-CSRF": "1"}).get_environ()
    environ.pop("RAW_URI", None)
    environ.pop("REQUEST_URI", None)
    if raw:
        environ["RAW_URI"] = path
    body, status, _headers = run_wsgi_app(app, environ)
    return int(status.split()[0]), json.loads(b"".join(body))


def test_a_server_without_the_raw_request_target_is_refused_not_served(stack: Stack) -> None:
    status, problem = _wsgi_get(stack.app, "/healthz", raw=False)
    assert status == 500 and problem["type"] == "urn:bff:problem:server-unsupported"
    status, problem = _wsgi_get(stack.app, "/me/v1/factors", raw=False)
    assert status == 500 and problem["type"] == "urn:bff:problem:server-unsupported"
    status, _ = _wsgi_get(stack.app, "/healthz", raw=True)
    assert status == 200
