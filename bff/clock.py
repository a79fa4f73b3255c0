"""Injectable time, so expiry, leases and back-off are tested without sleeping.

Everything in the BFF that reads the time or waits goes through a :class:`Clock`: wall-clock time
for lifetimes and token expiry (``now``), a monotonic reading for deadlines (``monotonic``), and
``sleep`` for back-off, so a test clock can move all three together.
"""

from __future__ import annotations

import time
import typing as t

__all__ = ["Clock", "SystemClock"]


class Clock(t.Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going backwards (for deadlines)."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""


class SystemClock:
    """The real clocks: ``time.time``, ``time.monotonic`` and ``time.sleep``."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
