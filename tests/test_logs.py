"""Logs: one access line per request, event lines for what matters, and not one secret in any of them."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import typing as t
from urllib.parse import parse_qsl, urlsplit

import hypothesis
import pytest
import requests

from bff import logs
from bff.logs import JsonFormatter, TextFormatter, scrub, session_tag
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, Stack
from tests.support.browser import bff_session, login
from tests.support.processes import BffProcess
from tests.support.redis_server import free_port
from tests.support.upstream import RecordingUpstream
from tests.test_connect import consent, cross_site_get, start
from tests.test_step_up import EMAIL, PASSWORD, otp, sensitive_call, step_up

METHODS = "/me/v1/authentication-methods"


# --- Capturing what is logged -------------------------------------------------------------------


class Captured:
    """Every record logged in this process at the production level (INFO), formatted as in production.

    Except the ``werkzeug`` logger's: it is the request log of the test's own HTTP servers (the threads
    that serve the BFF and the emulator here), which production does not run (gunicorn serves the BFF,
    with its access log off; ``bff demo`` keeps werkzeug's to warnings). What a real server writes is
    checked whole against ``bff serve`` below.
    """

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def lines(self) -> list[dict[str, t.Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line]

    def events(self, name: str) -> list[dict[str, t.Any]]:
        return [line for line in self.lines() if line["event"] == name]

    def wait_for(self, predicate: t.Callable[[dict[str, t.Any]], bool], timeout: float = 5.0) -> dict[str, t.Any]:
        """The first line that satisfies ``predicate``; access lines are written once a response is sent."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.lines() if predicate(line)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError("no such log line in:\n" + self.text[-3000:])
            time.sleep(0.02)

    def access_line(self, route: str, status: int | None = None) -> dict[str, t.Any]:
        return self.wait_for(lambda line: line["event"] == "request" and line["route"] == route
                             and (status is None or line["status"] == status))


@pytest.fixture
def captured() -> t.Iterator[Captured]:
    capture = Captured()
    handler = logging.StreamHandler(capture.buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(lambda record: record.name != "werkzeug")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def session_id(stack: Stack, http: requests.Session) -> str:
    return t.cast(str, http.cookies[stack.settings.session_cookie_name])


def tag(stack: Stack, sid: str) -> str:
    return session_tag(stack.app.extensions["bff"].box.mac, sid)


# --- The access line ---------------------------------------------------------------------------


def test_an_access_line_names_the_route_template_and_the_session_by_a_keyed_tag(
    stack: Stack, captured: Captured
) -> None:
    http = stack.logged_in()
    sid = session_id(stack, http)
    methods = http.get(stack.bff_url + METHODS).json()
    method_id = methods[0]["id"] if isinstance(methods, list) else methods["authentication_methods"][0]["id"]

    response = http.get(stack.bff_url + METHODS + "/" + method_id)

    assert response.status_code == 200, response.text
    line = captured.access_line("/me/v1/authentication-methods/{authentication_method_id}")
    assert line["method"] == "GET" and line["status"] == 200 and line["level"] == "info"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= line["upstream_ms"] >= 0
    assert line["upstream_status"] == "200"
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert line["session"] == tag(stack, sid) and len(line["session"]) == 12
    assert method_id not in captured.text and sid not in captured.text
    callback = captured.access_line("/bff/callback", 302)
    assert "?" not in json.dumps(callback) and "code" not in callback


def test_an_unmatched_path_and_a_refused_proxy_path_are_named_without_the_path(
    stack: Stack, captured: Captured
) -> None:
    http = stack.logged_in()
    assert http.get(stack.bff_url + "/nowhere/secret-looking-path?token=abc").status_code == 404
    assert http.get(stack.bff_url + "/me/v1/not-in-the-spec/xyz?q=1").status_code == 404

    assert captured.access_line("unmatched", 404)["problem"] == "not-found"
    assert captured.access_line("/me/{rest}", 404)["problem"] == "route-not-allowed"
    assert "secret-looking-path" not in captured.text and "not-in-the-spec" not in captured.text


def test_a_safe_request_id_is_echoed_logged_and_forwarded_and_any_other_is_replaced(
    make_stack: t.Any, captured: Captured
) -> None:
    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        kept = http.get(stack.bff_url + "/me/v1/factors", headers={"X-Request-Id": "req-1.abc_D"})
        replaced = http.get(stack.bff_url + "/me/v1/factors", headers={"X-Request-Id": "a b <script>"})
        too_long = http.get(stack.bff_url + "/me/v1/factors", headers={"X-Request-Id": "x" * 65})
        generated = http.get(stack.bff_url + "/me/v1/factors")

        assert kept.headers["X-Request-Id"] == "req-1.abc_D"
        assert upstream.seen[0].headers["x-request-id"] == "req-1.abc_D"
        for index, response in enumerate((replaced, too_long, generated), start=1):
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
            assert upstream.seen[index].headers["x-request-id"] == response.headers["X-Request-Id"]
        expected = {r.headers["X-Request-Id"] for r in (kept, replaced, too_long, generated)}
        captured.wait_for(lambda line: line.get("request_id") == generated.headers["X-Request-Id"]
                          and line["event"] == "request")
        ids = {line["request_id"] for line in captured.lines()
               if line["event"] == "request" and line.get("route") == "/me/v1/factors"}
        assert ids == expected
        assert "<script>" not in captured.text
    finally:
        upstream.stop()


def test_the_upstream_request_id_never_replaces_the_bffs_own(make_stack: t.Any) -> None:
    from tests.support.upstream import Reply

    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        upstream.reply_next(Reply(headers=[("Content-Type", "application/json"), ("X-Request-Id", "theirs")]))
        response = http.get(stack.bff_url + "/me/v1/factors", headers={"X-Request-Id": "ours"})
        assert response.raw.headers.getlist("X-Request-Id") == ["ours"]
    finally:
        upstream.stop()


# --- Event lines -------------------------------------------------------------------------------


def test_login_token_exchange_logout_and_session_end_are_event_lines_of_their_request(
    stack: Stack, captured: Captured
) -> None:
    http = stack.logged_in()
    sid = session_id(stack, http)
    assert http.get(stack.bff_url + METHODS).status_code == 200
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200

    callback = captured.access_line("/bff/callback", 302)
    login_event = captured.events("login")[0]
    assert login_event["result"] == "ok" and login_event["session"] == tag(stack, sid)
    assert login_event["request_id"] == callback["request_id"]
    assert captured.events("session.start")[0]["session"] == tag(stack, sid)

    read = captured.access_line(METHODS, 200)
    exchange = captured.events("token.exchange")[0]
    assert exchange["result"] == "ok" and exchange["token_set"] == "read"
    assert exchange["duration_ms"] >= 0 and exchange["lock_wait_ms"] >= 0
    assert exchange["request_id"] == read["request_id"] and exchange["session"] == tag(stack, sid)

    logout = captured.access_line("/bff/logout", 200)
    assert captured.events("logout")[0]["request_id"] == logout["request_id"]
    ended = captured.events("session.end")[0]
    assert ended["reason"] == "logout" and ended["session"] == tag(stack, sid)
    assert ended["request_id"] == logout["request_id"]


def test_a_back_channel_logout_is_an_event_naming_how_many_sessions_ended(stack: Stack, captured: Captured) -> None:
    http = stack.logged_in()
    sid = session_id(stack, http)
    sub = http.get(stack.bff_url + "/bff/user").json()["claims"]["sub"]
    assert stack.idp.logout_user(sub)
    stack.idp.wait_for_backchannel(1)

    event = captured.wait_for(lambda line: line["event"] == "backchannel_logout")
    assert event["result"] == "ok" and event["sessions_ended"] == 1
    ended = captured.wait_for(lambda line: line["event"] == "session.end")
    assert ended["reason"] == "backchannel-logout" and ended["session"] == tag(stack, sid)
    assert captured.access_line("/bff/backchannel-logout", 200)["request_id"] == event["request_id"]

    assert requests.post(stack.bff_url + "/bff/backchannel-logout", data={"logout_token": "x.y.z"},
                         timeout=10).status_code == 400
    assert captured.wait_for(lambda line: line["event"] == "backchannel_logout" and line["result"] == "invalid")


def test_a_failed_login_is_an_event_with_its_problem_and_without_the_providers_words(
    stack: Stack, captured: Captured
) -> None:
    http = stack.browser()
    response = http.get(stack.bff_url + "/bff/callback", params={"state": "s" * 30, "error": "access_denied",
                                                               "error_description": "secret words"},
                        allow_redirects=False)
    assert response.status_code == 302  # a navigation: back home with the error
    event = captured.wait_for(lambda line: line["event"] == "login")
    assert event["result"] == "failed" and event["problem"] == "login-failed" and event["level"] == "warning"
    assert "secret words" not in captured.text and "access_denied" not in captured.text


def test_a_store_outage_is_a_store_error_event_and_the_access_line_names_the_problem(
    stack: Stack, captured: Captured, redis_server: t.Any
) -> None:
    http = stack.logged_in()
    redis_server.stop()
    try:
        assert http.get(stack.bff_url + "/bff/user").status_code == 503
    finally:
        redis_server.start()
    error = captured.wait_for(lambda line: line["event"] == "store.error")
    assert error["level"] == "warning" and error["operation"] == "request"
    assert captured.access_line("/bff/user", 503)["problem"] == "store-unavailable"
    assert "redis://" not in captured.text


# --- Formats and the last line of defence --------------------------------------------------------


def _record(message: str, *args: t.Any, **extra: t.Any) -> logging.LogRecord:
    record = logging.LogRecord("bff.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_is_one_object_on_one_line_whatever_its_values() -> None:
    line = JsonFormatter().format(_record("two\nlines \x1b[31m %s", "\u2028", event="x.y", note="a\r\nb"))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    parsed = json.loads(line)
    assert parsed["event"] == "x.y" and parsed["level"] == "warning" and parsed["logger"] == "bff.test"
    assert parsed["note"] == "a\r\nb" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])


def test_a_text_line_names_the_event_and_its_fields() -> None:
    text = TextFormatter().format(_record("GET /bff/user 200", event="request", route="/bff/user", status=200))
    assert text.split(" ", 2)[1:] == ["WARNING", "request GET /bff/user 200 route=/bff/user status=200"]


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ('"GET /bff/callback?code=abc&state=def HTTP/1.1" 302', '"GET /bff/callback?[redacted] HTTP/1.1" 302'),
        ("redirect to http://127.0.0.1:9/authorize?client_id=x&nonce=y", "http://127.0.0.1:9/authorize?[redacted]"),
        ("store redis://:p4ssw0rd@cache:6379/0 down", "store redis://[redacted]@cache:6379/0 down"),
        ("header Authorization: Bearer abcdefghijkl", "Bearer [redacted]"),
        ("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln here", "token [jwt] here"),
        ("Cookie: bff-session=abc; other=1", "Cookie: [redacted]"),
    ],
)
def test_the_last_line_of_defence_masks_tokens_credentials_and_query_strings(raw: str, kept: str) -> None:
    assert kept in scrub(raw)
    line = json.loads(JsonFormatter().format(_record("%s", raw, detail=raw)))
    assert kept in line["message"] and kept in line["detail"]


