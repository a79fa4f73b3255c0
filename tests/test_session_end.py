"""Every way a session ends goes through one path: refresh token revoked (where that is right), index
entries removed, record deleted. One test per reason shows all three happened."""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass

import pytest
import redis
import requests

from tests.conftest import TOKEN_BINDINGS, Stack, StackFactory
from tests.support.clock import ManualClock
from tests.support.problems import assert_problem


@pytest.fixture(params=TOKEN_BINDINGS)
def token_binding(request: pytest.FixtureRequest) -> str:
    """Every way a session ends holds with Bearer tokens and with DPoP-bound ones."""
    return str(request.param)

IDLE = 600
LIFETIME = 3600


@dataclass
class Ended:
    """What a session left in the store and at the IdP, looked up once it should be gone."""

    stack: Stack
    sid: str
    sub: str
    idp_sid: str
    family: str

    def assert_gone(self, *, revoked: bool) -> None:
        keys = redis.Redis.from_url(t.cast(str, self.stack.settings.session_store))
        try:
            assert self.stack.store.load(self.sid) is None, "the record is still there"
            assert not keys.sismember(f"bff:i:sub:{self.sub}", self.sid), "the sub index still names it"
            assert not keys.sismember(f"bff:i:idp-sid:{self.idp_sid}", self.sid), "the sid index still names it"
        finally:
            keys.close()
        assert self.stack.idp.family_revoked(self.family) is revoked


def observe(stack: Stack, http: requests.Session) -> Ended:
    sid = http.cookies[stack.settings.session_cookie_name]
    record = stack.store.load(sid)
    assert record is not None
    document = json.loads(record.fields["doc"])
    refresh_token = stack.app.extensions["bff"].box.open(record.fields["rt"]).decode()
    keys = redis.Redis.from_url(t.cast(str, stack.settings.session_store))
    assert keys.sismember(f"bff:i:sub:{document['sub']}", sid)
    assert keys.sismember(f"bff:i:idp-sid:{document['idp_sid']}", sid)
    keys.close()
    return Ended(stack, sid, document["sub"], document["idp_sid"], stack.idp.family_of(refresh_token))


@pytest.fixture
def clocked(make_stack: StackFactory) -> tuple[Stack, ManualClock]:
    clock = ManualClock()
    return make_stack(clock=clock, session_idle_timeout=IDLE, session_lifetime=LIFETIME), clock


def test_logout(stack: Stack) -> None:
    http = stack.logged_in()
    ended = observe(stack, http)
    assert http.post(stack.bff_url + "/bff/logout").status_code == 200
    ended.assert_gone(revoked=True)


def test_back_channel_logout(stack: Stack) -> None:
    http = stack.logged_in()
    ended = observe(stack, http)
    assert stack.idp.end_sso_session(ended.idp_sid)
    assert [d.status_code for d in stack.idp.wait_for_backchannel(1)] == [200]
    ended.assert_gone(revoked=True)


def test_ending_it_from_the_session_list(stack: Stack) -> None:
    phone, laptop = stack.logged_in(), stack.logged_in()
    ended = observe(stack, phone)
    other = next(entry for entry in laptop.get(stack.bff_url + "/bff/sessions").json()["sessions"]
                 if not entry["current"])
    assert laptop.delete(stack.bff_url + "/bff/sessions/" + other["id"]).status_code == 204
    ended.assert_gone(revoked=True)


def test_a_dead_refresh_token_ends_it_without_a_revocation(stack: Stack) -> None:
    http = stack.logged_in()
    ended = observe(stack, http)
    stack.idp.fail_next_token("invalid_grant", 400)
    assert_problem(http.get(stack.bff_url + "/me/v1/authentication-methods"), 401, "login-required")
    # The IdP already refused the token: nothing to revoke, and the BFF did not try.
    ended.assert_gone(revoked=False)
    assert stack.settings.session_cookie_name not in http.cookies


def test_the_idle_timeout(clocked: tuple[Stack, ManualClock]) -> None:
    stack, clock = clocked
    http = stack.logged_in()
    ended = observe(stack, http)
    clock.advance(IDLE + 1)
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    ended.assert_gone(revoked=True)


def test_the_absolute_lifetime(clocked: tuple[Stack, ManualClock]) -> None:
    stack, clock = clocked
    http = stack.logged_in()
    ended = observe(stack, http)
    for _ in range(LIFETIME // (IDLE - 100)):
        clock.advance(IDLE - 100)
        assert http.get(stack.bff_url + "/bff/user").status_code == 200
    clock.advance(IDLE - 100)
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    ended.assert_gone(revoked=True)


def test_a_new_login_in_the_same_browser(stack: Stack) -> None:
    from tests.support.browser import login

    http = stack.logged_in()
    ended = observe(stack, http)
    assert login(http, stack.bff_url).status_code == 302
    ended.assert_gone(revoked=True)
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_an_expired_session_found_by_the_session_list_is_ended_too(clocked: tuple[Stack, ManualClock]) -> None:
    stack, clock = clocked
    idle, active = stack.logged_in(), stack.logged_in()
    ended = observe(stack, idle)
    clock.advance(IDLE - 10)
    assert active.get(stack.bff_url + "/bff/user").status_code == 200
    clock.advance(20)
    listed = active.get(stack.bff_url + "/bff/sessions").json()["sessions"]
    assert [entry["current"] for entry in listed] == [True]
    ended.assert_gone(revoked=True)
