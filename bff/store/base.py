"""The session-and-token store: one small interface, several backends.

A session is one *record*: a flat map of named fields under the session id, with a time to
live. Fields are written individually, never as a whole blob, so two requests that change
different fields of one session cannot overwrite each other (the lost-update bug of
blob-per-request session stores). Fields that must never go back (the refresh token and the
access tokens minted from it) are written by *compare-and-set* against the value the writer
redeemed, so a writer that lost its lock, or whose store failed over, can never replace newer
data; such a write is idempotent (repeating it after an unclear failure is safe) and, where the
backend has replicas, acknowledged by one before it returns, so a failover cannot roll it back.

Besides records the store keeps one-time values (login and connect transactions, replay
guards), leased locks, and small indexes (user and IdP session id to BFF session ids, for
back-channel logout without scanning keys).

Every method is one round trip to the backend. Every backend failure surfaces as
:class:`StoreUnavailable` (the web layer answers 503 and keeps the session), never as "no session".

A backend may also carry messages between the processes that share it (:attr:`SessionStore.pubsub`):
:meth:`~SessionStore.publish` on a named channel, and a :class:`Subscription` that receives them. A
subscription tells its holder when it may have missed a message (it raises), so a holder can keep
process-local state only while nothing can have slipped past it.
"""

from __future__ import annotations

import typing as t
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["Record", "SessionStore", "StoreUnavailable", "Subscription"]


class StoreUnavailable(Exception):
    """The backend is unreachable, read-only (a replica after a failover), loading or timing out.

    Never "no such session": callers must keep the session and let the user retry.
    """


@dataclass(frozen=True)
class Record:
    """A session record as loaded in one round trip: its fields.

    The record's remaining lifetime is not part of it: reading it costs the hot path, and the
    session's own ``seen`` field tells the same (see :mod:`bff.session`).
    """

    fields: dict[str, bytes]


class Subscription(ABC):
    """One connection subscribed to one channel of the store, owned by one thread.

    Security: a holder that caches what the messages invalidate relies on never missing one. So a
    subscription raises :class:`StoreUnavailable` from :meth:`poll` as soon as a message may have been
    lost (the connection broke, the server ended the subscription, or the server stopped answering),
    and :attr:`heard` says up to when delivery is proven; it never reconnects by itself.
    """

    #: ``time.monotonic()`` at which the server was last asked to prove the connection (by a ping it
    #: has answered since, or by the subscription itself): every message published between the
    #: subscription and then has been received.
    heard: float = 0.0

    @abstractmethod
    def poll(self, timeout: float) -> list[bytes]:
        """The messages that arrive within ``timeout`` seconds (perhaps none); also keeps :attr:`heard`
        fresh. Raises :class:`StoreUnavailable` once a message may have been missed."""

    @abstractmethod
    def close(self) -> None:
        """Unsubscribe and close the connection."""


class SessionStore(ABC):
    """The seam between the BFF and its storage; see the module docstring for the guarantees."""

    #: Round trips made through this instance, for benchmarks and tests.
    round_trips: int = 0
    #: Whether :meth:`publish` and :meth:`subscribe` work on this backend.
    pubsub: bool = False

    # Session records ------------------------------------------------------------------------

    @abstractmethod
    def load(self, sid: str) -> Record | None:
        """All fields of a session, or ``None`` if it does not exist."""

    @abstractmethod
    def write(self, sid: str, fields: t.Mapping[str, bytes], ttl: float) -> None:
        """Create the record or set these fields on it, and set its TTL (seconds)."""

    @abstractmethod
    def update(self, sid: str, fields: t.Mapping[str, bytes], *, ttl: float | None = None) -> bool:
        """Set fields (and optionally the TTL) only if the record exists; never resurrects one."""

    @abstractmethod
    def update_cas(
        self,
        sid: str,
        fields: t.Mapping[str, bytes],
        *,
        guard: str,
        expected: bytes,
        remove: t.Sequence[str] = (),
    ) -> bool:
        """Set ``fields`` and delete ``remove`` only if field ``guard`` still holds ``expected``.

        Also ``True`` when ``guard`` already holds the new value ``fields[guard]`` (the same write,
        repeated after a failure whose outcome was unclear). Durable before it returns: where the
        backend replicates, at least one replica has acknowledged the write, else
        :class:`StoreUnavailable` (the write may be lost: repeat it).
        """

    @abstractmethod
    def delete(self, sid: str) -> None:
        """Remove the record."""

    # One-time values ------------------------------------------------------------------------

    @abstractmethod
    def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False) -> bool:
        """Store a value with a TTL; with ``only_new``, only if absent (returns whether stored)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """Read a value without consuming it."""

    @abstractmethod
    def take(self, key: str) -> bytes | None:
        """Read and delete a value atomically: exactly one caller ever gets it."""

    # Locks ----------------------------------------------------------------------------------

    @abstractmethod
    def acquire(self, lock: str, owner: str, lease: float) -> bool:
        """Take the lock for ``lease`` seconds if nobody holds it."""

    @abstractmethod
    def extend(self, lock: str, owner: str, lease: float) -> bool:
        """Renew the lease if ``owner`` still holds the lock."""

    @abstractmethod
    def lock_owner(self, lock: str) -> str | None:
        """Who holds the lock now, or ``None``."""

    @abstractmethod
    def release(self, lock: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it (a stale owner never frees someone else's lock)."""

    # Indexes --------------------------------------------------------------------------------

    @abstractmethod
    def index_add(self, index: str, member: str, ttl: float) -> None:
        """Add a member; the index lives at least ``ttl`` seconds from now."""

    @abstractmethod
    def index_members(self, index: str) -> set[str]:
        """Current members of an index."""

    @abstractmethod
    def index_remove(self, index: str, member: str) -> None:
        """Remove a member."""

    # Counters -------------------------------------------------------------------------------

    @abstractmethod
    def incr(self, key: str, amount: int, window: float) -> int:
        """Add ``amount`` to a counter that starts (at zero) with a ``window``-second life; its new value."""

    @abstractmethod
    def counter(self, key: str) -> tuple[int, float]:
        """A counter's value and the seconds left in its window (``(0, 0.0)`` when it does not exist)."""

    # Messages between processes ------------------------------------------------------------

    def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``channel`` (under the store's prefix).

        Delivered at most once, only to subscriptions connected now; :class:`StoreUnavailable` when
        the backend did not take it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no publish/subscribe")

    def subscribe(self, channel: str) -> Subscription:
        """A new connection subscribed to ``channel``, returned once the server confirmed it: every
        message published from then on reaches it, or its :meth:`Subscription.poll` raises."""
        raise NotImplementedError(f"{type(self).__name__} has no publish/subscribe")

    # Operations -----------------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers and accepts writes; leaves no key behind."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