# --- Redaction, proven on a whole journey --------------------------------------------------------


class Secrets:
    """Everything a log line must never contain, gathered while a journey runs.

    Every JWT the emulator signs (access, ID and logout tokens), every refresh token and code it issued,
    every cookie the BFF set (session ids, sealed login transactions), every long query value of a URL
    the browser visited or was sent to (codes, states, tickets, connect codes, logout tags), the client
    secret and the secret key.
    """

    def __init__(self, idp: t.Any) -> None:
        self.idp = idp
        self.kinds: dict[str, str] = {CLIENT_SECRET: "client secret", SECRET_KEY: "secret key"}
        original = idp.sign

        def sign(claims: dict[str, t.Any]) -> str:
            token = t.cast(str, original(claims))
            self.kinds[token] = "jwt"
            return token

        idp.sign = sign

    def add_url(self, url: str) -> None:
        for name, value in parse_qsl(urlsplit(url).query):
            if len(value) >= 16:
                self.kinds[value] = f"query value ({name})"

    def watch(self, http: requests.Session) -> requests.Session:
        def record(response: requests.Response, *args: t.Any, **kwargs: t.Any) -> None:
            self.add_url(response.url)
            self.add_url(response.headers.get("Location", ""))
            for cookie in response.cookies:
                if cookie.value and len(cookie.value) >= 16:
                    self.kinds[cookie.value] = f"cookie ({cookie.name})"

        http.hooks["response"].append(record)
        return http

    def _collect(self) -> None:
        with self.idp.lock:
            for token in list(self.idp.refresh_tokens):
                self.kinds[token] = "refresh token"
            for code in list(self.idp.codes):
                self.kinds[code] = "authorization code"

    def found_in(self, text: str) -> list[str]:
        """The kinds of secret that occur in ``text``."""
        self._collect()
        return sorted({kind for value, kind in self.kinds.items() if value in text})

    def count(self, kind: str) -> int:
        self._collect()
        return sum(1 for found in self.kinds.values() if found.startswith(kind))


