"""One contract, every store: what the session, token and flow layers rely on.

The Redis backend runs the contract three ways: a plain ``redis://`` server, a TLS-only server
(``rediss://``, certificate from a throwaway CA) and through Sentinel (``redis+sentinel://``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import typing as t

import pytest
import redis
from redis.sentinel import MasterNotFoundError

from bff.errors import StoreUnavailable
from bff.store import SessionStore, open_store
from tests.support.redis_server import RedisServer, SentinelServer
from tests.support.tls import make_ca

STORES = ["redis", "redis-tls", "redis-sentinel", "sqlite"]


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
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[SessionStore]:
    opened = open_store(_store_url(request.param, request, tmp_path))
    yield opened
    opened.close()


def test_load_returns_none_for_unknown_session(store: SessionStore) -> None:
    assert store.load("nobody") is None


def test_write_then_load_returns_fields_and_ttl(store: SessionStore) -> None:
    store.write("s1", {"doc": b"{}", "rt": b"sealed"}, ttl=60)
    record = store.load("s1")
    assert record is not None
    assert record.fields == {"doc": b"{}", "rt": b"sealed"}
    assert record.ttl is not None and 55 < record.ttl <= 60


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
    store.write("s1", {"doc": b"a"}, ttl=5)
    assert store.update("s1", {"seen": b"1"}, ttl=120)
    record = store.load("s1")
    assert record is not None and record.ttl is not None and record.ttl > 100


def test_records_expire(store: SessionStore) -> None:
    store.write("s1", {"doc": b"a"}, ttl=0.2)
    time.sleep(0.4)
    assert store.load("s1") is None


def test_fenced_update_requires_holding_the_lock(store: SessionStore) -> None:
    store.write("s1", {"rt": b"old"}, ttl=60)
    assert store.update_fenced("s1", {"rt": b"stolen"}, "refresh:s1", "nobody") is False
    assert store.acquire("refresh:s1", "me", lease=5)
    assert store.update_fenced("s1", {"rt": b"new"}, "refresh:s1", "me") is True
    store.release("refresh:s1", "me")
    assert store.update_fenced("s1", {"rt": b"late"}, "refresh:s1", "me") is False
    record = store.load("s1")
    assert record is not None and record.fields["rt"] == b"new"


def test_fenced_update_fails_after_the_lease_lapsed(store: SessionStore) -> None:
    store.write("s1", {"rt": b"old"}, ttl=60)
    assert store.acquire("refresh:s1", "slow", lease=0.2)
    time.sleep(0.4)
    assert store.acquire("refresh:s1", "fast", lease=5)
    assert store.update_fenced("s1", {"rt": b"stale"}, "refresh:s1", "slow") is False
    assert store.update_fenced("s1", {"rt": b"fresh"}, "refresh:s1", "fast") is True


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
