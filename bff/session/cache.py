"""The process-local session cache: a proxied read served without a store round trip.

Security: a cached session must never outlive the session itself. The cache holds a live session
record per session id, in this process only, under one invariant: **an entry is served only while
every change to its session made anywhere would already have removed it.** What keeps it:

* Every write that ends or changes a session (:meth:`SessionCore.end` whatever the reason, a refresh
  result saved) removes the entry here and then *announces* the session on one channel of the store,
  :data:`CHANNEL` under the store's prefix. The message is a digest of the id (:func:`digest`), never
  the id, and the announcing process's random name (it has already dropped its own entry). Every
  process listens on that channel and drops the entry when the message arrives.
* Messages sent while a process is not listening are lost, so the cache is used only while its
  subscription is confirmed and proven alive: from the moment the subscription is confirmed (when
  the cache is emptied once more) until it breaks, the server ends it, or a ping stays unanswered
  (:class:`~bff.store.Subscription`); then the cache is emptied and bypassed until it is back. An
  entry is also served only while the server has answered a ping in the last :data:`LIVENESS`
  seconds, so a connection that silently stopped delivering cannot keep entries alive.
* A load that races with an announcement never stores its (possibly stale) result: each load takes a
  ticket before reading the store, and an entry is kept only if no announcement for its session (and
  no emptying) happened since the ticket.
* Every entry expires :data:`MAX_AGE` seconds after it was read from the store (a safety net for a
  message lost on the way: a process that died between its write and its announcement, a failover
  that moved the channel), and never outlives the session's own idle or absolute deadline. A cached
  access token is still checked against its own expiry by the token manager on every use.

Only the reads that gain from it use the cache (the proxy's ``GET`` and ``HEAD`` calls); everything
that writes, lists or ends sessions reads the store, and so does the token manager wherever a
decision needs the current record (under the refresh lock), which is why the mark of a refresh in
flight is not announced. A stale ``seen`` only makes the idle deadline earlier (it only grows in the
store), so a cache hit never extends a session: an entry that looks idle is dropped and the store
decides; and when the idle slide's write finds the record gone, the request has no session.

Announcements are sent whenever the store can carry them, even with the cache off in this process,
so that processes with the cache on stay correct beside it. A store without publish/subscribe
(SQLite) has no cache.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import secrets
import threading
import time
import weakref

from .. import metrics
from ..clock import Clock
from ..store import SessionStore, StoreUnavailable
from .record import SEEN, LiveSession

__all__ = ["CHANNEL", "FLUSH_ALL", "LIVENESS", "MAX_AGE", "MAX_ENTRIES", "SessionCache", "digest", "open_cache"]

log = logging.getLogger(__name__)

#: The channel, under the store's prefix, that carries the digests of sessions that changed or ended.
CHANNEL = "sessions"
#: The longest an entry is served after it was read from the store.
MAX_AGE = 5.0
#: Entries are served only while the subscription's server answered a ping this recently.
LIVENESS = 3.0
#: Entries kept per process; the oldest half goes when it is full.
MAX_ENTRIES = 10_000
#: A message that names no session empties the cache of every process (an operator's tool); a bare
#: digest (:func:`digest`) drops that one session everywhere.
FLUSH_ALL = b"*"
# A process that served no cached read this long stops listening (it starts again on the next one).
_IDLE_STOP = 60.0
_POLL = 0.25
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0
_DIGEST_LENGTH = 32
_HEX = frozenset(b"0123456789abcdef")

_Entry = tuple[LiveSession, float, float]  # the session, fresh until (clock.monotonic), live until (clock.now)


def digest(sid: str) -> bytes:
    """What the channel carries for a session: the first 128 bits of SHA-256 of its id, in hex.

    The id has 256 random bits, so the digest cannot be turned back into a cookie; it is no secret.
    """
    return hashlib.sha256(sid.encode()).hexdigest()[:_DIGEST_LENGTH].encode()


class SessionCache:
    """See the module docstring. One per app; thread-safe; each forked process starts empty.

    ``enabled=False``: only announce (see the module docstring), never cache nor listen.
    """

    def __init__(
        self,
        store: SessionStore,
        clock: Clock,
        *,
        enabled: bool = True,
        max_age: float = MAX_AGE,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._store = store
        self._clock = clock
        self.enabled = enabled
        #: Seconds an entry is served after it was read from the store.
        self.max_age = max_age
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._changes = threading.Condition(self._lock)
        self._entries: dict[bytes, _Entry] = {}
        # Every removal and every emptying moves the epoch on; a ticket is the epoch when a load began.
        self._epoch = 0
        self._floor = 0  # tickets older than this are refused (the cache was emptied since)
        self._removed: dict[bytes, int] = {}  # the epoch at which each session was last announced
        self._connected = False
        self._heard = 0.0
        self._used = 0.0
        self._pid = os.getpid()
        self._origin = secrets.token_hex(6).encode()  # this process's name in its announcements
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Subscriptions confirmed so far in this process (each one empties the cache).
        self.connections = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(ref))

    # The hot path -----------------------------------------------------------------------------

    def lookup(self, sid: str) -> tuple[LiveSession | None, int | None]:
        """``(session, None)`` on a hit; otherwise ``(None, ticket)``, where the ticket, taken before
        the caller reads the store, lets :meth:`put` keep the result (``None``: do not keep it)."""
        now = time.monotonic()
        self._used = now
        if not self._usable(now):
            metrics.session_cache_lookup("bypass")
            return None, None
        key = digest(sid)
        ticket = self._epoch
        entry = self._entries.get(key)
        if entry is not None:
            session, fresh_until, live_until = entry
            if (
                self._clock.monotonic() < fresh_until
                and self._clock.now() < live_until
                and hmac.compare_digest(session.sid.encode(), sid.encode())
            ):
                metrics.session_cache_lookup("hit")
                return session, None
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
        metrics.session_cache_lookup("miss")
        return None, ticket

    def put(self, session: LiveSession, ticket: int, live_until: float) -> None:
        """Keep ``session`` (read from the store after ``ticket`` was taken) until ``live_until``
        (the session's own deadline, wall clock) or :data:`MAX_AGE`, whichever comes first."""
        key = digest(session.sid)
        with self._lock:
            if not self._connected or ticket < self._floor or self._removed.get(key, -1) > ticket:
                return  # announced (or emptied) since the load began: the result may be stale
            if len(self._entries) >= self._max_entries:
                self._evict()
            self._entries[key] = (session, self._clock.monotonic() + self.max_age, live_until)

    def touched(self, sid: str, seen: bytes, live_until: float) -> None:
        """The session's ``seen`` was written: the entry (if any) carries it and its new deadline."""
        key = digest(sid)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0].sid != sid:
                return
            session = entry[0]
            fields = {**session.fields, SEEN: seen}
            self._entries[key] = (LiveSession(sid, session.document, fields), entry[1], live_until)

    # Changes ----------------------------------------------------------------------------------

    def invalidate(self, sid: str) -> None:
        """Forget the session in this process (at once, before any announcement comes back)."""
        with self._lock:
            self._remove(digest(sid))

    def announce(self, sid: str) -> None:
        """Tell every process that the session changed or ended (after the write that did it).

        A failure is reported, never raised: the write it follows has happened, and the other
        processes' entries expire within :data:`MAX_AGE` anyway.
        """
        try:
            self._store.publish(CHANNEL, digest(sid) + b":" + self._origin)
        except StoreUnavailable as error:
            metrics.store_error()
            log.warning("a session change could not be announced; other processes may serve their "
                        "cached copy for up to %.0f s", self.max_age,
                        extra={"event": "store.error", "operation": "announce-session-change",
                               "error": type(error.__cause__ or error).__name__})

    # State, for operators and tests -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the cache is listening now (and so may serve entries)."""
        return self._connected and self._pid == os.getpid()

    @property
    def epoch(self) -> int:
        """A mark to pass to :meth:`wait_invalidated`."""
        return self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def wait_connected(self, timeout: float, *, connections: int = 1) -> bool:
        """Start listening if need be, and wait until ``connections`` subscriptions have been confirmed
        in all and the cache is listening; whether that happened within ``timeout`` seconds."""
        self._used = time.monotonic()
        self._ensure_listening()
        with self._changes:
            return self._changes.wait_for(
                lambda: self._connected and self.connections >= connections, timeout
            )

    def wait_disconnected(self, timeout: float) -> bool:
        """Wait until the cache stopped listening (and was emptied)."""
        with self._changes:
            return self._changes.wait_for(lambda: not self._connected, timeout)

    def wait_invalidated(self, sid: str, since: int, timeout: float) -> bool:
        """Wait until the session was removed here (announced by any process, or the cache emptied)
        after :attr:`epoch` was ``since``."""
        key = digest(sid)
        with self._changes:
            return self._changes.wait_for(
                lambda: self._removed.get(key, -1) > since or self._floor > since, timeout
            )

    def stop(self) -> None:
        """Stop listening for good (the cache is bypassed from now on)."""
        self._stopping.set()
        with self._lock:
            self._disconnect_locked()

    # Internals --------------------------------------------------------------------------------

    def _usable(self, now: float) -> bool:
        if self._connected and self._pid == os.getpid() and now - self._heard <= LIVENESS:
            return True
        self._ensure_listening()
        return False

    def _ensure_listening(self) -> None:
        if not self.enabled or self._stopping.is_set():
            return
        pid = os.getpid()
        listener = self._listener
        if listener is not None and self._pid == pid and listener.is_alive():
            return
        with self._lock:
            if self._pid != pid:
                self._after_fork()
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=_listen, args=(weakref.ref(self), self._store, self._stopping, pid),
                    name="bff-session-cache", daemon=True,
                )
                self._listener.start()

    def _after_fork(self) -> None:
        """In a forked process: nothing the parent cached or heard holds here, and its listener and
        whatever locks its threads held did not come along."""
        self._lock = threading.Lock()
        self._changes = threading.Condition(self._lock)
        self._pid = os.getpid()
        self._origin = secrets.token_hex(6).encode()
        self._listener = None
        self._connected = False
        self.connections = 0
        self._entries = {}
        self._removed = {}
        self._epoch += 1
        self._floor = self._epoch

    def _remove(self, key: bytes) -> None:
        self._epoch += 1
        self._removed[key] = self._epoch
        self._entries.pop(key, None)
        if len(self._removed) > self._max_entries:
            # Forget the old announcements; loads in flight may predate them, so refuse those.
            self._removed.clear()
            self._floor = self._epoch
        self._changes.notify_all()

    def _empty_locked(self) -> None:
        self._epoch += 1
        self._floor = self._epoch
        self._entries.clear()
        self._removed.clear()
        self._changes.notify_all()

    def _evict(self) -> None:
        now = self._clock.monotonic()
        for key in [key for key, entry in self._entries.items() if entry[1] <= now]:
            del self._entries[key]
        if len(self._entries) >= self._max_entries:
            for key in list(itertools.islice(self._entries, len(self._entries) // 2 + 1)):
                del self._entries[key]

    def _connect(self, heard: float) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._empty_locked()  # whatever was announced before the subscription may have been missed
            self._heard = heard
            self._connected = True
            self.connections += 1
            self._changes.notify_all()

    def _disconnect_locked(self) -> None:
        self._connected = False
        self._empty_locked()

    def _received(self, messages: list[bytes], heard: float) -> None:
        applied = 0
        if messages:
            with self._lock:
                for message in messages:
                    key, _, origin = message.partition(b":")
                    if origin == self._origin:
                        continue  # this process's own announcement, applied when it was made
                    applied += 1
                    if len(key) == _DIGEST_LENGTH and all(c in _HEX for c in key):
                        self._remove(key)
                    else:
                        self._empty_locked()
        if applied:
            metrics.session_cache_invalidated(applied)
        # Only now: every message the server sent before answering the ping has been applied.
        self._heard = heard

    def _wanted(self, pid: int) -> bool:
        return not self._stopping.is_set() and self._pid == pid and os.getpid() == pid

    def _idle(self) -> bool:
        return time.monotonic() - self._used > _IDLE_STOP


def _forked(ref: weakref.ReferenceType[SessionCache]) -> None:
    cache = ref()
    if cache is not None:
        cache._after_fork()


def _listen(
    ref: weakref.ReferenceType[SessionCache], store: SessionStore, stopping: threading.Event, pid: int
) -> None:
    """The listener thread: subscribe, apply what arrives, and on any failure empty the cache and
    subscribe again (backing off). Holds the cache only weakly, so an app that is dropped stops it."""
    pause = _RETRY_FIRST
    failing = False
    while not stopping.is_set():
        cache = ref()
        if cache is None or not cache._wanted(pid) or cache._idle():
            break
        del cache
        try:
            subscription = store.subscribe(CHANNEL)
        except Exception as error:
            if not failing:
                log.warning("session cache bypassed: cannot subscribe to the store's channel",
                            extra={"event": "session_cache.disconnected", "error": type(error).__name__})
                failing = True
            stopping.wait(pause)
            pause = min(pause * 2, _RETRY_MAX)
            continue
        pause = _RETRY_FIRST
        try:
            cache = ref()
            if cache is None:
                return
            cache._connect(subscription.heard)
            # Said once per process and after each failure; a restart after an idle spell is routine.
            level = logging.INFO if failing or cache.connections == 1 else logging.DEBUG
            del cache
            log.log(level, "session cache on: listening for session changes",
                    extra={"event": "session_cache.connected"})
            failing = False
            while not stopping.is_set():
                messages = subscription.poll(_POLL)
                cache = ref()
                if cache is None or not cache._wanted(pid):
                    return
                cache._received(messages, subscription.heard)
                if cache._idle():
                    break
                del cache
        except Exception as error:
            log.warning("session cache bypassed: the subscription to the store's channel was lost",
                        extra={"event": "session_cache.disconnected", "error": type(error).__name__})
            failing = True
        finally:
            subscription.close()
            cache = ref()
            if cache is not None and os.getpid() == pid:
                with cache._lock:
                    if cache._pid == pid:
                        cache._disconnect_locked()
            del cache
    cache = ref()
    if cache is not None and os.getpid() == pid:
        with cache._lock:
            if cache._pid == pid:
                cache._disconnect_locked()


def open_cache(store: SessionStore, clock: Clock, *, enabled: bool) -> SessionCache | None:
    """The cache for ``store`` and ``BFF_SESSION_CACHE``; says at startup whether it is on, and why not.

    ``None`` when the store cannot carry messages between processes: without them a cached session
    could outlive its end elsewhere, so every request reads the store.
    """
    if not store.pubsub:
        log.info("session cache off: %s cannot carry messages between processes; every request reads "
                 "the store", type(store).__name__, extra={"event": "session_cache", "enabled": False})
        return None
    if not enabled:
        log.info("session cache off: BFF_SESSION_CACHE=off; session changes are still announced to other "
                 "processes", extra={"event": "session_cache", "enabled": False})
        return SessionCache(store, clock, enabled=False)
    log.info("session cache on: proxied reads are served from memory for up to %.0f s while this process "
             "listens for session changes", MAX_AGE, extra={"event": "session_cache", "enabled": True})
    return SessionCache(store, clock)
