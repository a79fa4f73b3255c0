"""One contract, every store: what the session, token and flow layers rely on.

The Redis backend runs the contract four ways: a plain ``redis://`` server, a TLS-only server
(``rediss://``, certificate from a throwaway CA), through Sentinel (``redis+sentinel://``) and on a
Redis Cluster of three primaries with a replica each (``redis+cluster://``; more in ``test_cluster``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing as t

import pytest
import redis
from redis.sentinel import MasterNotFoundError

from bff.errors import StoreUnavailable
from bff.store import SessionStore, open_store
from tests.support.redis_server import RedisCluster, RedisServer, SentinelServer
from tests.support.tls import make_ca

STORES = ["redis", "redis-tls", "redis-sentinel", "redis-cluster", "sqlite"]


def _store_url(kind: str, request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    # Servers are looked up lazily, so selecting one kind (``-k sqlite``) starts only what it needs.
    if kind == "redis":
        return t.cast(str, request.getfixturevalue("redis_url"))
    if kind == "redis-tls":
        tls_server: RedisServer = request.getfixturevalue("redis_tls_server")
        tls_server.flush()
        return tls_server.url
    if kind == "redis-sentinel":
        sentinel: SentinelServer = request.getfixturevalue("redis_sentinel")
        sentinel.primary.flush()
        return sentinel.url
    if kind == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.heal()  # whole again, should a failover test have killed a node
        cluster.flush()
        return cluster.url
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[SessionStore]:
    opened = open_store(_store_url(request.param, request, tmp_path))
    yield opened
    opened.close()


def test_load_returns_none_for_unknown_session(store: SessionStore) -> None:
    assert store.load("nobody") is None


def test_write_then_load_returns_the_fields(store: SessionStore) -> None:
    store.write("s1", {"doc": b"{}", "rt": b"sealed"}, ttl=60)
    record = store.load("s1")
    assert record is not None
    assert record.fields == {"doc": b"{}", "rt": b"sealed"}


def test_fields_are_written_individually_without_losing_others(store: SessionStore) -> None:
    store.write("s1", {"doc": b"a", "rt": b"r1"}, ttl=60)
    assert store.update("s1", {"rt": b"r2"})
    store.write("s1", {"doc": b"b"}, ttl=60)
    record = store.load("s1")
    assert record is not None and record.fields == {"doc": b"b", "rt": b"r2"}


def test_update_never_resurrects_a_deleted_session(store: SessionStore) -> None:
    store.write("s1", {"doc": b"a"}, ttl=60)
    store.delete("s1")
    assert store.update("s1", {"seen": b"1"}) is False
    assert store.load("s1") is None


def test_update_can_extend_the_ttl(store: SessionStore) -> None:
    store.write("s1", {"doc": b"a"}, ttl=0.3)
    assert store.update("s1", {"seen": b"1"}, ttl=120)
    time.sleep(0.5)
    record = store.load("s1")
    assert record is not None and record.fields == {"doc": b"a", "seen": b"1"}


def test_records_expire(store: SessionStore) -> None:
    store.write("s1", {"doc": b"a"}, ttl=0.2)
    time.sleep(0.4)
    assert store.load("s1") is None


def test_guarded_update_writes_only_over_the_expected_value(store: SessionStore) -> None:
    store.write("s1", {"rt": b"old", "at:read": b"a"}, ttl=60)
    assert store.update_cas("s1", {"rt": b"stolen"}, guard="rt", expected=b"other") is False
    assert store.update_cas("s1", {"rt": b"new", "at:read": b"b"}, guard="rt", expected=b"old", remove=("ri",)) is True
    # Repeating the same write after an unclear failure is recognised as done, not refused.
    assert store.update_cas("s1", {"rt": b"new", "at:read": b"b"}, guard="rt", expected=b"old") is True
    assert store.update_cas("s1", {"rt": b"late"}, guard="rt", expected=b"old") is False
    record = store.load("s1")
    assert record is not None and record.fields == {"rt": b"new", "at:read": b"b"}


def test_guarded_update_can_remove_fields_and_never_resurrects(store: SessionStore) -> None:
    store.write("s1", {"rt": b"t", "ri": b"1"}, ttl=60)
    assert store.update_cas("s1", {}, guard="rt", expected=b"t", remove=("ri",)) is True
    record = store.load("s1")
    assert record is not None and record.fields == {"rt": b"t"}
    store.delete("s1")
    assert store.update_cas("s1", {"rt": b"u"}, guard="rt", expected=b"t") is False
    assert store.load("s1") is None


def test_lock_owner_names_the_holder(store: SessionStore) -> None:
    assert store.lock_owner("refresh:s1") is None
    assert store.acquire("refresh:s1", "me", lease=5)
    assert store.lock_owner("refresh:s1") == "me"
    store.release("refresh:s1", "me")
    assert store.lock_owner("refresh:s1") is None


def test_lock_is_exclusive_until_released_or_expired(store: SessionStore) -> None:
    assert store.acquire("l", "a", lease=5)
    assert not store.acquire("l", "b", lease=5)
    store.release("l", "b")  # not the owner: no effect
    assert not store.acquire("l", "b", lease=5)
    store.release("l", "a")
    assert store.acquire("l", "b", lease=0.2)
    time.sleep(0.4)
    assert store.acquire("l", "c", lease=5)


def test_extend_renews_only_the_owners_lease(store: SessionStore) -> None:
    assert store.acquire("l", "a", lease=0.3)
    assert not store.extend("l", "b", lease=5)
    assert store.extend("l", "a", lease=5)
    time.sleep(0.5)
    assert not store.acquire("l", "b", lease=5)


def test_only_one_of_many_concurrent_acquirers_wins(store: SessionStore) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(name: str) -> None:
        barrier.wait()
        if store.acquire("race", name, lease=5):
            winners.append(name)

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_take_returns_a_value_exactly_once(store: SessionStore) -> None:
    store.put("login:abc", b"tx", ttl=60)
    assert store.get("login:abc") == b"tx"
    assert store.take("login:abc") == b"tx"
    assert store.take("login:abc") is None


def test_put_only_new_refuses_an_existing_key(store: SessionStore) -> None:
    assert store.put("jti:1", b"1", ttl=60, only_new=True)
    assert not store.put("jti:1", b"2", ttl=60, only_new=True)
    assert store.get("jti:1") == b"1"


def test_one_time_values_expire(store: SessionStore) -> None:
    store.put("k", b"v", ttl=0.2)
    time.sleep(0.4)
    assert store.take("k") is None


def test_index_members_can_be_added_and_removed(store: SessionStore) -> None:
    store.index_add("sub:alice", "s1", ttl=60)
    store.index_add("sub:alice", "s2", ttl=60)
    assert store.index_members("sub:alice") == {"s1", "s2"}
    store.index_remove("sub:alice", "s1")
    assert store.index_members("sub:alice") == {"s2"}
    assert store.index_members("sub:bob") == set()


def test_counters_add_up_within_the_window_they_started_with(store: SessionStore) -> None:
    assert store.counter("rl:a") == (0, 0.0)
    assert store.incr("rl:a", 1, window=0.5) == 1
    assert store.incr("rl:a", 2, window=60) == 3  # a later window does not extend the first
    value, left = store.counter("rl:a")
    assert value == 3 and 0 < left <= 0.5
    time.sleep(0.7)
    assert store.counter("rl:a") == (0, 0.0)


def test_ping_succeeds_on_a_healthy_store(store: SessionStore) -> None:
    store.ping()


def test_a_dead_redis_raises_store_unavailable_and_recovers(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    store.write("s1", {"doc": b"a"}, ttl=60)
    redis_server.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.load("s1")
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        redis_server.start()
    store.ping()
    store.close()


def test_an_unreadable_sqlite_file_raises_store_unavailable(tmp_path: t.Any) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.close()
    (tmp_path / "s.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreUnavailable):
        store.load("s1")


def test_unknown_store_scheme_is_rejected() -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store("memcached://127.0.0.1")


# TLS ----------------------------------------------------------------------------------------------


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@pytest.mark.parametrize("trust", ["another-ca", "system-trust-store"])
def test_tls_refuses_a_server_certificate_the_store_does_not_trust(
    trust: str, redis_tls_server: RedisServer, tmp_path: t.Any
) -> None:
    # The server's certificate comes from a CA this store was not told to trust: no session data
    # may be read from or written to it, and the failure is the 503 kind, not "no session".
    url = f"rediss://127.0.0.1:{redis_tls_server.port}/0"
    if trust == "another-ca":
        url += f"?ssl_ca_certs={make_ca(tmp_path, 'another-ca').pem}"
    store = open_store(url)
    try:
        calls: list[t.Callable[[], object]] = [
            lambda: store.load("s1"),
            lambda: store.write("s1", {"doc": b"a"}, ttl=60),
            store.ping,
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert any("certificate verify failed" in str(error) for error in _cause_chain(raised.value))
    finally:
        store.close()


def test_tls_store_talks_to_the_server_its_ca_issued(redis_tls_server: RedisServer) -> None:
    # The contract suite runs over this URL too; here, also check the data really went over TLS
    # to that server (its only listener is the TLS port).
    redis_tls_server.flush()
    store = open_store(redis_tls_server.url)
    try:
        store.write("s1", {"doc": b"over-tls"}, ttl=60)
    finally:
        store.close()
    with redis_tls_server.client() as client:
        assert client.hget("bff:s:{s1}", "doc") == b"over-tls"
        assert client.config_get("port") == {"port": "0"}


# Replication and Sentinel ---------------------------------------------------------------------


@dataclasses.dataclass
class Replicated:
    primary: RedisServer
    replica: RedisServer


@pytest.fixture
def replicated() -> t.Iterator[Replicated]:
    """A private primary and one replica of it, synced."""
    primary = RedisServer()
    replica = RedisServer(replica_of=primary)
    try:
        primary.start()
        replica.start()
        replica.wait_until_synced()
        yield Replicated(primary, replica)
    finally:
        replica.destroy()
        primary.destroy()


@pytest.fixture
def sentinel(replicated: Replicated) -> t.Iterator[SentinelServer]:
    """A Sentinel watching ``replicated`` (it has seen the replica, so it can fail over)."""
    server = SentinelServer(replicated.primary)
    try:
        server.start(replicas=1)
        yield server
    finally:
        server.destroy()


def repeat_until_acknowledged(write: t.Callable[[], bool], timeout: float = 5.0) -> bool:
    """What the token manager does with a guarded write that raised: repeat it for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return write()
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the write was never acknowledged"
            time.sleep(0.05)


