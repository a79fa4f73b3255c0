"""Session lifetime (idle timeout, sliding, absolute lifetime) and the user's session list.

Expiry is the store's own TTL, which runs on real time, so these tests use idle timeouts of a few
seconds rather than a fake clock.
"""

from __future__ import annotations

import time
import typing as t

import pytest
import redis
import requests

from tests.conftest import Stack, StackFactory
from tests.support.browser import login
from tests.support.problems import assert_problem


def sid_of(stack: Stack, http: requests.Session) -> str:
    return t.cast(str, http.cookies[stack.settings.session_cookie_name])


def user_status(stack: Stack, http: requests.Session) -> int:
    return http.get(stack.bff_url + "/bff/user").status_code


def keep_active(stack: Stack, http: requests.Session, seconds: float, every: float = 0.4) -> None:
    """Use the session every ``every`` seconds for ``seconds``; each call must succeed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert user_status(stack, http) == 200
        time.sleep(every)


def wait_until_gone(stack: Stack, sid: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while stack.store.load(sid) is not None:
        assert time.monotonic() < deadline, "the session record outlived its TTL"
        time.sleep(0.1)


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_an_idle_session_expires_after_the_idle_timeout(make_stack: StackFactory, store: str) -> None:
    stack = make_stack(store=store, session_idle_timeout=2, session_lifetime=60)
    http = stack.logged_in()
    sid = sid_of(stack, http)
    record = stack.store.load(sid)
    assert record is not None

    time.sleep(2.3)

    assert stack.store.load(sid) is None
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")


def test_activity_slides_the_idle_timeout_and_idle_sessions_drop_from_the_list(make_stack: StackFactory) -> None:
    stack = make_stack(session_idle_timeout=2, session_lifetime=60)
    active, idle = stack.logged_in(), stack.logged_in()
    idle_sid = sid_of(stack, idle)

    keep_active(stack, active, 3.0)  # longer than one idle period

    assert stack.store.load(idle_sid) is None
    assert user_status(stack, idle) == 401
    listed = active.get(stack.bff_url + "/bff/sessions").json()["sessions"]
    assert [entry["current"] for entry in listed] == [True]
    time.sleep(2.3)
    assert user_status(stack, active) == 401


def test_sliding_writes_at_most_once_per_touch_interval(make_stack: StackFactory) -> None:
    stack = make_stack(session_idle_timeout=10, session_lifetime=60)  # touch interval: 1 s
    http = stack.logged_in()
    sid = sid_of(stack, http)
    requests_made = 20
    before = stack.store.round_trips
    for _ in range(requests_made):
        assert user_status(stack, http) == 200
    # One load per request, and not one write per request.
    assert stack.store.round_trips - before <= requests_made + 1

    time.sleep(1.2)
    record = stack.store.load(sid)
    assert record is not None
    redis_client = redis.Redis.from_url(t.cast(str, stack.settings.session_store))
    assert redis_client.pttl(f"bff:s:{sid}") < 9000
    before = stack.store.round_trips
    assert user_status(stack, http) == 200
    assert stack.store.round_trips - before == 2  # the load and one touch
    renewed = stack.store.load(sid)
    assert renewed is not None and float(renewed.fields["seen"]) > float(record.fields["seen"])
    assert redis_client.pttl(f"bff:s:{sid}") > 9000
    redis_client.close()


def test_the_absolute_lifetime_ends_even_an_active_session(make_stack: StackFactory) -> None:
    stack = make_stack(session_idle_timeout=2, session_lifetime=3)
    http = stack.logged_in()
    sid = sid_of(stack, http)
    started = time.monotonic()
    keep_active(stack, http, 2.4)
    while time.monotonic() - started < 3.2:
        time.sleep(0.1)
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    wait_until_gone(stack, sid)


def test_user_reports_the_remaining_lifetime_and_idle_time(make_stack: StackFactory) -> None:
    stack = make_stack(session_idle_timeout=600, session_lifetime=3600)
    http = stack.logged_in()
    session = http.get(stack.bff_url + "/bff/user").json()["session"]
    assert 3590 <= session["expires_in"] <= 3600
    assert 590 <= session["idle_expires_in"] <= 600
    assert session["last_seen"] <= time.time()


# The user's sessions -----------------------------------------------------------------------------


def browser_with(stack: Stack, user_agent: str, **credentials: t.Any) -> requests.Session:
    http = stack.browser()
    http.headers["User-Agent"] = user_agent
    assert login(http, stack.bff_url, **credentials).status_code == 302
    return http


def listing(stack: Stack, http: requests.Session) -> list[dict[str, t.Any]]:
    response = http.get(stack.bff_url + "/bff/sessions")
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return t.cast(list[dict[str, t.Any]], response.json()["sessions"])


def test_sessions_lists_the_users_sessions_by_opaque_ids(stack: Stack) -> None:
    laptop = browser_with(stack, "Laptop/1.0")
    phone = browser_with(stack, "Phone/2.0")
    stack.idp.add_user("bob@example.com", "bob-password")
    bob = browser_with(stack, "Bob/1.0", email="bob@example.com", password="bob-password")

    response = laptop.get(stack.bff_url + "/bff/sessions")
    sessions = listing(stack, laptop)

    assert sorted(entry["device"] for entry in sessions) == ["Laptop/1.0", "Phone/2.0"]
    assert [entry["current"] for entry in sessions] == [True, False]
    assert sessions[0]["device"] == "Laptop/1.0"
    for entry in sessions:
        assert set(entry) == {"id", "current", "created_at", "last_seen", "device", "user_agent"}
        # last_seen is stored to the millisecond.
        assert entry["created_at"] - 0.001 <= entry["last_seen"] <= time.time()
    for browser in (laptop, phone, bob):
        assert sid_of(stack, browser) not in response.text


def test_ending_another_session_logs_it_out_and_revokes_its_refresh_token(stack: Stack) -> None:
    laptop, phone = browser_with(stack, "Laptop/1.0"), browser_with(stack, "Phone/2.0")
    box = stack.app.extensions["bff"].box
    record = stack.store.load(sid_of(stack, phone))
    assert record is not None
    family = stack.idp.family_of(box.open(record.fields["rt"]).decode())
    other = next(entry for entry in listing(stack, laptop) if not entry["current"])

    response = laptop.delete(stack.bff_url + "/bff/sessions/" + other["id"])

    assert response.status_code == 204
    assert user_status(stack, phone) == 401
    assert stack.idp.family_revoked(family)
    assert user_status(stack, laptop) == 200
    assert [entry["device"] for entry in listing(stack, laptop)] == ["Laptop/1.0"]


def test_ending_the_current_session_is_a_logout(stack: Stack) -> None:
    http = stack.logged_in()
    current = listing(stack, http)[0]
    response = http.delete(stack.bff_url + "/bff/sessions/" + current["id"])
    assert response.status_code == 204
    assert stack.settings.session_cookie_name not in http.cookies
    assert user_status(stack, http) == 401


def test_another_users_session_or_an_unknown_id_is_404(stack: Stack) -> None:
    alice = stack.logged_in()
    stack.idp.add_user("bob@example.com", "bob-password")
    bob = stack.logged_in(email="bob@example.com", password="bob-password")
    bobs = listing(stack, bob)[0]["id"]

    assert_problem(alice.delete(stack.bff_url + "/bff/sessions/" + bobs), 404, "session-not-found")
    assert_problem(alice.delete(stack.bff_url + "/bff/sessions/" + "A" * 43), 404, "session-not-found")
    assert_problem(alice.delete(stack.bff_url + "/bff/sessions/" + sid_of(stack, bob)), 404, "session-not-found")
    assert user_status(stack, bob) == 200


def test_ending_a_session_needs_the_csrf_header(stack: Stack) -> None:
    laptop, phone = stack.logged_in(), stack.logged_in()
    other = next(entry for entry in listing(stack, laptop) if not entry["current"])
    response = laptop.delete(stack.bff_url + "/bff/sessions/" + other["id"], headers={"X-CSRF": ""})
    assert_problem(response, 403, "csrf")
    assert user_status(stack, phone) == 200


def test_sessions_needs_a_login(stack: Stack) -> None:
    assert_problem(stack.browser().get(stack.bff_url + "/bff/sessions"), 401, "not-authenticated")


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
         "Chrome on Linux"),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 Version/18.0 Safari/604.1",
         "Safari on iPhone"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0 Safari/537.36 Edg/130.0", "Edge on Windows"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:131.0) Gecko/20100101 Firefox/131.0", "Firefox on macOS"),
        ("", "Unknown device"),
    ],
)
def test_devices_are_named_from_the_user_agent(user_agent: str, device: str) -> None:
    from bff.auth.sessions import describe_device

    assert describe_device(user_agent) == device
