"""Rate limits that guard the tenant: per session and per client address, shared by every instance.

Security: the BFF is where abuse of the user's tokens can be stopped before it reaches Auth0 (whose
rate limits are per tenant: one noisy browser could exhaust them for everyone). Limits
(``BFF_RATE_LIMIT_*``, e.g. ``600/minute`` or ``off``) apply to proxied calls (per session and per
client address), to login starts (per client address) and to connect starts (per session). The
counting strategy is the ``limits`` library's fixed window; the counters live in the session store
(:meth:`~bff.store.SessionStore.incr`), so every instance shares them. A refused request gets a 429
problem with ``Retry-After``. A store failure while counting lets the request through: a limiter must
not turn a store blip into an outage (the request meets the store again anyway where it needs it).

Counters are keyed by a keyed hash of the session id or the address, never the raw value, and a
client address counter is one small key per address and window, not one per request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import typing as t

from limits import RateLimitItem, parse
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter

from . import metrics
from .errors import Problem, ProblemKind
from .settings import Settings
from .store import SessionStore, StoreUnavailable

__all__ = ["RateLimits", "StoreCounters"]

log = logging.getLogger(__name__)

Kind = t.Literal["session", "address", "login", "connect"]


class StoreCounters(Storage):
    """The ``limits`` storage interface on the BFF's own store (fixed windows need only counters)."""

    STORAGE_SCHEME = ["bff+store"]  # noqa: RUF012 - the base class declares it an instance attribute

    def __init__(self, store: SessionStore) -> None:
        super().__init__()
        self._store = store

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return StoreUnavailable

    @staticmethod
    def _key(key: str) -> str:
        return "rl:" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._store.incr(self._key(key), amount, float(expiry))

    def get(self, key: str) -> int:
        return self._store.counter(self._key(key))[0]

    def get_expiry(self, key: str) -> float:
        return time.time() + self._store.counter(self._key(key))[1]

    def check(self) -> bool:
        try:
            self._store.ping()
        except StoreUnavailable:
            return False
        return True

    def reset(self) -> int | None:
        return None

    def clear(self, key: str) -> None:
        return None


class RateLimits:
    """The configured limits; :meth:`hit` counts one request and refuses it beyond its limit."""

    def __init__(self, settings: Settings, store: SessionStore, mac: t.Callable[[str], str]) -> None:
        self._mac = mac
        self._limiter = FixedWindowRateLimiter(StoreCounters(store))
        self._items: dict[Kind, RateLimitItem | None] = {
            "session": _item(settings.rate_limit_session),
            "address": _item(settings.rate_limit_address),
            "login": _item(settings.rate_limit_login),
            "connect": _item(settings.rate_limit_connect),
        }

    def hit(self, kind: Kind, identity: str) -> None:
        """Count a request of ``identity`` (a session id or an address) under ``kind``; 429 beyond the limit."""
        item = self._items[kind]
        if item is None or not identity:
            return
        name = self._mac(f"rate:{kind}:{identity}")[:22]
        try:
            if self._limiter.hit(item, kind, name):
                return
            reset_at = self._limiter.get_window_stats(item, kind, name).reset_time
        except StoreUnavailable:
            log.warning("rate limit not counted: the store is unavailable", extra={"event": "ratelimit.unavailable"})
            return
        retry = max(1, math.ceil(reset_at - time.time()))
        log.info("rate limited", extra={"event": "ratelimit.refused", "limit": kind})
        metrics.rate_limited(kind)
        raise Problem(
            ProblemKind.RATE_LIMITED,
            f"Too many requests ({item}); retry in {retry} s.",
            headers={"Retry-After": str(retry)},
        )


def _item(value: str) -> RateLimitItem | None:
    return None if value == "off" else parse(value)
