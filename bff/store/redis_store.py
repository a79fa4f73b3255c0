"""Redis backend: standalone, TLS (``rediss://``) or Sentinel (``redis+sentinel://``).

Conditional writes are Lua scripts declared as writing (``#!lua``, Redis 7.0 and later), so a
read-only replica refuses them outright instead of answering "condition not met".

Keys: ``<prefix>s:<sid>`` (hash, one field per session field), ``<prefix>k:<key>`` (one-time
values), ``<prefix>l:<lock>`` (locks), ``<prefix>i:<index>`` (sets). Conditional writes are Lua
scripts, so "only if the session exists" and "only if I still hold the lock" are atomic with the
write they guard.

Every Redis error (connection refused, timeout, READONLY after a failover, LOADING) becomes
:class:`~bff.store.StoreUnavailable`: the caller answers 503 and keeps the session.
"""

from __future__ import annotations

import time
import typing as t
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .base import Record, SessionStore, StoreUnavailable

__all__ = ["RedisStore"]

P = t.ParamSpec("P")
R = t.TypeVar("R")

# Fail fast: a proxied call should not hang on a dead store; one quick retry absorbs a blip.
_TIMEOUT = 1.0
_PRIMARY_RECHECK = 0.2
# How long a guarded write waits for a replica's acknowledgement, and how often the number of
# connected replicas is read again.
_WAIT_MS = 500
_REPLICA_RECHECK = 2.0

_UPDATE = """#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# ARGV: guard field, expected value, new guard value ('' when the guard does not change), the number
# of fields to remove, those field names, then field/value pairs to set.
_UPDATE_CAS = """#!lua
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if ARGV[3] ~= '' and current == ARGV[3] then return 1 end
if current ~= ARGV[2] then return 0 end
local removing = tonumber(ARGV[4])
for i = 5, 4 + removing do redis.call('HDEL', KEYS[1], ARGV[i]) end
if #ARGV > 4 + removing then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + removing)) end
return 1
"""

_EXTEND = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _guard(method: t.Callable[P, R]) -> t.Callable[P, R]:
    """Count the round trip and turn any Redis failure into StoreUnavailable."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = t.cast(RedisStore, args[0])
        store.round_trips += 1
        try:
            store.follow_primary()
            return method(*args, **kwargs)
        except redis.RedisError as error:
            raise StoreUnavailable() from error

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _flatten(fields: t.Mapping[str, bytes]) -> list[t.Any]:
    flat: list[t.Any] = []
    for name, value in fields.items():
        flat.extend((name, value))
    return flat