def _replicate(primary: RedisServer) -> None:
    """Wait until the replica has every write made so far.

    WAIT counts the writes of its own connection only (a fresh one answers at once), so this
    connection writes first: a write after all the others, which the replica can only have after them.
    """
    with primary.client() as client:
        client.set("replicated", b"1")
        client.delete("replicated")
        assert client.wait(1, 2000) == 1, "the replica did not acknowledge the write"


def test_a_write_to_a_read_only_replica_raises_store_unavailable(replicated: Replicated) -> None:
    # A standalone URL that still names a replica (say, the old primary after a failover).
    primary = open_store(replicated.primary.url)
    try:
        primary.write("s1", {"doc": b"a"}, ttl=60)
        assert primary.acquire("refresh:s1", "me", lease=30)
    finally:
        primary.close()
    _replicate(replicated.primary)

    store = open_store(replicated.replica.url)
    try:
        record = store.load("s1")  # a replica serves reads...
        assert record is not None and record.fields == {"doc": b"a"}
        writes: list[t.Callable[[], object]] = [  # ...but every kind of write is refused
            lambda: store.write("s1", {"doc": b"b"}, ttl=60),
            lambda: store.update("s1", {"doc": b"b"}),
            lambda: store.update_cas("s1", {"rt": b"b"}, guard="rt", expected=b"a"),
            lambda: store.delete("s1"),
            lambda: store.put("k", b"v", ttl=60),
            lambda: store.take("k"),
            lambda: store.acquire("l", "me", lease=5),
            lambda: store.extend("refresh:s1", "me", lease=5),
            lambda: store.release("refresh:s1", "me"),
            lambda: store.index_add("sub:alice", "s1", ttl=60),
            lambda: store.index_remove("sub:alice", "s1"),
            store.ping,
        ]
        for write in writes:
            with pytest.raises(StoreUnavailable) as raised:
                write()
            assert any(isinstance(error, redis.exceptions.ReadOnlyError) for error in _cause_chain(raised.value))
    finally:
        store.close()
    with replicated.primary.client() as client:
        assert client.hgetall("bff:s:{s1}") == {b"doc": b"a"}


