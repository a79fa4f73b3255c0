"""Session stores: pick a backend from ``BFF_SESSION_STORE``.

``redis://`` and ``rediss://`` (TLS) reach one Redis server, ``redis+sentinel://h:p[,h:p]/name``
follows a Sentinel-managed primary across failovers, ``redis+cluster://h:p[,h:p]`` and
``rediss+cluster://`` (TLS) spread sessions over a Redis Cluster (a session's keys share one slot),
and ``sqlite:///path`` is an embedded store for a single host (several processes on that host share it).
"""

from __future__ import annotations

import time
import typing as t

from .base import Record, SessionStore, StoreUnavailable, Subscription

__all__ = ["Record", "SessionStore", "StoreUnavailable", "Subscription", "open_store"]


def open_store(url: str, *, prefix: str = "bff:", clock: t.Callable[[], float] = time.time) -> SessionStore:
    """Open the store a ``BFF_SESSION_STORE`` URL names (connections are made lazily).

    ``clock`` is the time an embedded store expires entries by (Redis keeps its own time).
    """
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        from .redis_cluster_store import RedisClusterStore

        return RedisClusterStore.from_url(url, prefix=prefix)
    if url.startswith(("redis://", "rediss://", "redis+sentinel://")):
        from .redis_store import RedisStore

        return RedisStore.from_url(url, prefix=prefix)
    if url.startswith("sqlite://"):
        from .sqlite_store import SqliteStore

        return SqliteStore.from_url(url, clock=clock)
    raise ValueError(f"unsupported session store URL scheme: {url.split(':', 1)[0]!r}")
