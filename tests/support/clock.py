"""A clock tests move by hand: wall time, monotonic time and sleeps all follow ``advance``."""

from __future__ import annotations

import threading
import time


class ManualClock:
    """Starts at the real time; ``advance`` moves ``now`` and ``monotonic`` together.

    ``sleep`` really sleeps (briefly): waiters in other threads need real time to pass for the
    events they wait on to happen.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        return time.time() + self._offset

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