def test_a_guarded_write_returns_only_once_the_replica_has_it(replicated: Replicated) -> None:
    store = open_store(replicated.primary.url)
    try:
        store.write("s1", {"rt": b"old"}, ttl=60)
        replicated.replica.freeze()  # connected, but it acknowledges nothing
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.update_cas("s1", {"rt": b"new"}, guard="rt", expected=b"old")
            assert time.monotonic() - began >= 0.4, "the write did not wait for the replica"
        finally:
            replicated.replica.thaw()
        # Repeating the write that raised is safe (and may raise again while the replica catches up);
        # once it returns, the replica has it.
        assert repeat_until_acknowledged(lambda: store.update_cas("s1", {"rt": b"new"}, guard="rt", expected=b"old"))
    finally:
        store.close()
    with replicated.replica.client() as client:
        assert client.hget("bff:s:{s1}", "rt") == b"new"


@pytest.mark.slow
def test_sentinel_failover_answers_unavailable_then_follows_the_new_primary(
    replicated: Replicated, sentinel: SentinelServer
) -> None:
    store = open_store(sentinel.url)
    try:
        store.write("s1", {"doc": b"before"}, ttl=60)
        assert sentinel.master_address() == ("127.0.0.1", replicated.primary.port)
        _replicate(replicated.primary)

        replicated.primary.kill()  # the primary's host is lost

        # Until Sentinel has promoted the replica, every call is a 503, never "no session".
        with pytest.raises(StoreUnavailable):
            store.update("s1", {"seen": b"1"})
        with pytest.raises(StoreUnavailable):
            store.ping()
        failures: list[StoreUnavailable] = []
        deadline = time.monotonic() + 15
        while True:
            try:
                record = store.load("s1")
                break
            except StoreUnavailable as error:
                failures.append(error)
            assert time.monotonic() < deadline, "the store never reached the promoted replica"
            time.sleep(0.05)
        assert record is not None, "the session vanished during the failover"
        assert record.fields == {"doc": b"before"}
        # Some of the 503s came while Sentinel itself had no healthy primary to name.
        assert any(
            isinstance(error, MasterNotFoundError) for failure in failures for error in _cause_chain(failure)
        )

        # The same store object now writes through the new primary.
        assert sentinel.master_address() == ("127.0.0.1", replicated.replica.port)
        assert store.update("s1", {"doc": b"after"}) is True
        store.write("s2", {"doc": b"new"}, ttl=60)
        store.ping()
    finally:
        store.close()
    assert replicated.replica.role() == "master"
    with replicated.replica.client() as client:
        assert client.hgetall("bff:s:{s1}") == {b"doc": b"after"}
        assert client.hgetall("bff:s:{s2}") == {b"doc": b"new"}


@pytest.mark.slow
def test_after_a_planned_failover_writes_go_to_the_new_primary(
    replicated: Replicated, sentinel: SentinelServer
) -> None:
    # SENTINEL FAILOVER promotes the replica while the old primary keeps running; Sentinel
    # demotes the old primary only some seconds after it has switched over. Once Sentinel names
    # the new primary, a store that was connected to the old one must write to the new one.
    store = open_store(sentinel.url)
    try:
        store.write("s1", {"doc": b"before"}, ttl=60)  # also leaves a pooled connection open
        _replicate(replicated.primary)
        with sentinel.client() as client:
            assert client.sentinel_failover(sentinel.service)
        sentinel.wait_for_primary(replicated.replica.port)

        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.update("s1", {"doc": b"after"}) is True, "the session vanished"
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never reached the new primary"
                time.sleep(0.05)
        assert replicated.primary.role() == "master", "Sentinel already demoted the old primary"
        with replicated.replica.client() as client:
            assert client.hget("bff:s:{s1}", "doc") == b"after", "the write went to the old primary"
    finally:
        store.close()