def _every_line_is_a_json_object(text: str) -> list[dict[str, t.Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        value = json.loads(line)
        assert isinstance(value, dict) and {"time", "level", "event", "message"} <= set(value), line
        parsed.append(value)
    return parsed


def test_a_whole_journey_logs_no_token_code_session_id_or_secret(stack: Stack, captured: Captured) -> None:
    from tests.test_backchannel import logged_in_as

    secrets = Secrets(stack.idp)
    totp = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    stack.idp.add_user(EMAIL, PASSWORD, name="Carol", totp_secret=totp)
    http = secrets.watch(stack.browser())
    assert login(http, stack.bff_url, email=EMAIL, password=PASSWORD, return_to="/settings").status_code == 302
    # Proxied calls, every one with a refresh: a token this short-lived is never served from the cache.
    stack.idp.configure(access_token_lifetime=4)
    for _ in range(3):
        assert http.get(stack.bff_url + METHODS).status_code == 200
    stack.idp.configure(access_token_lifetime=3600)
    # Step-up: the sensitive call needs MFA, the user logs in again with a second factor.
    stack.idp.configure(default_policy_mfa=True)
    refused = sensitive_call(stack, http)
    assert refused.status_code == 401
    assert step_up(http, stack, refused.json()["login_url"], otp(stack, totp)).status_code == 302
    assert sensitive_call(stack, http).status_code == 202
    stack.idp.configure(default_policy_mfa=False)
    # A connected account, linked and removed.
    started = start(http, stack)
    assert started.status_code == 200, started.text
    callback = consent(http, started.json()["redirect_url"])
    secrets.add_url(callback)
    assert cross_site_get(http, stack, callback).status_code == 302
    linked = http.get(stack.bff_url + "/me/v1/connected-accounts/accounts").json()["accounts"]
    assert http.delete(stack.bff_url + "/me/v1/connected-accounts/accounts/" + linked[0]["id"]).status_code == 204
    assert http.get(stack.bff_url + "/bff/sessions").status_code == 200
    # Logout, a logout link, and a back-channel logout.
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200
    assert login(http, stack.bff_url, email=EMAIL, password=PASSWORD, otp=lambda: otp(stack, totp)).status_code == 302
    link = http.get(stack.bff_url + "/bff/user").json()["logout_url"]
    secrets.add_url(stack.bff_url + link)
    assert http.get(stack.bff_url + link, allow_redirects=False).status_code == 302
    other = secrets.watch(logged_in_as(stack, "dave@example.com", "dave-password"))
    sub = other.get(stack.bff_url + "/bff/user").json()["claims"]["sub"]
    assert stack.idp.logout_user(sub)
    stack.idp.wait_for_backchannel(1)
    captured.wait_for(lambda line: line["event"] == "backchannel_logout")
    captured.access_line("/bff/backchannel-logout", 200)

    lines = _every_line_is_a_json_object(captured.text)
    events = {line["event"] for line in lines}
    assert {"request", "login", "token.exchange", "logout", "session.start", "session.end",
            "backchannel_logout"} <= events, events
    assert len([line for line in lines if line["event"] == "token.exchange"]) >= 4
    assert secrets.count("jwt") >= 10 and secrets.count("refresh token") >= 5
    assert secrets.count("cookie (bff-session)") >= 3 and secrets.count("query value (code)") >= 3
    assert secrets.found_in(captured.text) == []


def test_bff_serve_writes_only_json_lines_and_no_secret(redis_url: str) -> None:
    from bff.emulator import EmulatorConfig, EmulatorServer

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, base_url))
    emulator.start()
    secrets = Secrets(emulator.state)
    env = {
        "BFF_ISSUER_URL": emulator.url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_url,
    }
    process = None
    try:
        process = BffProcess(port, env, args=("--workers", "2"))
        http = secrets.watch(bff_session(base_url))
        assert login(http, base_url, return_to="/settings").status_code == 302
        emulator.state.configure(access_token_lifetime=4)
        for _ in range(3):
            assert http.get(base_url + METHODS).status_code == 200
        emulator.state.configure(access_token_lifetime=3600)
        assert http.post(base_url + METHODS, json={"type": "totp"}).status_code in (200, 201, 202)
        assert http.get(base_url + "/bff/sessions").status_code == 200
        assert http.get(base_url + "/me/v1/nowhere?secret=query-string-value-0123").status_code == 404
        assert http.post(base_url + "/bff/logout").status_code == 200
        assert login(http, base_url).status_code == 302
        sub = http.get(base_url + "/bff/user").json()["claims"]["sub"]
        assert emulator.state.logout_user(sub)
        assert emulator.state.wait_for_backchannel(1)[0].status_code == 200
        deadline = time.monotonic() + 5
        while '"backchannel_logout"' not in process.output() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if process is not None:
            process.stop()
        emulator.stop()

    output = process.output()
    lines = _every_line_is_a_json_object(output)
    events = {line["event"] for line in lines}
    assert {"request", "login", "token.exchange", "logout", "session.end", "backchannel_logout"} <= events, events
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    assert "query-string-value-0123" not in output
    assert secrets.count("jwt") >= 6 and secrets.count("cookie (bff-session)") >= 2
    assert secrets.found_in(output) == []