class RedisStore(SessionStore):
    """A :class:`SessionStore` on Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "bff:") -> None:
        self._redis = client
        self._prefix = prefix
        self._update = client.register_script(_UPDATE)
        self._update_cas = client.register_script(_UPDATE_CAS)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self.round_trips = 0
        pool = client.connection_pool
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._primary_checked = 0.0
        self._replicas = 0
        self._replicas_checked = -_REPLICA_RECHECK

    def follow_primary(self) -> None:
        """Behind Sentinel, re-ask for the primary at most every ``_PRIMARY_RECHECK`` seconds.

        redis-py asks Sentinel only when it opens a connection, so after a planned failover pooled
        connections would keep writing to the old primary until it is demoted, and those writes would
        be lost (a rotated refresh token among them). ``get_master_address`` drops idle connections
        when the primary has moved.
        """
        if self._sentinel_pool is None:
            return
        now = time.monotonic()
        if now - self._primary_checked >= _PRIMARY_RECHECK:
            self._primary_checked = now
            self._sentinel_pool.get_master_address()  # type: ignore[no-untyped-call]

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "bff:") -> RedisStore:
        options: dict[str, t.Any] = {
            "socket_timeout": _TIMEOUT,
            "socket_connect_timeout": _TIMEOUT,
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
            "health_check_interval": 30,
            "max_connections": 64,
        }
        if url.startswith("redis+sentinel://"):
            return cls(_sentinel_client(url, options), prefix=prefix)
        return cls(redis.Redis.from_url(url, **options), prefix=prefix)

    # keys
    def _s(self, sid: str) -> str:
        return f"{self._prefix}s:{sid}"

    def _k(self, key: str) -> str:
        return f"{self._prefix}k:{key}"

    def _l(self, lock: str) -> str:
        return f"{self._prefix}l:{lock}"

    def _c(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def _i(self, index: str) -> str:
        return f"{self._prefix}i:{index}"

    @_guard
    def load(self, sid: str) -> Record | None:
        fields = t.cast("dict[bytes, bytes]", self._redis.hgetall(self._s(sid)))
        if not fields:
            return None
        return Record(fields={name.decode(): value for name, value in fields.items()})

    @_guard
    def write(self, sid: str, fields: t.Mapping[str, bytes], ttl: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._s(sid), mapping=t.cast(t.Any, dict(fields)))
        pipe.pexpire(self._s(sid), _ms(ttl))
        pipe.execute()

    @_guard
    def update(self, sid: str, fields: t.Mapping[str, bytes], *, ttl: float | None = None) -> bool:
        expire = "" if ttl is None else str(_ms(ttl))
        return bool(self._update(keys=[self._s(sid)], args=[expire, *_flatten(fields)]) == 1)

    @_guard
    def update_cas(
        self,
        sid: str,
        fields: t.Mapping[str, bytes],
        *,
        guard: str,
        expected: bytes,
        remove: t.Sequence[str] = (),
    ) -> bool:
        args = [guard, expected, fields.get(guard, b""), str(len(remove)), *remove, *_flatten(fields)]
        if self._update_cas(keys=[self._s(sid)], args=args) != 1:
            return False
        self._await_replica()
        return True

    def _await_replica(self) -> None:
        """Where the primary has replicas, wait until one acknowledged the writes so far.

        Replication is asynchronous: a write the primary accepted but no replica received is lost when
        a replica is promoted. ``WAIT`` closes that window for the writes that must not be lost (a
        rotated refresh token); raising here makes the caller repeat the (idempotent) write.
        """
        now = time.monotonic()
        if now - self._replicas_checked >= _REPLICA_RECHECK:
            info: t.Any = self._redis.info("replication")
            self._replicas = int(info.get("connected_slaves", 0))
            self._replicas_checked = now
        acknowledged: t.Any = self._redis.wait(1, _WAIT_MS) if self._replicas else 1
        if int(acknowledged) < 1:
            self._replicas_checked = -_REPLICA_RECHECK  # perhaps the replica left: read the count again
            raise StoreUnavailable("no replica acknowledged the write")

    @_guard
    def delete(self, sid: str) -> None:
        self._redis.delete(self._s(sid))

    @_guard
    def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False) -> bool:
        return bool(self._redis.set(self._k(key), value, px=_ms(ttl), nx=only_new))

    @_guard
    def get(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self._redis.get(self._k(key)))

    @_guard
    def take(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self._redis.getdel(self._k(key)))

    @_guard
    def acquire(self, lock: str, owner: str, lease: float) -> bool:
        return bool(self._redis.set(self._l(lock), owner, px=_ms(lease), nx=True))

    @_guard
    def extend(self, lock: str, owner: str, lease: float) -> bool:
        return bool(self._extend(keys=[self._l(lock)], args=[owner, _ms(lease)]) == 1)

    @_guard
    def lock_owner(self, lock: str) -> str | None:
        value = t.cast("bytes | None", self._redis.get(self._l(lock)))
        return None if value is None else value.decode()

    @_guard
    def release(self, lock: str, owner: str) -> None:
        self._release(keys=[self._l(lock)], args=[owner])

    @_guard
    def index_add(self, index: str, member: str, ttl: float) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._i(index), member)
        # Only ever lengthen: a short-lived member must not shorten the life of the others.
        pipe.pexpire(self._i(index), _ms(ttl), gt=True)
        pipe.pexpire(self._i(index), _ms(ttl), nx=True)
        pipe.execute()

    @_guard
    def index_members(self, index: str) -> set[str]:
        members: t.Any = self._redis.smembers(self._i(index))
        return {t.cast(bytes, member).decode() for member in members}

    @_guard
    def index_remove(self, index: str, member: str) -> None:
        self._redis.srem(self._i(index), member)

    @_guard
    def incr(self, key: str, amount: int, window: float) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(self._c(key), amount)
        pipe.pexpire(self._c(key), _ms(window), nx=True)
        return int(pipe.execute()[0])

    @_guard
    def counter(self, key: str) -> tuple[int, float]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._c(key))
        pipe.pttl(self._c(key))
        value, ttl = pipe.execute()
        return (int(value), max(0.0, int(ttl) / 1000)) if value is not None else (0, 0.0)

    @_guard
    def ping(self) -> None:
        # A replica answers PING but refuses writes (READONLY after a failover): test a write, and
        # take it back in the same transaction so that probing leaves no key behind.
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._k("ping"), b"1", px=5000)
        pipe.delete(self._k("ping"))
        pipe.execute()

    def close(self) -> None:
        self._redis.close()


def _sentinel_client(url: str, options: dict[str, t.Any]) -> redis.Redis:
    """``redis+sentinel://[:password@]host:port[,host:port]/service_name[?db=N]``."""
    parts = urlsplit(url)
    hosts_part = parts.netloc.rsplit("@", 1)[-1]
    password = unquote(parts.password) if parts.password else None
    service = parts.path.strip("/")
    if not service:
        raise ValueError("redis+sentinel:// URL needs the service name as its path")
    nodes: list[tuple[str, int]] = []
    for node in hosts_part.split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host or node, int(port) if host else 26379))
    query = parse_qs(parts.query)
    db = int(query.get("db", ["0"])[0])
    sentinel_options = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_options, **sentinel_options)  # type: ignore[no-untyped-call]
    client_options = {k: v for k, v in options.items() if k != "max_connections"}
    return t.cast(
        redis.Redis,
        sentinel.master_for(service, password=password, db=db, **client_options),  # type: ignore[no-untyped-call]
    )
