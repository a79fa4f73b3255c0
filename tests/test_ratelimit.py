"""Rate limits per session and per client address, kept in the store so every instance shares them."""

from __future__ import annotations

import typing as t

import redis

from bff import create_app
from bff.store import open_store
from tests.conftest import StackFactory
from tests.support.problems import assert_problem, assert_sent_back
from tests.support.servers import ThreadedServer

READ = "/me/v1/authentication-methods"


def test_proxied_calls_are_limited_per_session(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_session="3/minute")
    first, second = stack.logged_in(), stack.logged_in()
    assert [first.get(stack.bff_url + READ).status_code for _ in range(3)] == [200] * 3
    refused = first.get(stack.bff_url + READ)
    body = assert_problem(refused, 429, "rate-limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "3 per 1 minute" in body["detail"]
    assert second.get(stack.bff_url + READ).status_code == 200  # another session has its own budget


def test_proxied_calls_are_limited_per_client_address(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_address="4/minute")
    first, second = stack.logged_in(), stack.logged_in()
    statuses = [http.get(stack.bff_url + READ).status_code for http in (first, second, first, second, first)]
    assert statuses == [200, 200, 200, 200, 429]


def test_login_starts_are_limited_per_client_address(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_login="2/minute")
    http = stack.browser()
    answers = [http.get(stack.bff_url + "/bff/login", params={"returnTo": "/here"}, allow_redirects=False)
               for _ in range(3)]
    assert [answer.status_code for answer in answers[:2]] == [302, 302]
    assert_sent_back(answers[2], "/here", "too_many_requests")  # a navigation: back with the error


def test_connect_starts_are_limited_per_session(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_connect="2/minute")
    http = stack.logged_in()
    start = {"connection": "google-oauth2"}
    assert [http.post(stack.bff_url + "/bff/connect", json=start).status_code for _ in range(2)] == [200, 200]
    assert_problem(http.post(stack.bff_url + "/bff/connect", json=start), 429, "rate-limited")


def test_every_instance_shares_the_counters(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_session="4/minute")
    other = ThreadedServer()
    other.serve(create_app(stack.settings, store=open_store(t.cast(str, stack.settings.session_store))))
    try:
        http = stack.logged_in()
        urls = [stack.bff_url, other.url()] * 3
        assert [http.get(url + READ).status_code for url in urls] == [200, 200, 200, 200, 429, 429]
    finally:
        other.stop()


def test_an_address_counter_is_one_key_however_many_anonymous_logins(make_stack: StackFactory) -> None:
    stack = make_stack(rate_limit_login="100000/minute")
    keys = redis.Redis.from_url(t.cast(str, stack.settings.session_store))
    client = stack.app.test_client()
    client.get("/bff/login")
    before = set(keys.keys())
    for _ in range(1000):
        with client.get("/bff/login") as response:
            assert response.status_code == 302
    # (Other tests' BFFs may still be announcing their liveness in this Redis.)
    added = {key for key in set(keys.keys()) - before if not key.startswith(b"bff:k:instance:")}
    keys.close()
    assert added == set()  # the one counter for this address already existed: nothing grows per request
    assert any(key.startswith(b"bff:c:rl:") for key in before)