def test_under_gevent_workers_concurrent_requests_keep_their_own_request_fields(redis_url: str) -> None:
    import concurrent.futures

    from bff.emulator import EmulatorConfig, EmulatorServer

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, base_url))
    emulator.start()
    env = {
        "BFF_ISSUER_URL": emulator.url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_url,
    }
    process = None
    try:
        process = BffProcess(port, env)  # one gevent worker: every request below is a greenlet of one process
        browsers = [bff_session(base_url) for _ in range(3)]
        for http in browsers:
            assert login(http, base_url).status_code == 302
        emulator.state.configure(access_token_lifetime=4)  # every call exchanges a token

        def call(index: int) -> int:
            return browsers[index % 3].get(base_url + METHODS, headers={"X-Request-Id": f"r{index}"}).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
            assert list(pool.map(call, range(60))) == [200] * 60
        deadline = time.monotonic() + 5
        while process.output().count(f'"route":"{METHODS}"') < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if process is not None:
            process.stop()
        emulator.stop()

    lines = _every_line_is_a_json_object(process.output())
    access = {line["request_id"]: line for line in lines if line["event"] == "request" and line["route"] == METHODS}
    assert sorted(access) == sorted(f"r{index}" for index in range(60))
    tags = {index % 3: access[f"r{index}"]["session"] for index in range(3)}
    assert len(set(tags.values())) == 3
    assert all(access[f"r{index}"]["session"] == tags[index % 3] for index in range(60))
    exchanges = [line for line in lines if line["event"] == "token.exchange"]
    assert len(exchanges) == 60
    assert all(line["session"] == access[line["request_id"]]["session"] for line in exchanges)


_PIECES = [*"eyJabcBrs:/?=&@.#CoOkKiIE-_\"' \n", "Bearer ", "bearer ", "Basic ", "eyJ", "://", "cookie", "COOKIE"]


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(hypothesis.strategies.lists(hypothesis.strategies.sampled_from(_PIECES), max_size=40).map("".join))
@hypothesis.example("eyJhbGciOi.eyJzdWIi.c2ln")
@hypothesis.example("Authorization: Bearer abcdefgh12345678")
@hypothesis.example("redis://user:secret@host:6379/0")
@hypothesis.example("GET /bff/callback?code=abc&state=def")
@hypothesis.example("Set-Cookie: __Host-bff=abc")
@hypothesis.example("GET /me/v1/factors 200")
def test_scrubbing_skips_only_texts_no_mask_could_change(text: str) -> None:
    """The quick path (one scan for what a mask needs) gives what every mask applied in turn gives."""
    full = text
    for pattern, replacement in logs._SCRUBS:
        full = pattern.sub(replacement, full)
    assert logs.scrub(text) == full
