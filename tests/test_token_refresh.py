"""Token refresh invariants against the emulator with rotation on and overlap 0.

Each test is built to fail without the mechanism it names: the per-session lock, the reload after
acquiring it, the fenced write, the lease, and classification by OAuth error code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
import typing as t

import pytest
import redis
import requests

from bff import Settings, create_app
from bff.clock import Clock
from bff.store import open_store
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, TOKEN_BINDINGS, Stack, StackFactory
from tests.support.browser import bff_session, login
from tests.support.clock import ManualClock
from tests.support.processes import BffProcess
from tests.support.redis_server import free_port
from tests.support.servers import ThreadedServer
from tests.test_auth import assert_problem


@pytest.fixture(params=TOKEN_BINDINGS)
def token_binding(request: pytest.FixtureRequest) -> str:
    """Every test here holds with Bearer tokens and with DPoP-bound ones."""
    return str(request.param)

READ = "/me/v1/authentication-methods"


def refresh_calls(idp: t.Any) -> int:
    return int(idp.counters()["token_calls_by_grant_type"].get("refresh_token", 0))


def session_id(http: requests.Session) -> str:
    return next(c.value for c in http.cookies if c.name == "bff-session" and c.value)  # type: ignore[return-value]


def stored_refresh_token(stack_or_box: t.Any, store: t.Any, sid: str) -> str:
    record = store.load(sid)
    assert record is not None
    return t.cast(str, stack_or_box.open(record.fields["rt"]).decode())


def assert_family_alive(idp: t.Any, refresh_token: str) -> None:
    family = idp.family_of(refresh_token)
    assert not idp.family_revoked(family)
    assert not idp.reuse_detected(family)
    # The token the BFF holds is the family's current one: nothing stale was written back.
    assert idp.refresh_tokens[refresh_token].rotated_at is None


# --- Two BFF processes sharing one Redis ---------------------------------------------------------


class TwoBffs(t.NamedTuple):
    a: BffProcess
    b: BffProcess
    idp: t.Any
    redis_url: str


@pytest.fixture
def two_bffs(request: pytest.FixtureRequest, redis_url: str, token_binding: str) -> t.Iterator[TwoBffs]:
    """Two BFF processes; ``@pytest.mark.overlap(seconds)`` gives the tenant and the BFF a rotation overlap."""
    from bff.emulator import EmulatorConfig, EmulatorServer

    marker = request.node.get_closest_marker("overlap")
    overlap = int(marker.args[0]) if marker else 0
    port_a, port_b = free_port(), free_port()
    base_url = f"http://127.0.0.1:{port_a}"
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, base_url))
    emulator.start()
    emulator.state.configure(leeway=overlap, require_proof_of_possession=token_binding == "dpop")
    env = {
        "BFF_REFRESH_TOKEN_OVERLAP": str(overlap),
        "BFF_ISSUER_URL": emulator.url + "/",
        "BFF_CLIENT_ID": CLIENT_ID,
        "BFF_CLIENT_SECRET": CLIENT_SECRET,
        "BFF_BASE_URL": base_url,
        "BFF_SECRET_KEY": SECRET_KEY,
        "BFF_SESSION_STORE": redis_url,
        "BFF_TOKEN_REFRESH_MARGIN": "1",
        "BFF_TOKEN_TIMEOUT": "2",
        "BFF_REFRESH_LOCK_LEASE": "3",
        "BFF_DPOP": str(token_binding == "dpop").lower(),
    }
    processes: list[BffProcess] = []
    try:
        processes.append(BffProcess(port_a, env))
        processes.append(BffProcess(port_b, env))
        yield TwoBffs(processes[0], processes[1], emulator.state, redis_url)
    finally:
        for process in processes:
            process.stop()
        emulator.stop()


def _get_all(http: requests.Session, urls: list[str]) -> list[requests.Response]:
    cookies = {c.name: c.value for c in http.cookies if c.name == "bff-session"}
    barrier = threading.Barrier(len(urls))

    def call(url: str) -> requests.Response:
        barrier.wait()
        return requests.get(url, cookies=cookies, headers={"X-CSRF": "1"}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(call, urls))


@pytest.mark.slow
def test_fifty_calls_at_expiry_over_two_processes_make_exactly_one_exchange(two_bffs: TwoBffs) -> None:
    idp = two_bffs.idp
    idp.configure(access_token_lifetime=4)
    http = bff_session(two_bffs.a.url)
    assert login(http, two_bffs.a.url).status_code == 302
    assert http.get(two_bffs.a.url + READ).status_code == 200  # the first My Account token, 4 s long
    issued = time.monotonic()
    idp.configure(access_token_lifetime=3600)
    idp.reset_counters()
    time.sleep(max(0.0, issued + 3.3 - time.monotonic()))  # inside the refresh margin: expired for the BFF

    urls = [(two_bffs.a.url if i % 2 else two_bffs.b.url) + READ for i in range(50)]
    responses = _get_all(http, urls)

    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
    assert refresh_calls(idp) == 1
    store = open_store(two_bffs.redis_url)
    from bff.security import SecretBox

    assert_family_alive(idp, stored_refresh_token(SecretBox((SECRET_KEY,)), store, session_id(http)))
    store.close()


def _kill_a_holding_the_lock(two_bffs: TwoBffs, sid: str) -> threading.Thread:
    """A's refresh reaches the IdP and hangs there; then A dies holding the refresh lock."""
    idp = two_bffs.idp
    cookies = {"bff-session": sid}
    idp.reset_counters()  # the token requests counted from here are this test's
    idp.token_latency(5, count=1)  # the first exchange hangs at the IdP
    hung = threading.Thread(
        target=lambda: _swallow(lambda: requests.get(
            two_bffs.a.url + READ, cookies=cookies, headers={"X-CSRF": "1"}, timeout=30)),
        daemon=True,
    )
    hung.start()
    client = redis.Redis.from_url(two_bffs.redis_url)
    deadline = time.monotonic() + 5
    while not client.exists(f"bff:l:refresh:{{{sid}}}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.exists(f"bff:l:refresh:{{{sid}}}"), "process A never took the refresh lock"
    client.close()
    idp.wait_for_token_requests(received=1)  # A's token request has reached the IdP and hangs there
    two_bffs.a.kill()  # ... and A dies holding the lock
    return hung


@pytest.mark.slow
@pytest.mark.overlap(30)
def test_a_dead_lock_holder_does_not_block_the_others(two_bffs: TwoBffs) -> None:
    idp = two_bffs.idp
    http = bff_session(two_bffs.a.url)
    assert login(http, two_bffs.a.url).status_code == 302
    sid = session_id(http)
    hung = _kill_a_holding_the_lock(two_bffs, sid)

    started = time.monotonic()
    responses = _get_all(http, [two_bffs.b.url + READ] * 5)
    elapsed = time.monotonic() - started

    # B sees A's process is gone, takes the lock over, and (the outcome of A's attempt being unknown)
    # presents the same refresh token again inside the tenant's rotation overlap.
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert elapsed < 5 + 2, f"waiters were held for {elapsed:.1f}s"
    hung.join(timeout=10)
    idp.wait_for_token_requests(dropped=1, timeout=10)  # the dead holder's exchange never happened
    store = open_store(two_bffs.redis_url)
    from bff.security import SecretBox

    assert_family_alive(idp, stored_refresh_token(SecretBox((SECRET_KEY,)), store, sid))
    store.close()
    cookies = {"bff-session": sid}
    assert requests.get(two_bffs.b.url + READ, cookies=cookies, headers={"X-CSRF": "1"}).status_code == 200


@pytest.mark.slow
def test_without_an_overlap_a_dead_holders_unknown_outcome_ends_the_session_cleanly(two_bffs: TwoBffs) -> None:
    idp = two_bffs.idp
    http = bff_session(two_bffs.a.url)
    assert login(http, two_bffs.a.url).status_code == 302
    sid = session_id(http)
    store = open_store(two_bffs.redis_url)
    from bff.security import SecretBox

    family = idp.family_of(stored_refresh_token(SecretBox((SECRET_KEY,)), store, sid))
    store.close()
    hung = _kill_a_holding_the_lock(two_bffs, sid)

    responses = _get_all(http, [two_bffs.b.url + READ] * 3)

    kinds = sorted(r.json()["type"].rsplit(":", 1)[1] for r in responses)
    assert "refresh-interrupted" in kinds and set(kinds) <= {"refresh-interrupted", "not-authenticated",
                                                             "login-required"}, kinds
    hung.join(timeout=10)
    # The BFF never presented the token a second time: no reuse was detected; it revoked the family itself.
    assert idp.wait_for_token_requests(dropped=1, timeout=10).received == 1
    assert not idp.reuse_detected(family)
    assert idp.family_revoked(family)


def _swallow(call: t.Callable[[], t.Any]) -> None:
    with contextlib.suppress(requests.RequestException):
        call()


# --- One process, several threads ---------------------------------------------------------------


def test_different_scope_sets_never_redeem_one_refresh_token_twice(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.token_latency(0.3)  # exchanges overlap in time
    calls = [
        ("GET", "/me/v1/factors", None),
        ("POST", "/me/v1/authentication-methods", {"type": "totp"}),
        ("DELETE", "/me/v1/connected-accounts/accounts/cac_nothere", None),
    ] * 3
    barrier = threading.Barrier(len(calls))

    def call(spec: tuple[str, str, t.Any]) -> int:
        method, path, body = spec
        barrier.wait()
        return http.request(method, stack.bff_url + path, json=body, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        statuses = list(pool.map(call, calls))
    stack.idp.token_latency(0)

    assert sorted(set(statuses)) == [200, 202, 400], statuses  # 400: no such account upstream
    assert refresh_calls(stack.idp) == 3  # one exchange per scope set, one after the other
    box = stack.app.extensions["bff"].box
    assert_family_alive(stack.idp, stored_refresh_token(box, stack.store, session_id(http)))


def test_rotated_refresh_token_is_never_overwritten_by_a_stale_copy(make_stack: StackFactory) -> None:
    stack = make_stack(session_idle_timeout=10, token_refresh_margin=1)
    # A second BFF instance on the same store: its own token manager, sessions and caches.
    second_server = ThreadedServer()
    second_app = create_app(stack.settings, store=open_store(t.cast(str, stack.settings.session_store)))
    second_server.serve(second_app)
    try:
        stack.idp.configure(access_token_lifetime=2)  # a refresh roughly every second
        http = stack.logged_in()
        cookies = {"bff-session": session_id(http)}
        urls = [stack.bff_url, second_server.url()]
        paths = ["/me/v1/factors", "/me/v1/authentication-methods", "/bff/user"]
        stop = time.monotonic() + 4
        errors: list[str] = []

        def hammer(index: int) -> None:
            while time.monotonic() < stop:
                url = urls[index % 2] + paths[index % 3]
                response = requests.get(url, cookies=cookies, headers={"X-CSRF": "1"}, timeout=30)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                index += 1

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert refresh_calls(stack.idp) >= 3  # the token really rotated several times meanwhile
        box = stack.app.extensions["bff"].box
        assert_family_alive(stack.idp, stored_refresh_token(box, stack.store, session_id(http)))
    finally:
        second_server.stop()


def test_a_slow_request_never_writes_back_the_refresh_token_it_loaded(make_stack: StackFactory) -> None:
    from tests.support.upstream import RecordingUpstream, Reply

    upstream = RecordingUpstream()
    try:
        stack = make_stack(my_account_url=upstream.url + "/me/v1")
        http = stack.logged_in()
        assert http.get(stack.bff_url + "/me/v1/factors").status_code == 200  # read token cached
        box = stack.app.extensions["bff"].box
        sid = session_id(http)
        loaded = stored_refresh_token(box, stack.store, sid)
        upstream.reply_next(Reply(delay=1.5))
        slow = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda: http.get(stack.bff_url + "/me/v1/factors", timeout=30))
        upstream.wait_for_delayed_reply()  # the slow request has loaded the session (with the old refresh token)
        rotated = http.post(stack.bff_url + "/me/v1/authentication-methods", json={"type": "totp"})
        assert rotated.status_code == 200  # a new scope set: the refresh token rotated meanwhile
        assert stored_refresh_token(box, stack.store, sid) != loaded
        assert slow.result().status_code == 200
        assert_family_alive(stack.idp, stored_refresh_token(box, stack.store, sid))
        stack.idp.configure(access_token_lifetime=1)
        assert http.delete(stack.bff_url + "/me/v1/connected-accounts/accounts/cac_x").status_code == 200
        assert_family_alive(stack.idp, stored_refresh_token(box, stack.store, sid))
    finally:
        upstream.stop()


def test_tokens_are_refreshed_proactively_before_expiry(redis_url: str) -> None:
    from bff.emulator import EmulatorConfig, EmulatorServer

    clock = ManualClock()
    server = ThreadedServer()
    emulator = EmulatorServer(EmulatorConfig(CLIENT_ID, CLIENT_SECRET, server.url()))
    emulator.start()
    try:
        settings = Settings(issuer_url=emulator.url + "/", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                            base_url=server.url(), secret_keys=(SECRET_KEY,), session_store=redis_url,
                            token_refresh_margin=60, session_idle_timeout=2 * 86400)
        server.serve(create_app(settings, clock=t.cast(Clock, clock)))
        http = bff_session(server.url())
        login(http, server.url())
        assert http.get(server.url() + READ).status_code == 200
        before = refresh_calls(emulator.state)
        clock.advance(86400 - 90)  # 90 s before the 24 h token expires: outside the margin
        assert http.get(server.url() + READ).status_code == 200
        assert refresh_calls(emulator.state) == before
        clock.advance(60)  # 30 s before expiry: inside the 60 s margin
        assert http.get(server.url() + READ).status_code == 200
        assert refresh_calls(emulator.state) == before + 1
    finally:
        server.stop()
        emulator.stop()


# --- Failures are classified by OAuth error code --------------------------------------------------


def test_invalid_grant_ends_the_session_with_a_login_url(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.fail_next_token("invalid_grant", 400)
    body = assert_problem(http.get(stack.bff_url + READ), 401, "login-required")
    assert body["login_url"].startswith("/bff/login?returnTo=")
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")


@pytest.mark.parametrize(("status", "error", "expected"), [
    (500, "server_error", 502),
    (503, "temporarily_unavailable", 503),
    (429, "too_many_requests", 503),
])
def test_token_endpoint_outage_keeps_the_session_and_refresh_token(
    stack: Stack, status: int, error: str, expected: int
) -> None:
    http = stack.logged_in()
    box = stack.app.extensions["bff"].box
    before = stored_refresh_token(box, stack.store, session_id(http))
    stack.idp.fail_next_token(error, status)
    response = http.get(stack.bff_url + READ)
    assert response.status_code == expected
    assert response.json()["type"] in ("urn:bff:problem:idp-error", "urn:bff:problem:idp-unavailable")
    assert stored_refresh_token(box, stack.store, session_id(http)) == before
    assert http.get(stack.bff_url + READ).status_code == 200  # the same session works once the IdP is back


def test_token_endpoint_timeout_within_the_overlap_is_a_503_and_keeps_the_session(make_stack: StackFactory) -> None:
    stack = make_stack(token_timeout=0.5, refresh_lock_lease=5, refresh_token_overlap=30)
    stack.idp.configure(leeway=30)
    http = stack.logged_in()
    stack.idp.token_latency(2, count=1)
    assert_problem(http.get(stack.bff_url + READ), 503, "idp-unavailable")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200
    stack.idp.wait_for_token_requests(dropped=1)  # the dropped request is over at the emulator
    assert http.get(stack.bff_url + READ).status_code == 200


def test_token_endpoint_timeout_without_an_overlap_ends_the_session_cleanly(make_stack: StackFactory) -> None:
    stack = make_stack(token_timeout=0.5, refresh_lock_lease=5)
    http = stack.logged_in()
    box = stack.app.extensions["bff"].box
    family = stack.idp.family_of(stored_refresh_token(box, stack.store, session_id(http)))
    stack.idp.token_latency(2, count=1)
    body = assert_problem(http.get(stack.bff_url + READ), 401, "refresh-interrupted")
    assert body["login_url"].startswith("/bff/login?returnTo=")
    assert_problem(http.get(stack.bff_url + "/bff/user"), 401, "not-authenticated")
    stack.idp.wait_for_token_requests(dropped=1)
    assert not stack.idp.reuse_detected(family)  # the BFF never presented the token again
    assert stack.idp.family_revoked(family)  # ... and revoked it when it ended the session


@pytest.mark.parametrize("error", ["mfa_required", "unmet_authentication_requirements"])
def test_step_up_errors_give_a_distinct_problem_with_a_step_up_login_url(stack: Stack, error: str) -> None:
    http = stack.logged_in()
    stack.idp.fail_next_token(error, 403)
    body = assert_problem(http.get(stack.bff_url + READ, headers={"Referer": stack.bff_url + "/settings"}),
                          401, "step-up-required")
    assert body["login_url"].startswith("/bff/login?returnTo=%2Fsettings&acr_values=")
    assert http.get(stack.bff_url + "/bff/user").status_code == 200  # not logged out


def test_token_for_the_wrong_audience_is_a_502_naming_the_mrrt_policy(stack: Stack) -> None:
    http = stack.logged_in()
    stack.idp.configure(refresh_token_policies=[])  # MRRT does not cover the My Account API
    body = assert_problem(http.get(stack.bff_url + READ), 502, "token-audience-mismatch")
    assert "refresh_token.policies" in body["detail"]
    assert http.get(stack.bff_url + "/bff/user").status_code == 200


def test_token_without_the_route_scope_is_a_502_naming_the_scope(stack: Stack) -> None:
    http = stack.logged_in()
    audience = stack.settings.my_account_audience
    stack.idp.configure(refresh_token_policies=[{"audience": audience, "scope": ["read:me:factors"]}])
    body = assert_problem(http.get(stack.bff_url + READ), 502, "token-scope-mismatch")
    assert "read:me:authentication_methods" in body["detail"]
