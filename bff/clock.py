"""Injectable time, so expiry and leases are tested without sleeping."""

from __future__ import annotations

import time
import typing as t

__all__ = ["Clock", "SystemClock"]


class Clock(t.Protocol):
    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time (``time.time``)."""

    def now(self) -> float:
        return time.time()
