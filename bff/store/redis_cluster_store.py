"""Redis Cluster backend: ``redis+cluster://host:port[,host:port…]`` and ``rediss+cluster://`` (TLS).

The operations, Lua scripts and key layout are those of every Redis store (:mod:`.redis_store`):
each operation touches one key, and a session's record, refresh lock and connect slots carry the
session id as their hash tag, so they share one slot and the guarantees of a single server hold
within the shard that owns it. The client follows MOVED and ASK redirections, and re-reads the
cluster's layout after a failover; every other cluster error (CLUSTERDOWN while a shard has no
primary, TRYAGAIN, a slot nobody serves, a refused connection, READONLY) is
:class:`~bff.store.StoreUnavailable`, a 503 that keeps the session.

Durable writes: a guarded write (a rotated refresh token) returns only once a replica of the shard
that owns the session has acknowledged it, so promoting that replica cannot roll it back. ``WAIT``
counts the writes made *on its own connection*, so it is sent to the primary that owns the session's
slot on the very connection that ran the write, in one pipeline (:func:`.redis_store.run_acknowledged`);
a ``WAIT`` routed by the client to some other connection or node could answer at once for a write
no replica has.

The client is created on first use (the constructor of redis-py's cluster client already connects),
so a BFF starts while the cluster is unreachable and answers 503 until it is back.

Messages between processes use sharded publish/subscribe (``SPUBLISH``, ``SSUBSCRIBE``): a channel lives
on the shard that owns its slot, and publisher and subscriber both talk to that shard's primary, never
through the cluster bus (which may drop a message without either of them noticing). When the slot moves
(a failover, a migration) the server ends the subscription or its connection breaks, and the subscriber
learns that it may have missed messages.
"""

from __future__ import annotations

import contextlib
import threading
import typing as t
from urllib.parse import urlsplit, urlunsplit

from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import StoreUnavailable, Subscription
from .redis_store import (
    REDIS_ERRORS,
    RedisKeyspace,
    RedisSubscription,
    ReplicaCounts,
    Script,
    client_options,
    run_acknowledged,
    subscription_connection,
)

__all__ = ["RedisClusterStore"]

_SLOTS = 16384
# Redirections one guarded write follows (a failover, then a slot migration) before giving up.
_REDIRECTS = 3
# Probe keys tried per ping to find one key in each primary's slots (a few suffice on average).
_PROBE_CANDIDATES = 4096


