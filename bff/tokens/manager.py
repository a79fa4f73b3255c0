"""Access tokens for the My Account API: cache, MRRT exchange, single-flight refresh, and custody of
the refresh token under faults.

How a token is obtained for a route's scope:

1. The session record (already loaded with the session, no extra round trip) holds sealed access
   tokens per *scope set*. One that covers the scope and is not within the refresh margin of its
   expiry is used as is.
2. Otherwise the session's refresh token is exchanged (``grant_type=refresh_token`` with the My
   Account ``audience`` and the set's ``scope``: Multi-Resource Refresh Token). The exchange is
   single-flight per session across every process and host: a lock in the store, a **reload after
   acquiring** and a re-check (another holder may have done the work). A request whose cached token
   is still valid (only inside the margin) never waits for the lock, and no request waits longer
   than :data:`MAX_LOCK_WAIT`; a lock whose holder's process died is taken over (see the session core).
3. What comes back is checked: Auth0 silently answers with a default-audience token when the
   client's MRRT policy does not cover the request, so ``aud`` and ``scope`` are verified.

Custody of the refresh token (a rotated token, once received, is never lost):

* Before the token is presented, the attempt is marked durably in the record. An attempt whose
  outcome stays unknown (a timeout or a broken connection after sending, a holder that died) leaves
  the mark: the IdP may have rotated the token. The next refresh presents it again only inside the
  tenant's rotation overlap (``BFF_REFRESH_TOKEN_OVERLAP``, less one token timeout); otherwise the
  session ends cleanly (``refresh-interrupted``, revoked) instead of triggering reuse detection, which
  would revoke the whole family. Without an overlap, an unknown outcome ends the session at once.
* The result is written by compare-and-set against the token that was redeemed (not against the
  lock, which a failover can lose), acknowledged by a replica where there is one; a write that fails
  because the store is failing over is repeated (it is idempotent) for a while, then kept in memory
  and written by the next request of the session in this process.
* A circuit breaker (:class:`~bff.tokens.breaker.CircuitBreaker`) turns a failing token endpoint into
  fast 503s with ``Retry-After`` after a few failures and probes it until it recovers; meanwhile a
  session whose access token has not yet expired keeps using it.

With DPoP, a session with a key presents a proof made with it on every refresh (the refresh token
is bound to it), and a token answer that is not DPoP-bound is refused as a misconfiguration (the
rotated refresh token is still saved).

Scope sets: all ``read:me:*`` scopes share one token; every other (sensitive) scope gets a set
of its own, so a scope that needs recent MFA cannot make the reads fail with it.

The manager takes a session (id and record) and answers with an :class:`AccessToken` or a
:class:`TokenRefusal` carrying a :class:`RefusalReason`; it knows nothing of HTTP. The web layer
maps refusals to problems in one place (:mod:`bff.myaccount`). The record's fields, the lock and the
guarded writes belong to the session core (:class:`~bff.session.SessionCore`); time and sleeping go
through the injected clock.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import math
import threading
import typing as t
from dataclasses import dataclass

from .. import metrics, tracing
from ..clock import Clock
from ..dpop import SessionKeys
from ..security import SecretBox
from ..session import EndReason, LiveSession, SessionCore
from ..settings import Settings
from ..store import StoreUnavailable
from .breaker import CircuitBreaker
from .endpoint import TokenClient, TokenFailure, TokenSet

__all__ = [
    "LOGIN_SET",
    "MAX_LOCK_WAIT",
    "AccessToken",
    "RefusalReason",
    "ScopePlan",
    "TokenManager",
    "TokenRefusal",
    "encode_access",
    "jwt_audiences",
]

log = logging.getLogger(__name__)

LOGIN_SET = "login"
#: The longest any request waits for another holder's refresh; then 503 ``token-busy``.
MAX_LOCK_WAIT = 5.0
#: A token this close to its expiry is not handed out even as a fallback.
_MIN_VALIDITY = 5.0
#: How long a refresh result is retried into a failing store before it is kept in memory.
_SAVE_BUDGET = 10.0
#: How often a waiter checks whether the lock's holder is still alive.
_HOLDER_CHECK = 0.5
_OPENED_CACHE_SIZE = 4096
_READ_SET = "read"


@dataclass(frozen=True)
class AccessToken:
    """A usable bearer token (never leaves the BFF)."""

    token: str
    expires_at: float
    scope: frozenset[str]


class RefusalReason(enum.Enum):
    """Why no token could be had."""

    SESSION_ENDED = "session-ended"  # the refresh token is dead or the session is gone: log in again
    STEP_UP_REQUIRED = "step-up-required"  # the IdP wants a new login with more assurance
    IDP_UNAVAILABLE = "idp-unavailable"  # transport error, timeout, 429, 503: the session is kept
    IDP_ERROR = "idp-error"  # the token endpoint failed (5xx): the session is kept
    IDP_REJECTED = "idp-rejected"  # misconfiguration (invalid_client, invalid_scope, ...)
    AUDIENCE_MISMATCH = "audience-mismatch"  # the MRRT policy does not cover the My Account API
    SCOPE_MISMATCH = "scope-mismatch"  # the grant lacks the route's scope
    BUSY = "busy"  # another holder is still refreshing: retry
    REFRESH_INTERRUPTED = "refresh-interrupted"  # an attempt's outcome is unknown: log in again
    STORE_UNAVAILABLE = "store-unavailable"  # the result could not be stored yet: it is kept, retry


@dataclass(frozen=True)
class TokenRefusal:
    """No token: the reason, a detail for the operator and user, and a retry hint."""

    reason: RefusalReason
    detail: str
    retry_after: str | None = None

    @property
    def ended_session(self) -> bool:
        """The session is over (its record is gone): the browser's cookie should go too."""
        return self.reason in (RefusalReason.SESSION_ENDED, RefusalReason.REFRESH_INTERRUPTED)


