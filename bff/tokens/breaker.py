"""A circuit breaker for the token endpoint: a failing IdP gets a handful of calls, not one per request.

Security and availability: when the IdP is down or hung, every browser request that needs a refresh
would otherwise make its own attempt (hundreds a second from one instance), amplifying the IdP's
incident or its rate limit, and holding worker threads for the whole token timeout. After
:attr:`CircuitBreaker.threshold` consecutive failures the breaker *opens*: calls are refused at once
(the caller answers 503 with ``Retry-After``) for :attr:`CircuitBreaker.cooldown` seconds. Then it lets
one probe through (*half-open*); success closes it, failure opens it again. The state is per process:
each instance protects the IdP from itself.

Only failures of the IdP count (no answer, timeouts, 5xx, 429): an answer such as ``invalid_grant`` is
the IdP working as it should.
"""

from __future__ import annotations

import threading

from ..clock import Clock

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Closed → (``threshold`` failures) → open → (``cooldown``) → half-open: one probe → closed/open."""

    def __init__(self, clock: Clock, *, threshold: int = 5, cooldown: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    def admit(self) -> float | None:
        """``None`` when a call may go ahead; otherwise the seconds until the next probe may."""
        with self._lock:
            if self._opened_at is None:
                return None
            waited = self._clock.monotonic() - self._opened_at
            if waited < self.cooldown:
                return self.cooldown - waited
            if self._probing:
                return 1.0
            self._probing = True  # half-open: this caller is the probe
            return None

    def blocked_for(self) -> float | None:
        """Like :meth:`admit` without taking the probe: the seconds until a call may go, or ``None``."""
        with self._lock:
            if self._opened_at is None:
                return None
            left = self.cooldown - (self._clock.monotonic() - self._opened_at)
            return left if left > 0 else None

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._opened_at = self._clock.monotonic()
            self._probing = False

    def released(self) -> None:
        """The admitted call ended without telling anything about the IdP (e.g. it was never sent)."""
        with self._lock:
            self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None
