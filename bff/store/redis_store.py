"""Redis backends: standalone, TLS (``rediss://``) or Sentinel (``redis+sentinel://``), and what every
Redis store shares (the key layout, the Lua scripts, the error policy and the durable write).

Key layout (the same on a standalone server, behind Sentinel and on a Redis Cluster):

* ``<prefix>s:{<sid>}`` — a session record (hash, one field per session field);
* ``<prefix>l:<lock>`` — locks; a session's own locks name its id as a hash tag too
  (``<prefix>l:refresh:{<sid>}``, ``<prefix>l:connect-slot:{<sid>}:<n>``, see :mod:`bff.session.record`);
* ``<prefix>k:<key>`` — one-time values (transactions, replay guards);
* ``<prefix>i:<index>`` — indexes (sets: ``sub:<sub>`` and ``idp-sid:<sid>`` to session ids);
* ``<prefix>c:<key>`` — counters (rate limits), each with its window as TTL.

The braces are a Redis Cluster *hash tag*: only the text between them chooses the key's slot, so a
session's record, refresh lock and connect slots always live on one shard, and a failover moves them
together. The tag chooses a slot and nothing else: keys stay distinct strings, so a crafted id cannot
reach another session's key. The prefix must not contain braces (a tag in the prefix would put every
key in one slot). Indexes and one-time values are spread over the slots; back-channel logout reads an
index on one shard and ends each session it names on that session's shard, one key at a time.

Every operation touches one key: a plain command, or a Lua script run on that one key. Scripts that
write are declared as writing (``#!lua``, Redis 7.0 and later), so a read-only replica refuses them
outright instead of answering "condition not met", and "only if the session exists" and "only if I
still hold the lock" are atomic with the write they guard.

Every Redis error (connection refused, timeout, READONLY after a failover, LOADING, and on a cluster
CLUSTERDOWN, TRYAGAIN or a slot nobody serves) becomes :class:`~bff.store.StoreUnavailable`: the
caller answers 503 and keeps the session.
"""

from __future__ import annotations

import hashlib
import threading
import time
import typing as t
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .base import Record, SessionStore, StoreUnavailable

if t.TYPE_CHECKING:
    from redis.cluster import RedisCluster

__all__ = [
    "REDIS_ERRORS",
    "RedisKeyspace",
    "RedisStore",
    "ReplicaCounts",
    "Script",
    "client_options",
    "run_acknowledged",
]

P = t.ParamSpec("P")
R = t.TypeVar("R")

# Fail fast: a proxied call should not hang on a dead store; one quick retry absorbs a blip.
_TIMEOUT = 1.0
_RETRIES = 1
_POOL_SIZE = 64
_PRIMARY_RECHECK = 0.2
# How long a guarded write waits for a replica's acknowledgement, and how often the number of
# connected replicas is read again.
_WAIT_MS = 500
_REPLICA_RECHECK = 2.0

#: What a Redis client raises; a cluster client's own exceptions do not derive from RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA-1, run by ``EVALSHA`` with ``EVAL`` as the fallback on ``NOSCRIPT``.

    Not ``SCRIPT LOAD``: on a cluster that goes to every primary, and one shard failing over would
    then fail writes on all the others.
    """

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode(), usedforsecurity=False).hexdigest())


# ARGV: TTL in ms, then field/value pairs.
_WRITE = Script("""#!lua
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""")

_UPDATE = Script("""#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
""")

# ARGV: guard field, expected value, new guard value ('' when the guard does not change), the number
# of fields to remove, those field names, then field/value pairs to set.
# A success always ends with a write (the guard's value, again): WAIT on this connection then covers
# every earlier write to the record, also a first attempt whose reply was lost and which this call
# repeats (it finds the work done and would otherwise write nothing).
_UPDATE_CAS = Script("""#!lua
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if not (ARGV[3] ~= '' and current == ARGV[3]) then
  if current ~= ARGV[2] then return 0 end
  local removing = tonumber(ARGV[4])
  for i = 5, 4 + removing do redis.call('HDEL', KEYS[1], ARGV[i]) end
  if #ARGV > 4 + removing then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + removing)) end
end
local final = redis.call('HGET', KEYS[1], ARGV[1])
if final then redis.call('HSET', KEYS[1], ARGV[1], final) end
return 1
""")

_EXTEND = Script("""#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
""")

_RELEASE = Script("""#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# ARGV: member, TTL in ms. Only ever lengthen: a short-lived member must not shorten the others' life.
_INDEX_ADD = Script("""#!lua
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
return 1
""")

# ARGV: amount, window in ms. The window starts with the counter and is never extended.
_INCR = Script("""#!lua
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
return value
""")

# A read (a replica may answer it): the counter's value (nil when absent) and its TTL in ms.
_COUNTER = Script("""#!lua flags=no-writes
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
""")

