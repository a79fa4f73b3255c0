"""Process liveness in the store, so a lock whose holder died is recognised within seconds.

Each process beats (a key with a short TTL, renewed every second by a daemon thread) while it may hold
locks: from each lock acquisition until that lock's lease has run out; an idle process writes nothing.
A waiter that finds a lock held checks the holder's beat: no beat means the holder is gone, and the lock
can be taken over without waiting for its lease. A process paused longer than the TTL may be taken for
dead; that is safe, because no write relies on the lock alone (see the session core).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

from ..store import SessionStore, StoreUnavailable

__all__ = ["BEAT_INTERVAL", "BEAT_TTL", "Heartbeat"]

log = logging.getLogger(__name__)

BEAT_INTERVAL = 1.0
BEAT_TTL = 3.0


class Heartbeat:
    """This process's beat; the thread starts on first use and again after a fork."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pid = -1
        self._instance = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._until = 0.0

    @property
    def instance(self) -> str:
        """This process's name in lock owners (new in each forked worker)."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._instance = f"{self._pid}-{secrets.token_urlsafe(6)}"
                self._thread = None
            return self._instance

    def ensure_running(self, lease: float) -> None:
        """Beat at least until ``lease`` seconds from now (a lock taken now may be held that long)."""
        instance = self.instance
        with self._lock:
            self._until = max(self._until, time.monotonic() + lease)
            if self._thread is not None and self._thread.is_alive():
                return
            self._beat(instance)
            self._thread = threading.Thread(target=self._run, args=(instance,), name="bff-heartbeat", daemon=True)
            self._thread.start()

    @property
    def beating(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def alive(self, instance: str) -> bool:
        return self._store.get(f"instance:{instance}") is not None

    def _beat(self, instance: str) -> None:
        try:
            self._store.put(f"instance:{instance}", b"1", BEAT_TTL)
        except StoreUnavailable:
            log.debug("heartbeat not written: the store is unavailable")
        except Exception:
            log.debug("heartbeat not written", exc_info=True)

    def _run(self, instance: str) -> None:
        while not self._stop.wait(BEAT_INTERVAL):
            with self._lock:
                if os.getpid() != self._pid or time.monotonic() > self._until:
                    self._thread = None
                    return
            self._beat(instance)