class ScopePlan:
    """Which scope set a route scope belongs to, and what to ask for when minting that set."""

    def __init__(self, route_scopes: t.Iterable[str]) -> None:
        scopes = set(route_scopes)
        self._reads = " ".join(sorted(scope for scope in scopes if scope.startswith("read:")))

    def set_for(self, scope: str) -> tuple[str, str]:
        """``(set key, scope string to request)`` for a required route scope."""
        if scope.startswith("read:"):
            return _READ_SET, self._reads or scope
        return scope, scope


def _busy(detail: str) -> TokenRefusal:
    return TokenRefusal(RefusalReason.BUSY, detail, retry_after="1")


def encode_access(box: SecretBox, token: TokenSet, issued_at: float) -> bytes:
    """``exp|iat|scope|`` in the clear (so lookups decrypt only the chosen token), then sealed."""
    head = f"{token.expires_at:.3f}|{issued_at:.3f}|{token.scope}|".encode()
    return head + box.seal(token.access_token.encode())


def _decode_head(value: bytes) -> tuple[float, float, str, bytes] | None:
    try:
        expires, issued, scope, sealed = value.split(b"|", 3)
        return float(expires), float(issued), scope.decode(), sealed
    except ValueError:
        return None


def jwt_audiences(token: str) -> list[str] | None:
    """The ``aud`` of a JWT, read without verification (the BFF is its client, not its audience)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    audience = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(audience, str):
        return [audience]
    if isinstance(audience, list) and all(isinstance(item, str) for item in audience):
        return audience
    return None


def _exchanged(result: str, took: float, waited: float, set_key: str) -> None:
    """Report one refresh-token exchange: its result, how long the IdP took and how long the lock took."""
    metrics.token_exchange(result)
    log.log(
        logging.INFO if result == "ok" else logging.WARNING,
        "token exchange: %s",
        result,
        extra={"event": "token.exchange", "result": result, "duration_ms": round(took * 1000, 1),
               "lock_wait_ms": round(waited * 1000, 1), "token_set": set_key},
    )


_FALLBACK_REASONS = frozenset(
    {RefusalReason.IDP_UNAVAILABLE, RefusalReason.IDP_ERROR, RefusalReason.BUSY, RefusalReason.STORE_UNAVAILABLE}
)


@dataclass(frozen=True)
class _Unsaved:
    """A refresh result the store did not take: written by the session's next request here."""

    redeemed: LiveSession
    refresh_token: str | None
    access: dict[str, bytes]