# A replica answers PING but refuses writes (READONLY after a failover): probe a write, and take it
# back in the same script so that probing leaves no key behind.
_PING = Script("""#!lua
redis.call('SET', KEYS[1], '1', 'PX', 5000)
redis.call('DEL', KEYS[1])
return 1
""")


def _guard(method: t.Callable[P, R]) -> t.Callable[P, R]:
    """Count the round trip and turn any Redis failure into StoreUnavailable."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = t.cast(RedisKeyspace, args[0])
        store.round_trips += 1
        try:
            store.before_call()
            return method(*args, **kwargs)
        except REDIS_ERRORS as error:
            raise StoreUnavailable() from error

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def client_options() -> dict[str, t.Any]:
    """Timeouts and retry policy shared by every Redis store (a fresh ``Retry`` each call)."""
    return {
        "socket_timeout": _TIMEOUT,
        "socket_connect_timeout": _TIMEOUT,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=_RETRIES),
        "max_connections": _POOL_SIZE,
    }


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _flatten(fields: t.Mapping[str, bytes]) -> list[t.Any]:
    flat: list[t.Any] = []
    for name, value in fields.items():
        flat.extend((name, value))
    return flat


class ReplicaCounts:
    """How many replica acknowledgements a write to each primary must wait for (0 or 1).

    Read from ``INFO replication`` at most every few seconds. A primary that has ever been seen with a
    replica keeps requiring one, even when it reports none: that is what a primary looks like in the
    moment after a failover promoted its replica elsewhere, before it is demoted (and its data thrown
    away). Writes it accepts then would be lost, so they must fail and be repeated against the new
    primary. A primary is recognised by its replication id, which a promotion changes: a freshly
    promoted primary that has no replica yet is written to without waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}
        self._replicated: set[str] = set()

    def of(self, name: str, node: redis.Redis) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._counts.get(name)
        if cached is not None and now - cached[1] < _REPLICA_RECHECK:
            return cached[0]
        info = t.cast("dict[str, t.Any]", node.info("replication"))
        count = int(info.get("connected_slaves", 0))
        replid = str(info.get("master_replid", ""))
        with self._lock:
            if count > 0:
                self._replicated.add(replid)
            required = 1 if count > 0 or replid in self._replicated else 0
            self._counts[name] = (required, now)
        return required

    def forget(self, name: str) -> None:
        """Read the count again next time (perhaps the replica left, or the primary moved)."""
        with self._lock:
            self._counts.pop(name, None)


def run_acknowledged(
    node: redis.Redis, script: Script, key: str, args: t.Sequence[t.Any], replicas: int, *, asking: bool = False
) -> tuple[t.Any, t.Any]:
    """Run ``script`` on ``key`` and then ``WAIT`` for ``replicas`` acknowledgements, on one connection.

    Returns the script's reply and WAIT's, either possibly an exception (a redirection, READONLY).
    ``WAIT`` counts the writes of the connection it is sent on: sent on another pooled connection, it
    can answer at once for a write no replica has received. Both go in one pipeline (one connection,
    one round trip); ``EVAL`` rather than ``EVALSHA`` so that the pipeline never needs a second try.
    """
    with node.pipeline(transaction=False) as pipe:
        if asking:
            pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
        pipe.eval(script.body, 1, key, *args)
        if replicas:
            pipe.wait(replicas, _WAIT_MS)
        results = pipe.execute(raise_on_error=False)
    if asking:
        results = results[1:]
    return results[0], (results[1] if replicas else 0)


