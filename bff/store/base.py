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
"""

from __future__ import annotations

import typing as t
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["Record", "SessionStore", "StoreUnavailable"]


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


class SessionStore(ABC):
    """The seam between the BFF and its storage; see the module docstring for the guarantees."""

    #: Round trips made through this instance, for benchmarks and tests.
    round_trips: int = 0

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

    # Operations -----------------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers and accepts writes; leaves no key behind."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