class RedisClusterStore(RedisKeyspace):
    """A :class:`~bff.store.SessionStore` on a Redis Cluster (see the module docstring)."""

    def __init__(self, connect: t.Callable[[], RedisCluster], *, prefix: str = "bff:") -> None:
        if "{" in prefix or "}" in prefix:
            # A hash tag in the prefix would put every key of every session in one slot.
            raise ValueError("the store prefix must not contain braces on a Redis Cluster")
        super().__init__(prefix=prefix)
        self._connect = connect
        self._cluster: RedisCluster | None = None
        self._lock = threading.Lock()
        self._replicas = ReplicaCounts()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "bff:") -> RedisClusterStore:
        first, others = _startup_nodes(url)
        options = client_options()
        retry = options.pop("retry")

        def connect() -> RedisCluster:
            # The retry policy is the cluster client's own (it re-reads the layout between tries);
            # the per-node connections it makes do not retry. Partial coverage is tolerated so that
            # the shards still up keep serving while another one fails over.
            return RedisCluster(
                url=first,
                startup_nodes=list(others),
                retry=retry,
                require_full_coverage=False,
                **options,
            )

        return cls(connect, prefix=prefix)

    def client(self) -> RedisCluster:
        cluster = self._cluster
        if cluster is None:
            with self._lock:
                if self._cluster is None:
                    self._cluster = self._connect()
                cluster = self._cluster
        return cluster

    def deliver(self, channel: str, message: bytes) -> None:
        """``SPUBLISH`` on the primary that owns the channel's slot."""
        self.client().spublish(channel, message)

    def subscribe(self, channel: str) -> Subscription:
        """``SSUBSCRIBE`` on the primary that owns the channel's slot (where ``SPUBLISH`` sends it).

        The layout is read again first: a subscription is made after the previous one ended, often
        because the slot moved, and a demoted primary would accept it and hear nothing more.
        """
        name = self._p(channel)
        try:
            cluster = self.client()
            cluster.nodes_manager.initialize()
            node: ClusterNode = cluster.get_node_from_key(name)  # type: ignore[no-untyped-call]
            connection = subscription_connection(cluster.get_redis_connection(node).connection_pool)
        except REDIS_ERRORS as error:
            raise StoreUnavailable("could not subscribe") from error
        subscription = RedisSubscription(connection, name, sharded=True)
        subscription.open()
        return subscription

    def write_durably(self, key: str, script: Script, args: t.Sequence[t.Any]) -> bool:
        """Run the write on the primary owning ``key``'s slot and ``WAIT`` there, on one connection."""
        cluster = self.client()
        node: ClusterNode = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
        asking = False
        for _ in range(_REDIRECTS):
            connection = cluster.get_redis_connection(node)
            try:
                replicas = min(1, self._replicas.of(node.name, connection))
                outcome, acked = run_acknowledged(connection, script, key, args, replicas, asking=asking)
            except (RedisConnectionError, RedisTimeoutError):
                # As the client does for its own commands: a primary that does not answer may have
                # been replaced, and a write repeated on its own (the token manager's) must find the heir.
                self._relearn_layout(cluster)
                raise
            if isinstance(outcome, ClusterDownError):
                self._relearn_layout(cluster)
                raise outcome
            if isinstance(outcome, MovedError):  # the slot has a new owner (a failover): follow it
                cluster.nodes_manager.move_slot(outcome)
                node, asking = cluster.get_node_from_key(key), False  # type: ignore[no-untyped-call]
                continue
            if isinstance(outcome, AskError):  # the slot is migrating and the key has gone ahead
                target = cluster.get_node(host=outcome.host, port=outcome.port)  # type: ignore[no-untyped-call]
                if target is None:
                    raise StoreUnavailable("redirected to a node the cluster layout does not list")
                node, asking = target, True
                continue
            if isinstance(outcome, Exception):
                raise outcome
            if outcome != 1:
                return False
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < replicas:
                self._replicas.forget(node.name)
                raise StoreUnavailable("no replica of the session's shard acknowledged the write")
            return True
        raise StoreUnavailable("too many redirections")

    @staticmethod
    def _relearn_layout(cluster: RedisCluster) -> None:
        """Read the slot layout again; if no node answers, the error being raised says enough."""
        with contextlib.suppress(*REDIS_ERRORS):
            cluster.nodes_manager.initialize()

    def probe(self) -> None:
        """Probe a write on every primary: the store is ready only if each shard accepts writes."""
        cluster = self.client()
        slots = dict(cluster.nodes_manager.slots_cache)
        if len(slots) < _SLOTS or not all(slots.values()):
            raise StoreUnavailable("some hash slots are served by no node")
        owners = {nodes[0].name for nodes in slots.values()}
        keys: dict[str, str] = {}
        for candidate in range(_PROBE_CANDIDATES):
            key = self._k(f"ping:{{{candidate}}}")
            owner: ClusterNode = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
            keys.setdefault(owner.name, key)
            if len(keys) == len(owners):
                break
        for key in keys.values():
            self._probe_key(key)

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()


def _startup_nodes(url: str) -> tuple[str, list[ClusterNode]]:
    """``redis+cluster://[user:password@]host:port[,host:port…][/0][?options]``: the first node as a
    plain ``redis://`` (or ``rediss://``) URL carrying the credentials and options, and the others."""
    parts = urlsplit(url)
    scheme = parts.scheme.removesuffix("+cluster")
    if scheme not in ("redis", "rediss") or scheme == parts.scheme:
        raise ValueError(f"not a Redis Cluster URL: {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    addresses = [_address(node) for node in hosts.split(",")]
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: drop the path from the URL")
    host, port = addresses[0]
    netloc = (credentials + "@" if credentials else "") + (f"[{host}]" if ":" in host else host) + f":{port}"
    first = urlunsplit((scheme, netloc, "", parts.query, ""))
    return first, [ClusterNode(host, port) for host, port in addresses[1:]]  # type: ignore[no-untyped-call]


def _address(node: str) -> tuple[str, int]:
    node = node.strip()
    if not node:
        raise ValueError("empty node address in the Redis Cluster URL")
    if node.startswith("["):  # [IPv6]:port
        host, _, rest = node[1:].partition("]")
        return host, int(rest.removeprefix(":") or 6379)
    host, colon, port = node.rpartition(":")
    return (host, int(port)) if colon else (node, 6379)