class RedisKeyspace(SessionStore):
    """The store's operations on any Redis client; subclasses provide the client and the durable write.

    Every method touches one key (see the module docstring), which is what lets one implementation
    serve a single server and a cluster alike.
    """

    def __init__(self, *, prefix: str = "bff:") -> None:
        self._prefix = prefix
        self.round_trips = 0

    def before_call(self) -> None:
        """Runs before every operation (inside the error guard)."""

    def client(self) -> redis.Redis | RedisCluster:
        """The client every single-key command goes through."""
        raise NotImplementedError

    def write_durably(self, key: str, script: Script, args: t.Sequence[t.Any]) -> bool:
        """Run a guarded write and return whether it applied; if it did, a replica has it (see ``update_cas``)."""
        raise NotImplementedError

    # keys
    def _s(self, sid: str) -> str:
        return f"{self._prefix}s:{{{sid}}}"

    def _k(self, key: str) -> str:
        return f"{self._prefix}k:{key}"

    def _l(self, lock: str) -> str:
        return f"{self._prefix}l:{lock}"

    def _i(self, index: str) -> str:
        return f"{self._prefix}i:{index}"

    def _c(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def _eval(self, script: Script, key: str, *args: t.Any) -> t.Any:
        client = self.client()
        try:
            return client.evalsha(script.sha, 1, key, *args)
        except NoScriptError:
            return client.eval(script.body, 1, key, *args)

    @_guard
    def load(self, sid: str) -> Record | None:
        fields = t.cast("dict[bytes, bytes]", self.client().hgetall(self._s(sid)))
        if not fields:
            return None
        return Record(fields={name.decode(): value for name, value in fields.items()})

    @_guard
    def write(self, sid: str, fields: t.Mapping[str, bytes], ttl: float) -> None:
        self._eval(_WRITE, self._s(sid), _ms(ttl), *_flatten(fields))

    @_guard
    def update(self, sid: str, fields: t.Mapping[str, bytes], *, ttl: float | None = None) -> bool:
        expire = "" if ttl is None else str(_ms(ttl))
        return bool(self._eval(_UPDATE, self._s(sid), expire, *_flatten(fields)) == 1)

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
        return self.write_durably(self._s(sid), _UPDATE_CAS, args)

    @_guard
    def delete(self, sid: str) -> None:
        self.client().delete(self._s(sid))

    @_guard
    def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False) -> bool:
        return bool(self.client().set(self._k(key), value, px=_ms(ttl), nx=only_new))

    @_guard
    def get(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self.client().get(self._k(key)))

    @_guard
    def take(self, key: str) -> bytes | None:
        return t.cast("bytes | None", self.client().getdel(self._k(key)))

    @_guard
    def acquire(self, lock: str, owner: str, lease: float) -> bool:
        return bool(self.client().set(self._l(lock), owner, px=_ms(lease), nx=True))

    @_guard
    def extend(self, lock: str, owner: str, lease: float) -> bool:
        return bool(self._eval(_EXTEND, self._l(lock), owner, _ms(lease)) == 1)

    @_guard
    def lock_owner(self, lock: str) -> str | None:
        value = t.cast("bytes | None", self.client().get(self._l(lock)))
        return None if value is None else value.decode()

    @_guard
    def release(self, lock: str, owner: str) -> None:
        self._eval(_RELEASE, self._l(lock), owner)

    @_guard
    def index_add(self, index: str, member: str, ttl: float) -> None:
        self._eval(_INDEX_ADD, self._i(index), member, _ms(ttl))

    @_guard
    def index_members(self, index: str) -> set[str]:
        members = t.cast("set[bytes]", self.client().smembers(self._i(index)))
        return {member.decode() for member in members}

    @_guard
    def index_remove(self, index: str, member: str) -> None:
        self.client().srem(self._i(index), member)

    @_guard
    def incr(self, key: str, amount: int, window: float) -> int:
        return int(self._eval(_INCR, self._c(key), amount, _ms(window)))

    @_guard
    def counter(self, key: str) -> tuple[int, float]:
        value, ttl = self._eval(_COUNTER, self._c(key))
        return (int(value), max(0.0, int(ttl) / 1000)) if value is not None else (0, 0.0)

    @_guard
    def ping(self) -> None:
        self.probe()

    def probe(self) -> None:
        """The write probe behind :meth:`ping` (a cluster probes every shard)."""
        self._probe_key(self._k("ping"))

    def _probe_key(self, key: str) -> None:
        self._eval(_PING, key)


class RedisStore(RedisKeyspace):
    """A :class:`SessionStore` on one Redis server, directly or through Sentinel."""

    def __init__(self, client: redis.Redis, *, prefix: str = "bff:") -> None:
        super().__init__(prefix=prefix)
        self._redis = client
        pool = client.connection_pool
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._primary_checked = 0.0
        self._replicas = ReplicaCounts()

    def before_call(self) -> None:
        self.follow_primary()

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
        options = {**client_options(), "health_check_interval": 30}
        if url.startswith("redis+sentinel://"):
            return cls(_sentinel_client(url, options), prefix=prefix)
        return cls(redis.Redis.from_url(url, **options), prefix=prefix)

    def client(self) -> redis.Redis:
        return self._redis

    def write_durably(self, key: str, script: Script, args: t.Sequence[t.Any]) -> bool:
        """Where the primary has replicas, return only once one acknowledged the write.

        Replication is asynchronous: a write the primary accepted but no replica received is lost when
        a replica is promoted. ``WAIT`` closes that window for the writes that must not be lost (a
        rotated refresh token); raising here makes the caller repeat the (idempotent) write.
        """
        replicas = min(1, self._replicas.of("primary", self._redis))
        outcome, acked = run_acknowledged(self._redis, script, key, args, replicas)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome != 1:
            return False
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < replicas:
            self._replicas.forget("primary")
            raise StoreUnavailable("no replica acknowledged the write")
        return True

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
    master_options = {k: v for k, v in options.items() if k != "max_connections"}
    return t.cast(
        redis.Redis,
        sentinel.master_for(service, password=password, db=db, **master_options),  # type: ignore[no-untyped-call]
    )
