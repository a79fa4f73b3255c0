"""Two BFF instances sharing one store behave as one: any instance serves any session."""

from __future__ import annotations

import typing as t

import requests

from bff import create_app
from bff.store import open_store
from tests.conftest import StackFactory
from tests.support.problems import assert_problem
from tests.support.servers import ThreadedServer
from tests.test_token_refresh import refresh_calls, session_id, stored_refresh_token

READ = "/me/v1/authentication-methods"


def test_a_session_started_on_one_instance_is_used_refreshed_and_ended_on_the_other(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(token_refresh_margin=1)
    other = ThreadedServer()
    other.serve(create_app(stack.settings, store=open_store(t.cast(str, stack.settings.session_store))))
    try:
        http = stack.logged_in()  # started on the first instance
        cookies = {stack.settings.session_cookie_name: session_id(http)}
        on_other = requests.Session()
        on_other.cookies.update(cookies)
        on_other.headers["X-CSRF"] = "1"
        box = stack.app.extensions["bff"].box
        before = stored_refresh_token(box, stack.store, session_id(http))

        assert on_other.get(other.url() + "/bff/user").json()["claims"]["email"] == "alice@example.com"
        stack.idp.configure(access_token_lifetime=2)  # every token is inside the margin at once
        calls = refresh_calls(stack.idp)
        assert on_other.get(other.url() + READ).status_code == 200  # refreshed on the other instance
        assert refresh_calls(stack.idp) == calls + 1
        rotated = stored_refresh_token(box, stack.store, session_id(http))
        assert rotated != before
        assert http.get(stack.bff_url + READ).status_code == 200  # ... and its result used on the first

        assert on_other.post(other.url() + "/bff/logout").status_code == 200  # ended on the other
        assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
        assert stack.idp.family_revoked(stack.idp.family_of(rotated))
    finally:
        other.stop()


def test_deployments_with_different_store_prefixes_share_one_redis_without_seeing_each_other(
    make_stack: StackFactory,
) -> None:
    import redis

    first = make_stack()
    second = make_stack(store_prefix="other:")
    http = first.logged_in()
    sid = session_id(http)
    # The same session cookie means nothing to the other deployment.
    stranger = requests.Session()
    stranger.cookies.set(first.settings.session_cookie_name, sid)
    assert_problem(stranger.get(second.bff_url + "/bff/user"), 401, "not-authenticated")
    assert second.logged_in().get(second.bff_url + "/bff/user").status_code == 200
    client = redis.Redis.from_url(t.cast(str, first.settings.session_store))
    names = {key.decode() for key in client.scan_iter()}
    client.close()
    assert any(name.startswith("bff:s:{") for name in names)
    assert any(name.startswith("other:s:{") for name in names)
    assert all(name.startswith(("bff:", "other:")) for name in names), names
