"""The process-local session cache, with two BFF instances sharing one real Redis.

Instance B serves proxied reads from its cache; the session is changed or ended on instance A. Each
test waits for B to have *received* A's announcement (an event on B's cache, never a sleep), then
checks what B does. The control tests show that without the announcement B would have answered from
its cache, so the assertions can fail.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from bff import create_app
from bff.session.cache import CHANNEL, FLUSH_ALL, MAX_AGE, SessionCache, digest
from bff.store import SessionStore, StoreUnavailable, open_store
from tests.conftest import CLIENT_ID, CLIENT_SECRET, SECRET_KEY, Stack, StackFactory
from tests.support.browser import bff_session, login
from tests.support.clock import ManualClock
from tests.support.problems import assert_problem
from tests.support.processes import BffProcess
from tests.support.redis_server import RedisServer, free_port
from tests.support.servers import ThreadedServer
from tests.support.upstream import RecordingUpstream, Reply
from tests.test_store_contract import _store_url

READ = "/me/v1/authentication-methods"
WAIT = 10.0  # how long an event may take before the test gives up (a bound, not an expectation)


def session_id(http: requests.Session) -> str:
    return next(str(c.value) for c in http.cookies if c.name == "bff-session" and c.value)


def cache_of(app: t.Any) -> SessionCache:
    cache = app.extensions["bff"].sessions.cache
    assert isinstance(cache, SessionCache)
    return cache


@dataclasses.dataclass
class Pair:
    """Instance A (the stack: its emulator's client and back-channel URL) and instance B, one Redis."""

    a: Stack
    b_url: str
    b_app: t.Any
    b_store: SessionStore
    upstream: RecordingUpstream

    @property
    def a_cache(self) -> SessionCache:
        return cache_of(self.a.app)

    @property
    def b_cache(self) -> SessionCache:
        return cache_of(self.b_app)

    def logged_in(self) -> requests.Session:
        """A session started on A, whose first My Account token A has minted (and announced)."""
        assert self.b_cache.wait_connected(WAIT), "B's cache never started listening"
        http = self.a.logged_in()
        mark = self.b_cache.epoch
        assert http.get(self.a.bff_url + READ).status_code == 200  # the first proxied call exchanges
        assert self.b_cache.wait_invalidated(session_id(http), mark, WAIT)  # B has heard of it
        return http

    def on_b(self, http: requests.Session) -> requests.Session:
        """A browser on B with ``http``'s session cookie."""
        other = bff_session(self.b_url)
        other.cookies.set("bff-session", session_id(http))
        return other

    def cached_on_b(self, http: requests.Session) -> requests.Session:
        """``http``'s session on B, read once from the store and then served from B's cache."""
        assert self.b_cache.wait_connected(WAIT), "B's cache never started listening"
        browser = self.on_b(http)
        assert browser.get(self.b_url + READ).status_code == 200  # a miss: loaded, then kept
        before = self.b_store.round_trips
        assert browser.get(self.b_url + READ).status_code == 200
        assert self.b_store.round_trips == before, "B read the store: the session was not cached"
        return browser

    def sent_by_b(self, browser: requests.Session) -> str:
        """The bearer token B sends upstream on ``browser``'s next proxied read."""
        count = len(self.upstream.seen)
        assert browser.get(self.b_url + READ).status_code == 200
        return self.upstream.wait_for_requests(count + 1)[count].headers["authorization"]


@pytest.fixture
def make_pair(make_stack: StackFactory) -> t.Iterator[t.Callable[..., Pair]]:
    started: list[tuple[ThreadedServer, t.Any, SessionStore, RecordingUpstream, t.Any]] = []

    def factory(**overrides: t.Any) -> Pair:
        upstream = RecordingUpstream()
        stack = make_stack(my_account_url=upstream.url + "/me/v1", **overrides)
        b_store = open_store(t.cast(str, stack.settings.session_store), prefix=stack.settings.store_prefix)
        server = ThreadedServer()
        b_app = create_app(stack.settings, store=b_store, clock=overrides.get("clock"))
        server.serve(b_app)
        started.append((server, b_app, b_store, upstream, stack.app))
        return Pair(stack, server.url(), b_app, b_store, upstream)

    yield factory
    for server, b_app, b_store, upstream, a_app in started:
        server.stop()
        for app in (a_app, b_app):
            cache = app.extensions["bff"].sessions.cache
            if cache is not None:
                cache.stop()
        b_store.close()
        upstream.stop()


@pytest.fixture
def pair(make_pair: t.Callable[..., Pair]) -> Pair:
    return make_pair()


# --- A session ended on one instance is refused by the other -------------------------------------


def _logout(pair: Pair, http: requests.Session) -> None:
    assert http.post(pair.a.bff_url + "/bff/logout").status_code == 200


def _backchannel_logout(pair: Pair, http: requests.Session) -> None:
    sub = http.get(pair.a.bff_url + "/bff/user").json()["claims"]["sub"]
    assert pair.a.idp.logout_user(sub)
    assert [delivery.status_code for delivery in pair.a.idp.wait_for_backchannel(1)] == [200]


def _invalid_grant(pair: Pair, http: requests.Session) -> None:
    # The API refuses A's token, and the IdP refuses the refresh token: A ends the session.
    pair.upstream.reply_next(Reply(status=401))
    pair.a.idp.fail_next_token("invalid_grant", 400)
    assert_problem(http.get(pair.a.bff_url + READ), 401, "login-required")


def _ended_from_the_sessions_list(pair: Pair, http: requests.Session) -> None:
    laptop = pair.a.logged_in()  # the same user, in another browser, ends this one
    listed = laptop.get(pair.a.bff_url + "/bff/sessions").json()["sessions"]
    [other] = [entry for entry in listed if not entry["current"]]
    assert laptop.delete(pair.a.bff_url + "/bff/sessions/" + other["id"]).status_code == 204


def _replaced_by_a_new_login(pair: Pair, http: requests.Session) -> None:
    old = session_id(http)
    assert login(http, pair.a.bff_url).status_code == 302  # the browser's previous session is ended
    assert session_id(http) != old


ENDINGS = {
    "logout": _logout,
    "backchannel-logout": _backchannel_logout,
    "invalid-grant": _invalid_grant,
    "ended-by-user": _ended_from_the_sessions_list,
    "replaced": _replaced_by_a_new_login,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_session_ended_on_one_instance_is_refused_by_the_other_once_the_announcement_arrives(
    pair: Pair, ending: str
) -> None:
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    sid = session_id(http)
    mark = pair.b_cache.epoch

    ENDINGS[ending](pair, http)

    assert pair.b_cache.wait_invalidated(sid, mark, WAIT), "B never received the announcement"
    assert_problem(on_b.get(pair.b_url + READ), 401, "not-authenticated")
    assert pair.a_cache.connected and pair.b_cache.connected  # refused on a live cache, not a bypass


def test_without_the_announcement_the_other_instance_would_serve_the_ended_session(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: A ends the session but announces nothing, and B answers from its cache."""
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    sid = session_id(http)
    monkeypatch.setattr(pair.a_cache, "announce", lambda sid: None)

    _logout(pair, http)

    assert pair.a.store.load(sid) is None  # ended in the store
    assert on_b.get(pair.b_url + READ).status_code == 200  # ... and still served from B's memory


def test_a_session_that_changed_while_the_other_was_not_listening_is_never_served(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Announcements sent while B's subscription is down are lost: B empties its cache and bypasses it
    until it listens again, and only then caches anew."""
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    other = pair.logged_in()
    assert pair.b_cache.connections == 1

    def refuse(channel: str) -> t.NoReturn:
        raise StoreUnavailable("refused by the test")

    monkeypatch.setattr(pair.b_store, "subscribe", refuse)
    killer = redis.Redis.from_url(t.cast(str, pair.a.settings.session_store))
    try:
        killer.client_kill_filter(_type="pubsub")  # B's (and A's) subscription connections drop
        assert pair.b_cache.wait_disconnected(WAIT)
        assert len(pair.b_cache) == 0
        # A change B cannot hear about: the record goes without any announcement.
        killer.delete(f"bff:s:{{{session_id(http)}}}")
    finally:
        killer.close()
    assert_problem(on_b.get(pair.b_url + READ), 401, "not-authenticated")

    other_on_b = pair.on_b(other)
    for _ in range(2):  # bypassed: every read goes to the store
        before = pair.b_store.round_trips
        assert other_on_b.get(pair.b_url + READ).status_code == 200
        assert pair.b_store.round_trips > before

    monkeypatch.undo()
    assert pair.b_cache.wait_connected(WAIT, connections=2)
    pair.cached_on_b(other)  # cached again once listening


def test_a_token_refreshed_by_one_instance_is_the_one_the_other_sends_next(pair: Pair) -> None:
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    first = pair.sent_by_b(on_b)
    mark = pair.b_cache.epoch

    pair.upstream.reply_next(Reply(status=401))  # the API refuses A's token: A refreshes and retries
    assert http.get(pair.a.bff_url + READ).status_code == 200
    refreshed = pair.upstream.seen[-1].headers["authorization"]
    assert refreshed != first

    assert pair.b_cache.wait_invalidated(session_id(http), mark, WAIT)
    assert pair.sent_by_b(on_b) == refreshed


def test_without_the_announcement_the_other_instance_would_send_its_cached_token(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    first = pair.sent_by_b(on_b)
    monkeypatch.setattr(pair.a_cache, "announce", lambda sid: None)

    pair.upstream.reply_next(Reply(status=401))
    assert http.get(pair.a.bff_url + READ).status_code == 200

    assert pair.sent_by_b(on_b) == first  # the stale copy: what the announcement prevents


# --- A cache hit keeps every other check -----------------------------------------------------------


@pytest.fixture
def clocked(make_pair: t.Callable[..., Pair]) -> tuple[Pair, ManualClock]:
    clock = ManualClock()
    pair = make_pair(clock=clock, session_idle_timeout=600, session_lifetime=1800)
    # Entries outlive every step below, so only the session's own deadlines can refuse them.
    pair.b_cache.max_age = 3600
    return pair, clock


def test_a_cached_session_is_refused_past_its_idle_timeout(clocked: tuple[Pair, ManualClock]) -> None:
    pair, clock = clocked
    on_b = pair.cached_on_b(pair.logged_in())
    clock.advance(601)
    assert_problem(on_b.get(pair.b_url + READ), 401, "not-authenticated")


def test_a_cached_session_is_refused_past_its_lifetime_even_while_active(clocked: tuple[Pair, ManualClock]) -> None:
    pair, clock = clocked
    on_b = pair.cached_on_b(pair.logged_in())
    for _ in range(3):
        clock.advance(599)
        assert on_b.get(pair.b_url + READ).status_code == 200  # active: the idle deadline slides
    clock.advance(5)  # 1802 s after login, 5 s after the last call
    assert_problem(on_b.get(pair.b_url + READ), 401, "not-authenticated")


def test_a_cache_hit_slides_the_idle_deadline_with_one_write_per_interval(
    clocked: tuple[Pair, ManualClock],
) -> None:
    pair, clock = clocked
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    seen = float(pair.b_store.load(session_id(http)).fields["seen"])  # type: ignore[union-attr]
    clock.advance(61)
    before = pair.b_store.round_trips
    assert on_b.get(pair.b_url + READ).status_code == 200
    assert pair.b_store.round_trips == before + 1  # the touch, and no load
    assert float(pair.b_store.load(session_id(http)).fields["seen"]) > seen  # type: ignore[union-attr]
    before = pair.b_store.round_trips
    assert on_b.get(pair.b_url + READ).status_code == 200
    assert pair.b_store.round_trips == before  # the entry carries the new deadline


def test_a_cached_session_whose_idle_slide_finds_it_gone_is_refused(clocked: tuple[Pair, ManualClock]) -> None:
    pair, clock = clocked
    http = pair.logged_in()
    on_b = pair.cached_on_b(http)
    pair.b_store.delete(session_id(http))  # ended with no announcement (the safety net's case)
    assert on_b.get(pair.b_url + READ).status_code == 200  # within the touch interval: the cached copy
    clock.advance(61)
    assert_problem(on_b.get(pair.b_url + READ), 401, "not-authenticated")  # the slide's write finds it gone


def test_a_cached_session_still_needs_the_anti_forgery_header_and_an_allowed_route(pair: Pair) -> None:
    on_b = pair.cached_on_b(pair.logged_in())
    count = len(pair.upstream.seen)
    assert_problem(on_b.get(pair.b_url + READ, headers={"X-CSRF": ""}), 403, "csrf")
    assert_problem(on_b.get(pair.b_url + READ, headers={"Origin": "https://evil.example"}), 403, "csrf")
    assert_problem(on_b.get(pair.b_url + "/me/v1/nowhere"), 404, "route-not-allowed")
    assert len(pair.upstream.seen) == count


def test_only_proxied_reads_are_served_from_the_cache(pair: Pair) -> None:
    on_b = pair.cached_on_b(pair.logged_in())
    for method, path in (("GET", "/bff/user"), ("GET", "/bff/sessions"),
                         ("DELETE", "/me/v1/authentication-methods/none")):
        before = pair.b_store.round_trips
        on_b.request(method, pair.b_url + path)
        assert pair.b_store.round_trips > before, f"{method} {path} did not read the store"


def test_an_unknown_message_empties_every_cache(pair: Pair) -> None:
    http = pair.logged_in()
    pair.cached_on_b(http)
    mark = pair.b_cache.epoch
    pair.a.store.publish(CHANNEL, FLUSH_ALL)
    assert pair.b_cache.wait_invalidated(session_id(http), mark, WAIT)
    assert len(pair.b_cache) == 0


def test_a_load_that_races_with_an_announcement_is_not_kept(pair: Pair) -> None:
    """The store was read before the session ended; the announcement arrived before the result was
    stored: the (stale) result is dropped."""
    http = pair.logged_in()
    cache = pair.b_cache
    assert cache.wait_connected(WAIT)
    sid = session_id(http)
    hit, ticket = cache.lookup(sid)
    assert hit is None and ticket is not None
    stale = pair.b_app.extensions["bff"].sessions.reload(sid)
    mark = cache.epoch
    _logout(pair, http)
    assert cache.wait_invalidated(sid, mark, WAIT)
    cache.put(stale, ticket, time.time() + 600)
    assert cache.lookup(sid)[0] is None


def test_the_channel_carries_a_digest_of_the_session_id_never_the_id(pair: Pair) -> None:
    http = pair.logged_in()
    pair.cached_on_b(http)
    sid = session_id(http)
    listener = redis.Redis.from_url(t.cast(str, pair.a.settings.session_store)).pubsub()
    listener.subscribe("bff:p:" + CHANNEL)
    try:
        assert listener.get_message(timeout=WAIT)["type"] == "subscribe"
        _logout(pair, http)
        message = listener.get_message(timeout=WAIT)
    finally:
        listener.close()
    assert message is not None and message["data"].startswith(digest(sid) + b":")
    assert sid.encode() not in message["data"]


# --- The stores ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "redis-sentinel", "redis-cluster"])
def test_a_message_published_on_one_store_reaches_a_subscription_of_another(
    kind: str, request: pytest.FixtureRequest, tmp_path: t.Any
) -> None:
    url = _store_url(kind, request, tmp_path)
    publisher, subscriber = open_store(url, prefix="cache-test:"), open_store(url, prefix="cache-test:")
    stranger = open_store(url, prefix="elsewhere:")
    try:
        assert publisher.pubsub
        subscription = subscriber.subscribe(CHANNEL)
        other = stranger.subscribe(CHANNEL)
        try:
            publisher.publish(CHANNEL, b"x" * 32)
            received: list[bytes] = []
            deadline = time.monotonic() + WAIT
            while not received and time.monotonic() < deadline:
                received += subscription.poll(0.1)
            assert received == [b"x" * 32]
            assert other.poll(0.2) == []  # another prefix is another channel
        finally:
            subscription.close()
            other.close()
    finally:
        for store in (publisher, subscriber, stranger):
            store.close()


@pytest.mark.slow
def test_a_cluster_subscription_raises_when_its_shard_fails_over_and_a_new_one_hears_the_new_primary(
    redis_cluster: t.Any,
) -> None:
    redis_cluster.heal()
    publisher, subscriber = open_store(redis_cluster.url), open_store(redis_cluster.url)
    try:
        subscription = subscriber.subscribe(CHANNEL)
        primary = redis_cluster.primary_of("bff:p:" + CHANNEL)
        redis_cluster.failover(redis_cluster.replica_of(primary))
        with pytest.raises(StoreUnavailable):  # the server ends it: messages may go elsewhere now
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                subscription.poll(0.1)
        subscription.close()

        renewed = None
        deadline = time.monotonic() + WAIT
        while renewed is None:  # as the cache's listener does: until the layout names the new primary
            try:
                renewed = subscriber.subscribe(CHANNEL)
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            publisher.publish(CHANNEL, b"y" * 32)
            received: list[bytes] = []
            deadline = time.monotonic() + WAIT
            while not received and time.monotonic() < deadline:
                received += renewed.poll(0.1)
            assert received == [b"y" * 32]
        finally:
            renewed.close()
    finally:
        publisher.close()
        subscriber.close()


def test_a_subscription_raises_once_its_server_stops_answering() -> None:
    server = RedisServer()
    server.start()
    try:
        store = open_store(server.url)
        subscription = store.subscribe(CHANNEL)
        server.freeze()
        try:
            with pytest.raises(StoreUnavailable):
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    subscription.poll(0.1)
        finally:
            server.thaw()
        store.close()
    finally:
        server.destroy()


def test_a_sqlite_store_has_no_cache_and_says_so(make_stack: StackFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bff.session.cache"):
        stack = make_stack(store="sqlite")
    assert stack.app.extensions["bff"].sessions.cache is None
    assert any("session cache off" in record.getMessage() and "SqliteStore" in record.getMessage()
               for record in caplog.records)
    http = stack.logged_in()
    before = stack.store.round_trips
    assert http.get(stack.bff_url + READ).status_code == 200
    assert http.get(stack.bff_url + READ).status_code == 200
    assert stack.store.round_trips >= before + 2


def test_with_the_setting_off_nothing_is_cached_but_changes_are_still_announced(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bff.session.cache"):
        stack = make_stack(session_cache=False)
    assert any("session cache off: BFF_SESSION_CACHE=off" in record.getMessage() for record in caplog.records)
    cache = cache_of(stack.app)
    assert not cache.enabled
    http = stack.logged_in()
    sid = session_id(http)
    for _ in range(2):
        before = stack.store.round_trips
        assert http.get(stack.bff_url + READ).status_code == 200
        assert stack.store.round_trips > before
    assert not cache.connected

    listener = redis.Redis.from_url(t.cast(str, stack.settings.session_store)).pubsub()
    listener.subscribe("bff:p:" + CHANNEL)
    try:
        assert listener.get_message(timeout=WAIT)["type"] == "subscribe"
        assert http.post(stack.bff_url + "/bff/logout").status_code == 200
        message = listener.get_message(timeout=WAIT)
    finally:
        listener.close()
    assert message is not None and message["data"].startswith(digest(sid) + b":")


def test_the_cache_is_on_by_default_and_says_so(make_stack: StackFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bff.session.cache"):
        stack = make_stack()
    assert cache_of(stack.app).enabled
    assert any(record.getMessage().startswith("session cache on") for record in caplog.records)
    assert MAX_AGE <= 5


# --- Two `bff serve` processes ---------------------------------------------------------------------


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _until(condition: t.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT}s for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_two_served_processes_refuse_a_session_ended_on_the_other(redis_url: str) -> None:
    """``bff serve`` (gevent workers) as deployed: B serves from its cache until A's logout arrives."""
    from bff.emulator import EmulatorConfig, EmulatorServer

    port_a, port_b, metrics_port = free_port(), free_port(), free_port()
    base_url = f"http://127.0.0.1:{port_a}"
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
    processes: list[BffProcess] = []
    try:
        processes.append(BffProcess(port_a, env))
        processes.append(BffProcess(port_b, {**env, "BFF_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"}))
        a, b = processes
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        hits = ("bff_session_cache_lookups_total", frozenset({("result", "hit")}))
        invalidations = ("bff_session_cache_invalidations_total", frozenset())

        http = bff_session(a.url)
        assert login(http, a.url).status_code == 302
        on_b = bff_session(b.url)
        on_b.cookies.set("bff-session", session_id(http))

        def served_from_cache() -> bool:
            before = _samples(metrics_url).get(hits, 0.0)
            assert on_b.get(b.url + READ).status_code == 200
            return _samples(metrics_url).get(hits, 0.0) > before

        _until(served_from_cache, "B to serve the session from its cache")
        received = _samples(metrics_url).get(invalidations, 0.0)

        assert http.post(a.url + "/bff/logout").status_code == 200

        _until(lambda: _samples(metrics_url).get(invalidations, 0.0) > received, "B to receive the logout")
        assert_problem(on_b.get(b.url + READ), 401, "not-authenticated")
    finally:
        for process in processes:
            process.stop()
        emulator.stop()
