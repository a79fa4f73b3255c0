"""Access tokens for the My Account API: cache, MRRT exchange, single-flight refresh.

How a token is obtained for a route's scope:

1. The session record (already loaded with the session, no extra round trip) holds sealed
   access tokens per *scope set*. One that covers the scope and is not within the refresh
   margin of its expiry is used as is.
2. Otherwise the session's refresh token is exchanged (``grant_type=refresh_token`` with the
   My Account ``audience`` and the set's ``scope``: Multi-Resource Refresh Token). The exchange
   is single-flight per session across every process and host: a lock in the store named for
   the session's refresh token, a lease longer than the slowest exchange, a **reload after
   acquiring** and a re-check (another holder may have done the work), and a **fenced write**
   (only while still holding the lock), so a rotated refresh token is never overwritten by a
   stale copy and never redeemed twice.
3. What comes back is checked: Auth0 silently answers with a default-audience token when the
   client's MRRT policy does not cover the request, so ``aud`` and ``scope`` are verified.

Scope sets: all ``read:me:*`` scopes share one token; every other (sensitive) scope gets a set
of its own, so a scope that needs recent MFA cannot make the reads fail with it.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import urlencode

from ..clock import Clock
from ..errors import Problem
from ..security import SecretBox
from ..session import ACCESS_PREFIX, REFRESH, BffSession
from ..settings import Settings
from ..store import Record, SessionStore
from .endpoint import TokenClient, TokenFailure, TokenSet

__all__ = ["MFA_ACR", "AccessToken", "ScopePlan", "TokenError", "TokenManager"]

log = logging.getLogger(__name__)

MFA_ACR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
LOGIN_SET = "login"
_OPENED_CACHE_SIZE = 4096
_READ_SET = "read"


@dataclass(frozen=True)
class AccessToken:
    """A usable bearer token (never leaves the BFF)."""

    token: str
    expires_at: float
    scope: frozenset[str]


@dataclass(frozen=True)
class TokenError:
    """Why no token could be had; ``ends_session`` tells the caller to drop the session."""

    status: int
    kind: str
    title: str
    detail: str
    ends_session: bool = False
    login_url: str | None = None
    retry_after: str | None = None

    def problem(self) -> Problem:
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return Problem(
            self.status, self.kind, self.title, self.detail, headers=headers, login_url=self.login_url
        )


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


def _busy(detail: str) -> TokenError:
    return TokenError(503, "token-busy", "Token refresh in progress", detail, retry_after="1")


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


class TokenManager:
    """Hands out My Account API access tokens for a session; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        client: TokenClient,
        box: SecretBox,
        clock: Clock,
        plan: ScopePlan,
        token_endpoint: t.Callable[[], str],
    ) -> None:
        self._settings = settings
        self._store = store
        self._client = client
        self._box = box
        self._clock = clock
        self._plan = plan
        self._token_endpoint = token_endpoint
        # Opened tokens by their sealed form: decrypting on every proxied call is a measurable share of
        # the hot path. Expiry and scope are still checked on every call (from the clear header), and a
        # new token has a new sealed form, so the cache can never serve a stale token.
        self._opened: dict[bytes, str] = {}

    # Cache -----------------------------------------------------------------------------------

    def _usable(self, value: bytes | None, scope: str, now: float) -> AccessToken | None:
        if value is None:
            return None
        head = _decode_head(value)
        if head is None:
            return None
        expires_at, issued_at, granted, sealed = head
        # Refresh ahead of expiry, but never spend more than half of a short token's life waiting.
        margin = min(float(self._settings.token_refresh_margin), (expires_at - issued_at) / 2)
        scopes = frozenset(granted.split())
        if expires_at - margin <= now or scope not in scopes:
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

    def _cached(self, fields: t.Mapping[str, bytes], set_key: str, scope: str) -> AccessToken | None:
        now = self._clock.now()
        for name in (ACCESS_PREFIX + set_key, ACCESS_PREFIX + LOGIN_SET):
            found = self._usable(fields.get(name), scope, now)
            if found is not None:
                return found
        return None

    # Public API ------------------------------------------------------------------------------

    def access_token(
        self, session: BffSession, scope: str, *, return_to: str = "/", force_refresh: bool = False
    ) -> AccessToken | TokenError:
        """A token whose scope covers ``scope``; a refresh only when the cache cannot serve."""
        set_key, request_scope = self._plan.set_for(scope)
        record = session.record
        if record is not None and not force_refresh:
            cached = self._cached(record.fields, set_key, scope)
            if cached is not None:
                return cached
        stale = None
        if force_refresh and record is not None:
            stale = record.fields.get(ACCESS_PREFIX + set_key)
        return self._refresh(session, set_key, scope, request_scope, return_to, stale)

    def login_url(self, return_to: str, *, step_up: bool = False) -> str:
        params = {"returnTo": return_to}
        if step_up:
            params["acr_values"] = MFA_ACR
        return "/bff/login?" + urlencode(params)

    # Refresh ---------------------------------------------------------------------------------

    def _refresh(
        self,
        session: BffSession,
        set_key: str,
        scope: str,
        request_scope: str,
        return_to: str,
        stale: bytes | None,
    ) -> AccessToken | TokenError:
        sid = session.sid
        lock = f"refresh:{sid}"
        owner = secrets.token_urlsafe(16)
        lease = self._settings.refresh_lock_lease
        # A waiter outlasts a dead holder's lease plus one exchange; then it gives up with 503.
        deadline = time.monotonic() + lease + self._settings.token_timeout + 2.0
        pause = 0.005
        while not self._store.acquire(lock, owner, lease):
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            settled = self._reload(sid, set_key, scope, stale, return_to)
            if not isinstance(settled, Record):
                return settled
            if time.monotonic() > deadline:
                return _busy("Another request is still refreshing this session's token; try again.")
        try:
            # Reload after acquiring: the refresh token may have rotated while we waited.
            record = self._reload(sid, set_key, scope, stale, return_to)
            if not isinstance(record, Record):
                return record
            sealed_refresh = record.fields.get(REFRESH)
            refresh_token = self._box.open(sealed_refresh) if sealed_refresh else None
            if refresh_token is None:
                self._end_session(session)
                return self._login_required(return_to, "This session has no usable refresh token.")
            # Confirm the lease right before spending the refresh token: a holder that was paused
            # past its lease must not redeem a token someone else may be redeeming now.
            if not self._store.extend(lock, owner, lease):
                return _busy("Lost the refresh lock; retry.")
            issued_at = self._clock.now()
            result = self._client.refresh(
                self._token_endpoint(),
                refresh_token.decode(),
                audience=self._settings.my_account_audience,
                scope=request_scope,
            )
            if isinstance(result, TokenFailure):
                return self._failed(session, result, return_to)
            fields: dict[str, bytes] = {}
            if result.refresh_token and result.refresh_token != refresh_token.decode():
                fields[REFRESH] = self._box.seal(result.refresh_token.encode())
            mismatch = self._mismatch(result, scope)
            if mismatch is None:
                fields[ACCESS_PREFIX + set_key] = encode_access(self._box, result, issued_at)
            # The rotated refresh token is saved even when the access token is unusable.
            if fields and not self._store.update_fenced(sid, fields, lock, owner):
                log.error("refresh result could not be saved: the lock was lost or the session ended")
                return _busy("The session changed during the refresh; try again.")
            if mismatch is not None:
                return mismatch
            return AccessToken(result.access_token, result.expires_at, frozenset(result.scope.split()))
        finally:
            self._store.release(lock, owner)

    def _reload(
        self, sid: str, set_key: str, scope: str, stale: bytes | None, return_to: str
    ) -> Record | AccessToken | TokenError:
        """The record as stored now, or the outcome it already settles (session ended, or refreshed)."""
        record = self._store.load(sid)
        if record is None:
            return self._session_gone(return_to)
        found = self._fresh_result(record.fields, set_key, scope, stale)
        return record if found is None else found

    def _fresh_result(
        self, fields: t.Mapping[str, bytes], set_key: str, scope: str, stale: bytes | None
    ) -> AccessToken | None:
        if stale is not None and fields.get(ACCESS_PREFIX + set_key) == stale:
            return None  # the token the upstream rejected is still the one cached
        return self._cached(fields, set_key, scope)

    def _mismatch(self, result: TokenSet, scope: str) -> TokenError | None:
        audiences = jwt_audiences(result.access_token)
        expected = self._settings.my_account_audience
        if audiences is None or expected not in audiences:
            return TokenError(
                502, "token-audience-mismatch", "Wrong token audience",
                f"The IdP returned a token for {audiences or 'an opaque audience'} instead of {expected}. "
                "The application's Multi-Resource Refresh Token policy (refresh_token.policies) "
                "probably does not include this audience and scope, or the My Account API is not "
                "enabled for the application.",
            )
        if scope not in result.scope.split():
            return TokenError(
                502, "token-scope-mismatch", "Missing token scope",
                f"The IdP granted {result.scope!r} without {scope!r}. Check the application's client "
                "grant and MRRT policy scopes for the My Account API, and the user's permissions.",
            )
        return None

    def _failed(self, session: BffSession, failure: TokenFailure, return_to: str) -> TokenError:
        if failure.kind == "invalid_grant":
            self._end_session(session)
            return self._login_required(return_to, "The session's refresh token is no longer valid.")
        if failure.kind == "step_up":
            return TokenError(
                401, "step-up-required", "Step-up authentication required",
                f"The identity provider requires a new login with more assurance ({failure.error}).",
                login_url=self.login_url(return_to, step_up=True),
            )
        if failure.kind == "unavailable":
            return TokenError(
                503, "idp-unavailable", "Identity provider unavailable",
                f"The token endpoint is not answering ({failure.error}); the session is kept.",
                retry_after=failure.retry_after or "1",
            )
        if failure.kind == "server_error":
            return TokenError(
                502, "idp-error", "Identity provider error",
                f"The token endpoint failed ({failure.error}); the session is kept.",
            )
        return TokenError(
            502, "idp-rejected", "Token request rejected",
            f"The token endpoint refused the exchange ({failure.error}: {failure.description}). "
            "This usually means the application is misconfigured at the IdP.",
        )

    def _session_gone(self, return_to: str) -> TokenError:
        return self._login_required(return_to, "The session ended.")

    def _login_required(self, return_to: str, detail: str) -> TokenError:
        return TokenError(
            401, "login-required", "Login required", detail,
            ends_session=True, login_url=self.login_url(return_to),
        )

    def _end_session(self, session: BffSession) -> None:
        self._store.delete(session.sid)
