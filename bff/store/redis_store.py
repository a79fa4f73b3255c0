"""Redis backends: standalone, TLS (``rediss://``) or Sentinel (``redis+sentinel://``), and what every
Redis store shares (the key layout, the Lua scripts, the error policy and the durable write).

Key layout (the same on a standalone server, behind Sentinel and on a Redis Cluster):

* ``<prefix>s:{<sid>}`` — a session record (hash, one field per session field);
* ``<prefix>l:<lock>`` — locks; a session's own locks name its id as a hash tag too
  (``<prefix>l:refresh:{<sid>}``, ``<prefix>l:connect-slot:{<sid>}:<n>``, see :mod:`bff.session.record`);
* ``<prefix>k:<key>`` — one-time values (transactions, replay guards);
* ``<prefix>i:<index>`` — indexes (sets: ``sub:<sub>`` and ``idp-sid:<sid>`` to session ids);
* ``<prefix>c:<key>`` — counters (rate limits), each with its window as TTL;
* ``<prefix>p:<channel>`` — publish/subscribe channels (not keys): ``PUBLISH`` and ``SUBSCRIBE`` on one
  server, sharded ``SPUBLISH`` and ``SSUBSCRIBE`` on a Redis Cluster (:mod:`.redis_cluster_store`).

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

import contextlib
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

from .base import Record, SessionStore, StoreUnavailable, Subscription

if t.TYPE_CHECKING:
    from redis.cluster import RedisCluster
    from redis.connection import AbstractConnection, ConnectionPool

__all__ = [
    "REDIS_ERRORS",
    "RedisKeyspace",
    "RedisStore",
    "RedisSubscription",
    "ReplicaCounts",
    "Script",
    "client_options",
    "run_acknowledged",
    "subscription_connection",
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
# A subscription pings its server this often, and gives up on it when a ping stays unanswered this long.
_PING_EVERY = 1.0
_PING_ANSWER = 2.0


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
        info = dict(node.info("replication"))
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


class RedisSubscription(Subscription):
    """A connection of its own, subscribed to one channel (``SUBSCRIBE``, or ``SSUBSCRIBE`` when sharded).

    Not redis-py's ``PubSub``: that one reconnects and subscribes again by itself, hiding the gap in
    which messages were lost. This one raises instead (see :class:`~bff.store.Subscription`), and pings
    the server every second, so a connection that silently stopped delivering is noticed within
    :data:`_PING_ANSWER` seconds. Speaks RESP2 and RESP3 alike.
    """

    def __init__(self, connection: AbstractConnection, channel: str, *, sharded: bool = False) -> None:
        self._connection = connection
        self._sharded = sharded
        self._channel = channel.encode()
        self._subscribe = b"ssubscribe" if sharded else b"subscribe"
        self._message = b"smessage" if sharded else b"message"
        self._ended = (b"sunsubscribe", b"unsubscribe")
        self._pings = 0
        self._ping: tuple[bytes, float] | None = None  # the unanswered ping and when it was sent
        self._pinged = 0.0
        self.heard = 0.0

    def open(self) -> None:
        """Connect and subscribe; returns once the server confirmed the subscription."""
        try:
            self._connection.connect()  # type: ignore[no-untyped-call]
            if self._sharded:
                # A demoted primary still accepts SSUBSCRIBE, then hears nothing its old shard publishes.
                self._connection.send_command("ROLE", check_health=False)  # type: ignore[no-untyped-call]
                role = self._connection.read_response()
                if not (isinstance(role, list) and role and role[0] in (b"master", "master")):
                    self.close()
                    raise StoreUnavailable("the channel's node is not a primary (the layout is changing)")
            sent = time.monotonic()
            self._connection.send_command(  # type: ignore[no-untyped-call]
                self._subscribe.decode().upper(), self._channel, check_health=False
            )
            deadline = sent + _PING_ANSWER
            while time.monotonic() < deadline:
                if not self._connection.can_read(timeout=max(0.0, deadline - time.monotonic())):
                    break
                reply = self._connection.read_response(push_request=True)
                if isinstance(reply, list) and len(reply) >= 2 and reply[0] == self._subscribe:
                    if reply[1] != self._channel:
                        break
                    self.heard = self._pinged = sent
                    return
        except REDIS_ERRORS as error:
            self.close()
            raise StoreUnavailable("could not subscribe") from error
        self.close()
        raise StoreUnavailable("the server did not confirm the subscription")

    def poll(self, timeout: float) -> list[bytes]:
        connection = self._connection
        messages: list[bytes] = []
        try:
            now = time.monotonic()
            if self._ping is not None and now - self._ping[1] > _PING_ANSWER:
                raise StoreUnavailable("the server stopped answering the subscription's pings")
            if self._ping is None and now - self._pinged >= _PING_EVERY:
                self._pings += 1
                token = f"bff-{self._pings}".encode()
                connection.send_command("PING", token, check_health=False)  # type: ignore[no-untyped-call]
                self._ping = (token, now)
                self._pinged = now
            wait = timeout
            while connection.can_read(timeout=wait):
                wait = 0.0
                self._take(connection.read_response(push_request=True), messages)
        except REDIS_ERRORS as error:
            self.close()
            raise StoreUnavailable("the subscription's connection failed") from error
        except StoreUnavailable:
            self.close()
            raise
        return messages

    def _take(self, reply: t.Any, messages: list[bytes]) -> None:
        # RESP3 answers a ping with its argument; RESP2, while subscribed, with ["pong", argument].
        pong = reply[1] if isinstance(reply, list) and len(reply) == 2 and reply[0] == b"pong" else reply
        if self._ping is not None and pong == self._ping[0]:
            self.heard = self._ping[1]
            self._ping = None
            return
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == self._message and channel == self._channel:
            messages.append(bytes(reply[2]))
        elif kind in self._ended:
            # The server dropped the subscription (a cluster slot moved to another shard).
            raise StoreUnavailable("the server ended the subscription")

    def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            self._connection.disconnect()  # type: ignore[no-untyped-call]


def subscription_connection(pool: ConnectionPool) -> AbstractConnection:
    """A new connection configured as the pool's are, but not the pool's: a subscription owns it."""
    return t.cast("AbstractConnection", pool.connection_class(**pool.connection_kwargs))


class RedisKeyspace(SessionStore):
    """The store's operations on any Redis client; subclasses provide the client and the durable write.

    Every method touches one key (see the module docstring), which is what lets one implementation
    serve a single server and a cluster alike.
    """

    pubsub = True

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

    def _p(self, channel: str) -> str:
        return f"{self._prefix}p:{channel}"

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
    def publish(self, channel: str, message: bytes) -> None:
        self.deliver(self._p(channel), message)

    def deliver(self, channel: str, message: bytes) -> None:
        """Send a message on a channel's full name (``PUBLISH``; a cluster shards it)."""
        self.client().publish(channel, message)

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

    def subscribe(self, channel: str) -> Subscription:
        """A subscription on the primary (behind Sentinel, the one Sentinel names when it connects)."""
        try:
            self.follow_primary()
            connection = subscription_connection(self._redis.connection_pool)
        except REDIS_ERRORS as error:
            raise StoreUnavailable("could not subscribe") from error
        subscription = RedisSubscription(connection, self._p(channel))
        subscription.open()
        return subscription

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
