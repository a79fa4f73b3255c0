"""Weaknesses an outside review found, each closed and pinned by a test that fails without its fix."""

from __future__ import annotations

import json
import re
import socket
import typing as t
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import redis
import requests

from tests.conftest import Stack, StackFactory
from tests.support.browser import follow, login, submit_form
from tests.support.problems import assert_problem, assert_sent_back
from tests.support.rawhttp import raw_request
from tests.support.upstream import RecordingUpstream, Reply
from tests.test_connect import consent, cross_site_get, start

ANONYMOUS_REQUESTS = 1000

# --- 1. Anonymous requests create no server-side state -------------------------------------------

ANONYMOUS = [
    ("GET", "/bff/login", None),
    ("GET", "/bff/login?returnTo=/settings&prompt=login", None),
    ("GET", "/bff/callback?code=abc&state=" + "s" * 30, None),
    ("GET", "/bff/callback?error=access_denied&state=" + "s" * 30, None),
    ("GET", "/bff/user", None),
    ("GET", "/bff/sessions", None),
    ("DELETE", "/bff/sessions/abc", None),
    ("POST", "/bff/logout", None),
    ("GET", "/bff/logout?sid=abc", None),
    ("POST", "/bff/connect", {"connection": "google-oauth2"}),
    ("GET", "/bff/connect/callback?state=" + "s" * 40 + "&connect_code=x", None),
    ("POST", "/bff/backchannel-logout", None),
    ("GET", "/me/v1/authentication-methods", None),
    ("POST", "/me/v1/authentication-methods", {"type": "totp"}),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/bff/static/bff.js", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ANONYMOUS, ids=[f"{m} {p}" for m, p, _ in ANONYMOUS])
def test_anonymous_requests_create_no_store_keys(stack: Stack, method: str, path: str, body: t.Any) -> None:
    client = stack.app.test_client()
    keys = redis.Redis.from_url(t.cast(str, stack.settings.session_store))
    # A stale cookie is as anonymous as none: it names no session.
    client.set_cookie(stack.settings.session_cookie_name, "A" * 43, domain="127.0.0.1")
    client.get("/bff/login")  # discovery and JWKS are fetched once, outside the count
    before = set(keys.keys())
    statuses = set()
    for _ in range(ANONYMOUS_REQUESTS):
        with client.open(path, method=method, json=body, headers={"X-CSRF": "1"},
                         base_url=stack.bff_url) as response:
            statuses.add(response.status_code)
    # Other tests' BFFs may still be announcing their liveness in this Redis; this one never started to.
    assert not stack.app.extensions["bff"].sessions.beating
    added = {key for key in set(keys.keys()) - before if not key.startswith(b"bff:k:instance:")}
    assert added == set(), f"{method} {path} answered {statuses} and left keys behind"
    keys.close()


# --- 2. A stranger cannot burn a login -----------------------------------------------------------


def _until_callback(http: requests.Session, stack: Stack) -> str:
    response = http.get(stack.bff_url + "/bff/login", allow_redirects=False)
    redirect = follow(http, response, until=stack.bff_url)
    if redirect.status_code == 200:  # no single sign-on session at the IdP yet: its login form
        response = submit_form(http, redirect, {"email": "alice@example.com", "password": "alice"})
        redirect = follow(http, response, until=stack.bff_url)
    return urljoin(redirect.url, redirect.headers["Location"])


@pytest.mark.parametrize("with_error", [False, True])
def test_a_stranger_opening_the_callback_leaves_the_victims_login_able_to_finish(
    stack: Stack, with_error: bool
) -> None:
    victim = stack.browser()
    callback = _until_callback(victim, stack)
    stranger = stack.browser()
    if with_error:
        state = parse_qs(urlsplit(callback).query)["state"][0]
        probe = stranger.get(stack.bff_url + "/bff/callback", params={"error": "access_denied", "state": state},
                             allow_redirects=False)
    else:
        probe = stranger.get(callback, allow_redirects=False)
    assert_sent_back(probe, "/", "login_failed")

    finished = victim.get(callback, allow_redirects=False)
    assert finished.status_code == 302, finished.text
    assert victim.get(stack.bff_url + "/bff/user").status_code == 200


def test_several_tabs_can_log_in_at_once(stack: Stack) -> None:
    http = stack.browser()
    first = _until_callback(http, stack)
    second = _until_callback(http, stack)
    assert http.get(second, allow_redirects=False).status_code == 302
    assert http.get(first, allow_redirects=False).status_code == 302
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


# --- 3. A new login ends the browser's previous session ------------------------------------------


def test_a_new_login_ends_the_previous_session_even_without_the_strict_cookie_on_the_callback(
    stack: Stack,
) -> None:
    http = stack.logged_in()
    name = stack.settings.session_cookie_name
    old_sid = http.cookies[name]
    record = stack.store.load(old_sid)
    assert record is not None
    old_refresh = stack.app.extensions["bff"].box.open(record.fields["rt"]).decode()

    callback = _until_callback(http, stack)  # /bff/login saw the session cookie
    back = cross_site_get(http, stack, callback)  # ... the cross-site return does not carry it

    assert back.status_code == 302, back.text
    new_sid = next(c.value for c in back.cookies if c.name == name)
    assert new_sid and new_sid != old_sid
    assert stack.store.load(old_sid) is None
    assert stack.idp.family_revoked(stack.idp.family_of(old_refresh))
    http.cookies.set(name, new_sid, domain="127.0.0.1", path="/")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


# --- 4. Bodies -----------------------------------------------------------------------------------


@pytest.fixture
def recorded(make_stack: StackFactory) -> t.Iterator[tuple[Stack, RecordingUpstream]]:
    upstream = RecordingUpstream()
    try:
        yield make_stack(my_account_url=upstream.url + "/me/v1", max_body_bytes=1024), upstream
    finally:
        upstream.stop()


def _chunks(total: int, size: int = 256) -> t.Iterator[bytes]:
    body = json.dumps({"type": "totp", "pad": "x" * total}).encode()
    for offset in range(0, len(body), size):
        yield body[offset:offset + size]


def test_a_chunked_body_over_the_limit_is_refused_whole_and_nothing_is_forwarded(
    recorded: tuple[Stack, RecordingUpstream],
) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/me/v1/authentication-methods", data=_chunks(5000),
                         headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert upstream.seen == []


def test_a_chunked_body_within_the_limit_is_forwarded_whole(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    expected = b"".join(_chunks(500))
    response = http.post(stack.bff_url + "/me/v1/authentication-methods", data=_chunks(500),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert upstream.seen[-1].body == expected


def test_a_declared_length_over_the_limit_is_refused_before_reading(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    response = http.post(stack.bff_url + "/me/v1/authentication-methods", data=b"x" * 2000,
                         headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert upstream.seen == []


def _raw_post(stack: Stack, http: requests.Session, head: list[str], payload: bytes) -> tuple[int, bytes]:
    parts = urlsplit(stack.bff_url)
    cookie = f"{stack.settings.session_cookie_name}={http.cookies[stack.settings.session_cookie_name]}"
    lines = ["POST /me/v1/authentication-methods HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "X-CSRF: 1", "Content-Type: application/json", f"Cookie: {cookie}", *head]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, received.partition(b"\r\n\r\n")[2]


def test_malformed_chunked_framing_is_a_400_problem(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    status, body = _raw_post(stack, http, ["Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n")
    assert status == 400
    assert json.loads(body)["type"] == "urn:bff:problem:malformed-body"
    assert upstream.seen == []


@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "identity"])
def test_transfer_codings_other_than_chunked_are_refused(
    recorded: tuple[Stack, RecordingUpstream], coding: str
) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    status, body = _raw_post(stack, http, [f"Transfer-Encoding: {coding}", "Content-Length: 2"], b"{}")
    assert status in (400, 501)  # the server may refuse the framing itself; never forwarded
    if status == 501:
        assert json.loads(body)["type"] == "urn:bff:problem:unsupported-transfer-coding"
    assert upstream.seen == []


def test_deeply_nested_json_is_a_400_problem_never_a_500(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    for path in ("/me/v1/authentication-methods", "/bff/connect"):
        response = http.post(stack.bff_url + path, data=b"[" * 40 + b"]" * 40,
                             headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "malformed-body")
    response = http.post(stack.bff_url + "/me/v1/authentication-methods", data=b'{"type": "totp"',
                         headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "malformed-body")
    assert upstream.seen == []


def test_json_too_deep_for_the_parser_itself_is_a_400_problem(stack: Stack) -> None:
    http = stack.logged_in()
    deep = b"[" * 30_000 + b"]" * 30_000  # within the default 64 KiB, far past Python's recursion limit
    for path in ("/me/v1/authentication-methods", "/bff/connect"):
        response = http.post(stack.bff_url + path, data=deep, headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "malformed-body")


def test_the_session_is_checked_before_the_body_is_read(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, _ = recorded
    parts = urlsplit(stack.bff_url)
    lines = ["POST /me/v1/authentication-methods HTTP/1.1", f"Host: {parts.netloc}", "X-CSRF: 1",
             "Content-Type: application/json", "Transfer-Encoding: chunked"]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        # Headers and the start of a body that never ends: only a BFF that waits for it would hang.
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + b"400\r\n" + b"x" * 100)
        received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 401"), received[:200]


# --- 5. Proxied responses are never cacheable ----------------------------------------------------


def test_proxied_responses_are_no_store_whatever_the_upstream_says(recorded: tuple[Stack, RecordingUpstream]) -> None:
    stack, upstream = recorded
    http = stack.logged_in()
    upstream.reply_next(Reply(headers=[("Content-Type", "application/json"),
                                       ("Cache-Control", "public, max-age=86400")]))
    response = http.get(stack.bff_url + "/me/v1/authentication-methods")
    assert response.status_code == 200
    assert response.raw.headers.getlist("Cache-Control") == ["no-store"]


# --- 6. The ID token (or any JWT) never reaches the browser --------------------------------------

_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def test_no_response_of_a_whole_journey_carries_anything_shaped_like_a_jwt(stack: Stack) -> None:
    http = stack.browser()
    seen: list[requests.Response] = []

    def record(response: requests.Response, *args: t.Any, **kwargs: t.Any) -> None:
        if response.url.startswith(stack.bff_url):
            seen.append(response)

    http.hooks["response"].append(record)
    assert login(http, stack.bff_url, return_to="/settings").status_code == 302
    assert http.get(stack.bff_url + "/bff/user").status_code == 200
    assert http.get(stack.bff_url + "/me/v1/authentication-methods").status_code == 200
    assert http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "totp"}).status_code in (200, 202)
    assert http.get(stack.bff_url + "/bff/sessions").status_code == 200
    back = cross_site_get(http, stack, consent(http, start(http, stack).json()["redirect_url"]))
    assert back.status_code == 302
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200
    assert login(http, stack.bff_url).status_code == 302
    link = http.get(stack.bff_url + "/bff/user").json()["logout_url"]
    assert http.get(stack.bff_url + link, allow_redirects=False).status_code == 302

    assert len(seen) >= 12
    for response in seen:
        headers = "\n".join(f"{name}: {value}" for name, value in response.raw.headers.items()).encode()
        assert not _JWT.search(headers), (response.url, headers)
        assert not _JWT.search(response.content), (response.url, response.content[:300])


# --- 7. Static files never reveal what lies outside BFF_STATIC_DIR -------------------------------


def test_paths_outside_the_static_dir_are_answered_like_missing_files(
    make_stack: StackFactory, tmp_path: t.Any
) -> None:
    spa = tmp_path / "spa"
    (spa / "assets").mkdir(parents=True)
    (spa / "index.html").write_text("<!doctype html><title>app</title>")
    (spa / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside")
    stack = make_stack(static_dir=str(spa))

    status, _, content = raw_request(stack.bff_url, "GET", b"/assets/app.js")
    assert (status, content) == (200, b"console.log(1)")
    missing = raw_request(stack.bff_url, "GET", b"/no-such-file.txt")
    assert missing[0] == 200 and b"<title>app</title>" in missing[2]
    for target in (b"/../secret.txt", b"/assets/../../secret.txt", b"/..%2fsecret.txt", b"/%2e%2e/secret.txt",
                   b"/assets/..%2f..%2fsecret.txt", b"/" + str(tmp_path / "secret.txt").encode()):
        status, _, content = raw_request(stack.bff_url, "GET", target)
        assert (status, content) == (missing[0], missing[2]), target
        assert b"outside" not in content


# --- 8. Connect flows per session are capped -----------------------------------------------------


def test_a_session_has_at_most_a_few_connect_flows_in_progress(stack: Stack) -> None:
    from bff.session import MAX_CONNECT_FLOWS

    http = stack.logged_in()
    started = [start(http, stack) for _ in range(MAX_CONNECT_FLOWS)]
    assert [response.status_code for response in started] == [200] * MAX_CONNECT_FLOWS
    assert_problem(start(http, stack), 429, "too-many-connect-flows")

    declined = cross_site_get(http, stack, consent(http, started[0].json()["redirect_url"], decision="deny"))
    assert declined.status_code == 302 and "error=access_denied" in declined.headers["Location"]
    assert start(http, stack).status_code == 200  # finishing one frees its place
    assert_problem(start(http, stack), 429, "too-many-connect-flows")
