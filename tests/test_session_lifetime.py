"""Session lifetime (idle timeout, sliding, absolute lifetime) and the user's session list.

Expiry is decided by the BFF's clock (and the record's TTL in the store only backs it up), so these
tests move a manual clock instead of sleeping.
"""

from __future__ import annotations

import time
import typing as t

import pytest
import redis
import requests

from tests.conftest import Stack, StackFactory
from tests.support.browser import login
from tests.support.clock import ManualClock
from tests.support.problems import assert_problem


def sid_of(stack: Stack, http: requests.Session) -> str:
    return t.cast(str, http.cookies[stack.settings.session_cookie_name])


def user_status(stack: Stack, http: requests.Session) -> int:
    return http.get(stack.bff_url + "/bff/user").status_code


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_an_idle_session_ends_after_the_idle_timeout(make_stack: StackFactory, store: str) -> None:
    clock = ManualClock()
    stack = make_stack(store=store, clock=clock, session_idle_timeout=600, session_lifetime=3600)
    http = stack.logged_in()
    sid = sid_of(stack, http)
    clock.advance(599)
    assert stack.store.load(sid) is not None

    clock.advance(2)

    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    assert stack.store.load(sid) is None


def test_activity_slides_the_idle_timeout_and_idle_sessions_drop_from_the_list(make_stack: StackFactory) -> None:
    clock = ManualClock()
    stack = make_stack(clock=clock, session_idle_timeout=600, session_lifetime=3600)
    active, idle = stack.logged_in(), stack.logged_in()
    idle_sid = sid_of(stack, idle)

    for _ in range(4):  # 800 s in all, longer than one idle period, never 600 s without a request
        clock.advance(200)
        assert user_status(stack, active) == 200

    assert user_status(stack, idle) == 401
    assert stack.store.load(idle_sid) is None
    listed = active.get(stack.bff_url + "/bff/sessions").json()["sessions"]
    assert [entry["current"] for entry in listed] == [True]
    clock.advance(601)
    assert user_status(stack, active) == 401


def test_sliding_writes_at_most_once_per_touch_interval(make_stack: StackFactory) -> None:
    clock = ManualClock()
    stack = make_stack(clock=clock, session_idle_timeout=600, session_lifetime=3600)  # touch interval: 60 s
    http = stack.logged_in()
    sid = sid_of(stack, http)
    requests_made = 20
    before = stack.store.round_trips
    for _ in range(requests_made):
        assert user_status(stack, http) == 200
    # One load per request, and not one write per request.
    assert stack.store.round_trips - before == requests_made

    record = stack.store.load(sid)
    assert record is not None
    redis_client = redis.Redis.from_url(t.cast(str, stack.settings.session_store))
    redis_client.pexpire(f"bff:s:{{{sid}}}", 5000)  # so that a renewal of the TTL shows
    clock.advance(61)
    before = stack.store.round_trips
    assert user_status(stack, http) == 200
    assert stack.store.round_trips - before == 2  # the load and one touch
    renewed = stack.store.load(sid)
    assert renewed is not None and float(renewed.fields["seen"]) > float(record.fields["seen"])
    assert redis_client.pttl(f"bff:s:{{{sid}}}") > 600_000  # the idle timeout again, plus a grace period
    redis_client.close()


def test_the_absolute_lifetime_ends_even_an_active_session(make_stack: StackFactory) -> None:
    clock = ManualClock()
    stack = make_stack(clock=clock, session_idle_timeout=600, session_lifetime=1000)
    http = stack.logged_in()
    sid = sid_of(stack, http)
    for _ in range(4):
        clock.advance(240)
        assert user_status(stack, http) == 200
    clock.advance(50)  # 1010 s after login, though active 50 s ago
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    assert stack.store.load(sid) is None


def test_user_reports_the_remaining_lifetime_and_idle_time(make_stack: StackFactory) -> None:
    clock = ManualClock()
    stack = make_stack(clock=clock, session_idle_timeout=600, session_lifetime=3600)
    http = stack.logged_in()
    clock.advance(100)
    session = http.get(stack.bff_url + "/bff/user").json()["session"]
    assert 3490 <= session["expires_in"] <= 3500
    assert 490 <= session["idle_expires_in"] <= 500  # measured from the last activity, before this one
    assert session["last_seen"] <= clock.now() - 99


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