class TokenManager:
    """Hands out My Account API access tokens for a session; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        sessions: SessionCore,
        client: TokenClient,
        box: SecretBox,
        clock: Clock,
        plan: ScopePlan,
        token_endpoint: t.Callable[[], str],
        dpop_keys: SessionKeys,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._client = client
        self._box = box
        self._clock = clock
        self._plan = plan
        self._token_endpoint = token_endpoint
        self._dpop_keys = dpop_keys
        self.breaker = breaker or CircuitBreaker(clock)
        # Opened tokens by their sealed form: decrypting on every proxied call is a measurable share of
        # the hot path. Expiry and scope are still checked on every call (from the clear header), and a
        # new token has a new sealed form, so the cache can never serve a stale token.
        self._opened: dict[bytes, str] = {}
        self._unsaved: dict[str, _Unsaved] = {}
        self._unsaved_lock = threading.Lock()
        self._unreleased: dict[str, str] = {}

    # Cache -----------------------------------------------------------------------------------

    def _usable(self, value: bytes | None, scope: str, now: float, *, margin: bool = True) -> AccessToken | None:
        if value is None:
            return None
        head = _decode_head(value)
        if head is None:
            return None
        expires_at, issued_at, granted, sealed = head
        # Refresh ahead of expiry, but never spend more than half of a short token's life waiting.
        ahead = min(float(self._settings.token_refresh_margin), (expires_at - issued_at) / 2) if margin else 0.0
        scopes = frozenset(granted.split())
        if expires_at - max(ahead, _MIN_VALIDITY) <= now or scope not in scopes:
            return None
        opened = self._opened.get(sealed)
        if opened is None:
            token = self._box.open(sealed)
            if token is None:
                return None
            opened = token.decode()
            if len(self._opened) >= _OPENED_CACHE_SIZE:
                self._opened.clear()
            self._opened[sealed] = opened
        return AccessToken(opened, expires_at, scopes)

    def _cached(self, session: LiveSession, set_key: str, scope: str, *, margin: bool = True) -> AccessToken | None:
        now = self._clock.now()
        for key in (set_key, LOGIN_SET):
            found = self._usable(session.access(key), scope, now, margin=margin)
            if found is not None:
                return found
        return None

    # Public API ------------------------------------------------------------------------------

    def access_token(
        self, session: LiveSession, scope: str, *, refused: AccessToken | None = None
    ) -> AccessToken | TokenRefusal:
        """A token whose scope covers ``scope``; a refresh only when the cache cannot serve.

        ``refused``: the API refused this token; mint a new one unless another request already
        replaced it.
        """
        if self._unsaved:
            self._write_unsaved(session.sid)
        if self._unreleased:
            self._release_held(session.sid)
        set_key, request_scope = self._plan.set_for(scope)
        fallback = None
        if refused is None:
            cached = self._cached(session, set_key, scope)
            if cached is not None:
                return cached
            # Inside the refresh margin but not expired: good enough while a refresh cannot be had.
            fallback = self._cached(session, set_key, scope, margin=False)
        result = self._refresh(session, set_key, scope, request_scope, refused, fallback)
        if isinstance(result, TokenRefusal) and fallback is not None and result.reason in _FALLBACK_REASONS:
            return fallback
        return result

    def login_access(self, tokens: TokenSet) -> dict[str, bytes]:
        """The login's own access token, kept when it already is a My Account token (no extra exchange)."""
        audiences = jwt_audiences(tokens.access_token) or []
        if self._settings.login_audience_is_my_account and self._settings.my_account_audience in audiences:
            return {LOGIN_SET: encode_access(self._box, tokens, self._clock.now())}
        return {}

    # Refresh ---------------------------------------------------------------------------------

    def _refresh(
        self,
        session: LiveSession,
        set_key: str,
        scope: str,
        request_scope: str,
        refused: AccessToken | None,
        fallback: AccessToken | None,
    ) -> AccessToken | TokenRefusal:
        blocked = self.breaker.blocked_for()
        if blocked is not None:
            return self._idp_down(blocked)
        started = self._clock.monotonic()
        with tracing.span("token.lock_wait"):
            owner = self._wait_for_lock(session, set_key, scope, refused, fallback)
        waited = self._clock.monotonic() - started
        metrics.lock_waited(waited)
        if not isinstance(owner, str):
            return owner
        try:
            return self._refresh_holding(session, owner, set_key, scope, request_scope, refused, waited)
        finally:
            try:
                self._sessions.release_refresh_lock(session.sid, owner)
            except StoreUnavailable:
                # Released by the session's next request here once the store answers, rather than
                # blocking the session for the rest of the lease.
                with self._unsaved_lock:
                    self._unreleased[session.sid] = owner
                metrics.store_error()
                log.warning("refresh lock not released (the store is unavailable); released later",
                            extra={"event": "store.error", "operation": "release-refresh-lock"})

    def _wait_for_lock(
        self,
        session: LiveSession,
        set_key: str,
        scope: str,
        refused: AccessToken | None,
        fallback: AccessToken | None,
    ) -> str | AccessToken | TokenRefusal:
        """The lock's owner token, or the outcome that made waiting for it unnecessary."""
        clock = self._clock
        lease = self._settings.refresh_lock_lease
        started = clock.monotonic()
        deadline = started + MAX_LOCK_WAIT
        checked = started
        pause = 0.005
        while (owner := self._sessions.acquire_refresh_lock(session.sid, lease)) is None:
            if fallback is not None:
                # Another request is refreshing; this one has a token that is still valid.
                return _busy("Another request is refreshing this session's token.")
            clock.sleep(pause)
            pause = min(pause * 2, 0.05)
            settled = self._reload(session, set_key, scope, refused)
            if not isinstance(settled, LiveSession):
                return settled
            now = clock.monotonic()
            if now - checked >= _HOLDER_CHECK:
                checked = now
                self._sessions.break_dead_refresh_lock(session.sid)
            if now > deadline:
                log.info("refresh lock wait gave up",
                         extra={"event": "token.lock_wait", "waited_ms": round((now - started) * 1000)})
                return _busy("Another request is still refreshing this session's token; try again.")
        return owner

    def _refresh_holding(
        self,
        session: LiveSession,
        owner: str,
        set_key: str,
        scope: str,
        request_scope: str,
        refused: AccessToken | None,
        waited: float,
    ) -> AccessToken | TokenRefusal:
        sid = session.sid
        # Reload after acquiring: the refresh token may have rotated while we waited.
        current = self._reload(session, set_key, scope, refused)
        if not isinstance(current, LiveSession):
            return current
        refresh_token = self._sessions.open_refresh_token(current)
        dpop = self._dpop_keys.open(current.sealed_dpop_key)
        if refresh_token is None or (dpop is None and current.sealed_dpop_key is not None):
            self._sessions.end(current, EndReason.INVALID_GRANT)
            return TokenRefusal(RefusalReason.SESSION_ENDED, "This session has no usable refresh token.")
        unknown_since = current.refresh_started_at
        if unknown_since is not None and self._clock.now() - unknown_since > self._settings.ambiguous_refresh_window:
            return self._interrupted(current)
        # Confirm the lease right before spending the refresh token: a holder that was paused past
        # its lease must not redeem a token someone else may be redeeming now.
        if not self._sessions.extend_refresh_lock(sid, owner, self._settings.refresh_lock_lease):
            return _busy("Lost the refresh lock; retry.")
        wait = self.breaker.admit()
        if wait is not None:
            return self._idp_down(wait)
        try:
            if unknown_since is None and not self._sessions.begin_refresh(current):
                self.breaker.released()
                return _busy("The session's refresh token changed; retry.")
        except StoreUnavailable:
            self.breaker.released()
            raise
        issued_at = self._clock.now()
        began = self._clock.monotonic()
        with tracing.span("token.exchange", token_set=set_key) as span:
            result = self._client.refresh(
                self._token_endpoint(),
                refresh_token,
                audience=self._settings.my_account_audience,
                scope=request_scope,
                dpop=dpop,
            )
            span.set("result", result.kind if isinstance(result, TokenFailure) else "ok")
        took = self._clock.monotonic() - began
        if isinstance(result, TokenFailure):
            _exchanged(result.kind, took, waited, set_key)
            return self._failed(current, result, marked_here=unknown_since is None)
        self.breaker.succeeded()
        rotated = result.refresh_token if result.refresh_token and result.refresh_token != refresh_token else None
        mismatch = self._mismatch(result, scope, dpop=dpop is not None)
        _exchanged("ok" if mismatch is None else mismatch.reason.value.replace("-", "_"), took, waited, set_key)
        access = {} if mismatch is not None else {set_key: encode_access(self._box, result, issued_at)}
        # The rotated refresh token is saved even when the access token is unusable.
        saved = self._save(current, rotated, access)
        if saved is not None:
            return saved
        if mismatch is not None:
            return mismatch
        return AccessToken(result.access_token, result.expires_at, frozenset(result.scope.split()))

    def _save(self, redeemed: LiveSession, rotated: str | None, access: dict[str, bytes]) -> TokenRefusal | None:
        """Store a refresh result, through a store failover if need be; a refusal if it could not be."""
        clock = self._clock
        deadline = clock.monotonic() + min(_SAVE_BUDGET, self._settings.refresh_lock_lease)
        pause = 0.05
        while True:
            try:
                saved = self._sessions.save_tokens(redeemed, refresh_token=rotated, access=access)
                break
            except StoreUnavailable:
                if clock.monotonic() >= deadline:
                    with self._unsaved_lock:
                        self._unsaved[redeemed.sid] = _Unsaved(redeemed, rotated, access)
                    metrics.store_error()
                    log.error("refresh result kept in memory: the store is unavailable",
                              extra={"event": "token.save_deferred"})
                    return TokenRefusal(RefusalReason.STORE_UNAVAILABLE,
                                        "The session store is not answering; the new tokens are kept. Retry.",
                                        retry_after="1")
                clock.sleep(pause)
                pause = min(pause * 2, 0.5)
        if saved:
            return None
        log.error("refresh result not saved: the session's refresh token changed or the session ended",
                  extra={"event": "token.save_refused"})
        if self._sessions.reload(redeemed.sid) is None:
            return TokenRefusal(RefusalReason.SESSION_ENDED, "The session ended.")
        return _busy("The session changed during the refresh; try again.")

    def _release_held(self, sid: str) -> None:
        """Release a lock this process still holds because its release met a store outage."""
        with self._unsaved_lock:
            owner = self._unreleased.pop(sid, None)
        if owner is None:
            return
        try:
            self._sessions.release_refresh_lock(sid, owner)
        except StoreUnavailable:
            with self._unsaved_lock:
                self._unreleased.setdefault(sid, owner)
            raise

    def _write_unsaved(self, sid: str) -> None:
        """Write a result a store outage left in memory, before anything uses the session's tokens."""
        with self._unsaved_lock:
            unsaved = self._unsaved.pop(sid, None)
        if unsaved is None:
            return
        try:
            self._sessions.save_tokens(unsaved.redeemed, refresh_token=unsaved.refresh_token, access=unsaved.access)
        except StoreUnavailable:
            with self._unsaved_lock:
                self._unsaved.setdefault(sid, unsaved)
            raise

    def _reload(
        self, session: LiveSession, set_key: str, scope: str, refused: AccessToken | None
    ) -> LiveSession | AccessToken | TokenRefusal:
        """The session as stored now, or the outcome it already settles (session ended, or refreshed)."""
        current = self._sessions.reload(session.sid)
        if current is None:
            return TokenRefusal(RefusalReason.SESSION_ENDED, "The session ended.")
        found = self._cached(current, set_key, scope)
        if found is None or (refused is not None and found.token == refused.token):
            return current  # nothing usable cached, or only the token the upstream rejected
        return found

    def _interrupted(self, session: LiveSession) -> TokenRefusal:
        self._sessions.end(session, EndReason.REFRESH_INTERRUPTED)
        return TokenRefusal(
            RefusalReason.REFRESH_INTERRUPTED,
            "A refresh of this session's tokens was interrupted, and its outcome cannot be known: log in again.",
        )

    def _idp_down(self, wait: float) -> TokenRefusal:
        return TokenRefusal(
            RefusalReason.IDP_UNAVAILABLE,
            "The token endpoint is failing; calls to it are paused. The session is kept.",
            retry_after=str(max(1, math.ceil(wait))),
        )

    def _mismatch(self, result: TokenSet, scope: str, *, dpop: bool) -> TokenRefusal | None:
        if dpop and not result.dpop_bound:
            return TokenRefusal(
                RefusalReason.IDP_REJECTED,
                f"The IdP answered a {result.token_type} token to a DPoP-proved refresh: enable DPoP "
                "(sender-constraining) for the application, or turn BFF_DPOP off.",
            )
        audiences = jwt_audiences(result.access_token)
        expected = self._settings.my_account_audience
        if audiences is None or expected not in audiences:
            return TokenRefusal(
                RefusalReason.AUDIENCE_MISMATCH,
                f"The IdP returned a token for {audiences or 'an opaque audience'} instead of {expected}. "
                "The application's Multi-Resource Refresh Token policy (refresh_token.policies) "
                "probably does not include this audience and scope, or the My Account API is not "
                "enabled for the application.",
            )
        if scope not in result.scope.split():
            return TokenRefusal(
                RefusalReason.SCOPE_MISMATCH,
                f"The IdP granted {result.scope!r} without {scope!r}. Check the application's client "
                "grant and MRRT policy scopes for the My Account API, and the user's permissions.",
            )
        return None

    def _failed(self, session: LiveSession, failure: TokenFailure, *, marked_here: bool) -> TokenRefusal:
        if failure.kind == "ambiguous":
            self.breaker.failed()
            if self._settings.ambiguous_refresh_window <= 0:
                return self._interrupted(session)
            return TokenRefusal(
                RefusalReason.IDP_UNAVAILABLE,
                f"The token endpoint did not answer ({failure.error}); the session is kept.",
                retry_after=failure.retry_after or "1",
            )
        # The IdP answered (or the request never left): nothing was rotated by this attempt.
        if failure.kind in ("unavailable", "server_error"):
            self.breaker.failed()
        else:
            self.breaker.succeeded()
        if failure.kind == "invalid_grant":
            self._sessions.end(session, EndReason.INVALID_GRANT)
            return TokenRefusal(RefusalReason.SESSION_ENDED, "The session's refresh token is no longer valid.")
        if marked_here:
            try:
                self._sessions.abandon_refresh(session)
            except StoreUnavailable:
                metrics.store_error()
                log.warning("refresh mark not cleared (the store is unavailable)",
                            extra={"event": "store.error", "operation": "clear-refresh-mark"})
        if failure.kind == "step_up":
            return TokenRefusal(
                RefusalReason.STEP_UP_REQUIRED,
                f"The identity provider requires a new login with more assurance ({failure.error}).",
            )
        if failure.kind == "unavailable":
            return TokenRefusal(
                RefusalReason.IDP_UNAVAILABLE,
                f"The token endpoint is not answering ({failure.error}); the session is kept.",
                retry_after=failure.retry_after or "1",
            )
        if failure.kind == "server_error":
            return TokenRefusal(
                RefusalReason.IDP_ERROR, f"The token endpoint failed ({failure.error}); the session is kept."
            )
        return TokenRefusal(
            RefusalReason.IDP_REJECTED,
            f"The token endpoint refused the exchange ({failure.error}: {failure.description}). "
            "This usually means the application is misconfigured at the IdP.",
        )
