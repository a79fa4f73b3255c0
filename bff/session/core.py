"""The session core: the one owner of session records, their indexes and their one-time transactions.

Security: a session id is a bearer credential, and a session's refresh token is the user's long-lived
grant. Everything that creates, reads, changes or ends a session therefore goes through this class,
which knows the record format, the key names and the indexes, and nothing of HTTP:

* :meth:`SessionCore.start` writes a new session (document, sealed refresh token, first activity) in
  one write under a fresh random id, indexes it by ``sub`` and IdP ``sid``, and ends the browser's
  previous session, so an id is never reused or fixed by an attacker.
* :meth:`SessionCore.load_live` reads a session in one round trip and refuses one that is past its
  absolute lifetime or its idle timeout by the injected clock, ending it on the spot (with
  revocation), so expiry does not depend on the store's TTL alone. A proxied read may be served from
  the process-local :class:`~bff.session.cache.SessionCache` instead, with no round trip at all.
* :meth:`SessionCore.end` is the only way a session ends, whatever the reason (:class:`EndReason`):
  it revokes the refresh token where that is right, removes the index entries and deletes the
  record. A dead refresh token (``invalid_grant``) is not revoked: the IdP already refused it.
  Ending a session, like saving a refresh result, is announced to every process's session cache.
* Token custody for the token manager: the per-session refresh lock, the durable mark of an attempt
  in flight, and compare-and-set writes of tokens, so a rotated refresh token is never overwritten
  by a stale copy nor lost to a failover.
* Bound one-time transactions: login transactions live sealed in the browser (anonymous requests
  create no server-side state) and are consumed at most once; connect transactions live in the
  store, at most :data:`MAX_CONNECT_FLOWS` per session.

Store failures surface as :class:`~bff.store.StoreUnavailable`, which the web layer answers with 503.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import secrets
import threading
import typing as t
from dataclasses import asdict, dataclass

from .. import metrics
from ..clock import Clock
from ..logs import session_tag
from ..security import SecretBox
from ..store import SessionStore
from .cache import SessionCache
from .heartbeat import Heartbeat
from .record import (
    ACCESS_PREFIX,
    DOC,
    DPOP_KEY,
    INTENT,
    REFRESH,
    SEEN,
    LiveSession,
    connect_key,
    connect_slot,
    encode_document,
    idp_sid_index,
    once_key,
    refresh_lock,
    sub_index,
)

__all__ = [
    "LOGIN_TRANSACTION_TTL",
    "MAX_CONNECT_FLOWS",
    "ConnectTransaction",
    "EndReason",
    "LoginTransaction",
    "SessionCore",
    "SessionPolicy",
]

log = logging.getLogger(__name__)

#: How long a login may take, from ``/bff/login`` to the callback.
LOGIN_TRANSACTION_TTL = 600
#: Connect flows one session may have in progress at once.
MAX_CONNECT_FLOWS = 5
#: Login transactions one browser may have in progress at once (tabs), oldest dropped first.
_MAX_LOGINS = 4
#: The sealed login cookie stays well under the 4 KB a browser keeps per cookie.
_MAX_LOGIN_COOKIE = 3600
#: The record outlives its idle deadline by this much, so the clock-based check (which revokes the
#: refresh token) normally sees an expired session before the store's TTL drops it silently.
_EXPIRY_GRACE = 300.0
_MAX_DEVICE = 200

_PRIVATE_CLAIMS = frozenset(
    {"nonce", "at_hash", "c_hash", "sid", "aud", "iss", "iat", "exp", "azp", "auth_time", "acr", "amr"}
)


class EndReason(enum.Enum):
    """Why a session ends; each reason goes through :meth:`SessionCore.end`."""

    LOGOUT = "logout"
    BACKCHANNEL_LOGOUT = "backchannel-logout"
    ENDED_BY_USER = "ended-by-user"
    REPLACED = "replaced"
    INVALID_GRANT = "invalid-grant"
    REFRESH_INTERRUPTED = "refresh-interrupted"
    IDLE_TIMEOUT = "idle-timeout"
    LIFETIME = "lifetime"

    @property
    def revokes(self) -> bool:
        """Whether the refresh token is revoked: always, except when the IdP already refused it."""
        return self is not EndReason.INVALID_GRANT


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout: float
    lifetime: float


@dataclass(frozen=True)
class LoginTransaction:
    """What a login needs at its callback; sealed in the browser's binding cookie until then."""

    state: str
    nonce: str
    verifier: str
    return_to: str
    max_age: str | None
    previous_sid: str | None
    created_at: float


@dataclass(frozen=True)
class ConnectTransaction:
    """A connected-account flow in progress, bound to its session and browser."""

    sid: str
    sub: str
    binding: str
    slot: int
    payload: dict[str, t.Any]


def public_claims(claims: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The ID-token claims the SPA may see: the profile, not the protocol plumbing."""
    return {key: value for key, value in claims.items() if key not in _PRIVATE_CLAIMS}


class SessionCore:
    """See the module docstring. One per app; thread-safe (all state is in the store)."""

    def __init__(
        self,
        store: SessionStore,
        box: SecretBox,
        clock: Clock,
        policy: SessionPolicy,
        revoke: t.Callable[[str], bool],
        cache: SessionCache | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._box = box
        self._clock = clock
        self._policy = policy
        self._revoke = revoke
        self._heartbeat = Heartbeat(store)
        self._sealed: dict[str, tuple[str, bytes]] = {}
        self._sealed_lock = threading.Lock()
        # Slide the idle deadline at most once per interval: a busy session costs one write per
        # interval, not one per request.
        self.touch_interval = min(60.0, policy.idle_timeout / 10)

    # Starting ---------------------------------------------------------------------------------

    @staticmethod
    def new_sid() -> str:
        return secrets.token_urlsafe(32)

    def start(
        self,
        claims: t.Mapping[str, t.Any],
        refresh_token: str,
        device: str,
        *,
        access: t.Mapping[str, bytes] | None = None,
        previous_sid: str | None = None,
        dpop_key: bytes | None = None,
    ) -> LiveSession:
        """A new session for validated ID-token ``claims``; ends ``previous_sid`` (revoked) if live.

        ``dpop_key``: the sealed DPoP key the tokens are bound to, when they are."""
        now = self._clock.now()
        sid = self.new_sid()
        document = {
            "v": 2,
            "sub": claims["sub"],
            "idp_sid": claims.get("sid"),
            "claims": public_claims(claims),
            "acr": claims.get("acr"),
            "amr": claims.get("amr"),
            "auth_time": claims.get("auth_time"),
            "created_at": now,
            "expires_at": now + self._policy.lifetime,
            "device": device[:_MAX_DEVICE],
        }
        fields: dict[str, bytes] = {
            DOC: encode_document(document),
            REFRESH: self._box.seal(refresh_token.encode()),
            SEEN: f"{now:.3f}".encode(),
        }
        if dpop_key is not None:
            fields[DPOP_KEY] = dpop_key
        for set_key, value in (access or {}).items():
            fields[ACCESS_PREFIX + set_key] = value
        session = LiveSession(sid, document, fields)
        self._store.write(sid, fields, self._ttl(session, now))
        self._store.index_add(sub_index(session.sub), sid, self._policy.lifetime)
        if session.idp_sid:
            self._store.index_add(idp_sid_index(session.idp_sid), sid, self._policy.lifetime)
        metrics.session_started()
        log.info("session started", extra={"event": "session.start", "session": self._tag(sid)})
        if previous_sid and previous_sid != sid:
            self.end_by_id(previous_sid, EndReason.REPLACED)
        return session

    # Reading ----------------------------------------------------------------------------------

    @property
    def cache(self) -> SessionCache | None:
        """The process-local session cache (``None`` when the store cannot carry its announcements)."""
        return self._cache

    def load_live(self, sid: str, *, cached: bool = False) -> LiveSession | None:
        """The session if it exists and is live now; an expired one is ended here and ``None`` returned.

        ``cached``: the session cache may answer instead of the store (only for reads: a cached copy
        may lag a change made elsewhere by the time its announcement takes to arrive).
        """
        cache = self._cache
        ticket = None
        if cached and cache is not None and cache.enabled:
            hit, ticket = cache.lookup(sid)
            if hit is not None:
                return hit
        fields = self._store.load(sid)
        if fields is None:
            return None
        session = LiveSession.from_fields(sid, fields.fields)
        if session is None:
            return None
        expired = self._expiry(session, self._clock.now())
        if expired is not None:
            self.end(session, expired)
            return None
        if ticket is not None and cache is not None:
            cache.put(session, ticket, self._live_until(session))
        return session

    def reload(self, sid: str) -> LiveSession | None:
        """The record as stored now (for the token manager's re-checks), without expiry handling."""
        fields = self._store.load(sid)
        return None if fields is None else LiveSession.from_fields(sid, fields.fields)

    def list_for_user(self, sub: str) -> list[LiveSession]:
        """Every live session of ``sub``; index entries of sessions that are gone are tidied away."""
        index = sub_index(sub)
        found = []
        for sid in self._store.index_members(index):
            session = self.load_live(sid)
            if session is None:
                self._store.index_remove(index, sid)
            elif session.sub == sub:
                found.append(session)
        return found

    def sessions_of_idp_session(self, idp_sid: str) -> list[LiveSession]:
        """Every live BFF session started from the IdP session ``idp_sid``."""
        index = idp_sid_index(idp_sid)
        found = []
        for sid in self._store.index_members(index):
            session = self.load_live(sid)
            if session is None:
                self._store.index_remove(index, sid)
            else:
                found.append(session)
        return found

    def idle_left(self, session: LiveSession) -> float:
        """Seconds until the session ends for inactivity (or its absolute lifetime, if sooner)."""
        return max(0.0, self._live_until(session) - self._clock.now())

    def touch(self, session: LiveSession) -> bool:
        """Slide the idle deadline, at most once per :attr:`touch_interval`; ``False`` when the write
        found the record gone (the session ended meanwhile, perhaps elsewhere).

        Not announced: a copy with an older ``seen`` only ends earlier (and then asks the store).
        """
        now = self._clock.now()
        if now - session.seen < self.touch_interval:
            return True
        seen = f"{now:.3f}".encode()
        updated = self._store.update(session.sid, {SEEN: seen}, ttl=self._ttl(session, now))
        if self._cache is not None:
            if updated:
                self._cache.touched(session.sid, seen, min(now + self._policy.idle_timeout, session.expires_at))
            else:
                self._cache.invalidate(session.sid)
        return updated

    # Ending -----------------------------------------------------------------------------------

    def end(self, session: LiveSession, reason: EndReason) -> None:
        """End ``session``: revoke its refresh token (unless ``reason`` says it is dead), remove its
        index entries, delete its record. Idempotent."""
        if reason.revokes:
            # The token may have rotated since the caller loaded the session: revoke the current one.
            current = self.reload(session.sid)
            sealed = (current or session).sealed_refresh_token
            opened = self._box.open(sealed) if sealed else None
            if opened is not None and not self._revoke(opened.decode()):
                log.warning("refresh token could not be revoked",
                            extra={"event": "session.revoke_failed", "session": self._tag(session.sid)})
        try:
            self._store.delete(session.sid)
        finally:
            self._forget(session.sid)
        self._announce(session.sid)
        self._store.index_remove(sub_index(session.sub), session.sid)
        if session.idp_sid:
            self._store.index_remove(idp_sid_index(session.idp_sid), session.sid)
        metrics.session_ended(reason.value)
        # Named by its own tag: the request that ends a session is not always that session's own.
        log.info("session ended: %s", reason.value,
                 extra={"event": "session.end", "reason": reason.value, "session": self._tag(session.sid)})

    def end_by_id(self, sid: str, reason: EndReason) -> bool:
        """End the session ``sid`` if it exists; returns whether it did."""
        session = self.reload(sid)
        if session is None:
            return False
        self.end(session, reason)
        return True

    # Token custody ----------------------------------------------------------------------------
    #
    # The refresh lock serialises the use of a session's refresh token across processes and hosts.
    # Its owner names the holder's process, whose heartbeat a waiter checks, so a lock left by a dead
    # holder (killed, or lost with a failed-over primary) is taken over within seconds instead of
    # blocking the session for its whole lease. Correctness never rests on the lock alone: every write
    # of the refresh token is a compare-and-set against the token that was redeemed.

    @property
    def beating(self) -> bool:
        """Whether this process is announcing its liveness (it has taken a lock within a lease)."""
        return self._heartbeat.beating

    def acquire_refresh_lock(self, sid: str, lease: float) -> str | None:
        """Take the session's refresh lock; returns the owner token, or ``None`` if it is held."""
        owner = f"{self._heartbeat.instance}.{secrets.token_urlsafe(9)}"
        self._heartbeat.ensure_running(lease)
        return owner if self._store.acquire(refresh_lock(sid), owner, lease) else None

    def extend_refresh_lock(self, sid: str, owner: str, lease: float) -> bool:
        return self._store.extend(refresh_lock(sid), owner, lease)

    def release_refresh_lock(self, sid: str, owner: str) -> None:
        self._store.release(refresh_lock(sid), owner)

    def break_dead_refresh_lock(self, sid: str) -> bool:
        """Free the refresh lock if its holder's process has stopped beating; returns whether it did."""
        owner = self._store.lock_owner(refresh_lock(sid))
        if owner is None:
            return True
        instance = owner.rpartition(".")[0]
        if not instance or self._heartbeat.alive(instance):
            return False
        log.warning("refresh lock of a dead holder taken over", extra={"event": "token.lock_taken_over"})
        self._store.release(refresh_lock(sid), owner)
        return True

    def begin_refresh(self, session: LiveSession) -> bool:
        """Record, durably, that the current refresh token is about to be presented to the IdP.

        If the attempt's outcome stays unknown (a timeout, a broken connection, a holder that died),
        whoever refreshes next sees this mark and knows the token may already have been rotated.
        ``False`` when the refresh token changed meanwhile.
        """
        sealed = session.sealed_refresh_token
        if sealed is None:
            return False
        stamp = f"{self._clock.now():.3f}".encode()
        return self._store.update_cas(session.sid, {INTENT: stamp}, guard=REFRESH, expected=sealed)

    def save_tokens(
        self, session: LiveSession, *, refresh_token: str | None, access: t.Mapping[str, bytes]
    ) -> bool:
        """Store a refresh result: a rotated refresh token and access tokens, and clear the attempt's mark.

        Compare-and-set against the refresh token ``session`` holds (the one redeemed): ``False`` when
        it changed meanwhile. Safe to repeat after an unclear failure; durable when it returns.
        """
        sealed = session.sealed_refresh_token
        if sealed is None:
            return False
        fields = {ACCESS_PREFIX + set_key: value for set_key, value in access.items()}
        if refresh_token is not None:
            fields[REFRESH] = self._sealed_for(session.sid, refresh_token)
        try:
            saved = self._store.update_cas(session.sid, fields, guard=REFRESH, expected=sealed, remove=(INTENT,))
        finally:
            self._forget(session.sid)
        if saved:
            self._announce(session.sid)
        return saved

    def abandon_refresh(self, session: LiveSession) -> bool:
        """The IdP answered without rotating (or the request never left): clear the attempt's mark."""
        sealed = session.sealed_refresh_token
        if sealed is None:
            return False
        return self._store.update_cas(session.sid, {}, guard=REFRESH, expected=sealed, remove=(INTENT,))

    def open_refresh_token(self, session: LiveSession) -> str | None:
        sealed = session.sealed_refresh_token
        opened = self._box.open(sealed) if sealed else None
        return opened.decode() if opened is not None else None

    def _sealed_for(self, sid: str, refresh_token: str) -> bytes:
        # Sealing is randomised; a repeated write of the same result must carry the same bytes, or the
        # compare-and-set could not recognise it as already applied.
        with self._sealed_lock:
            cached = self._sealed.get(sid)
            if cached is not None and cached[0] == refresh_token:
                return cached[1]
            sealed = self._box.seal(refresh_token.encode())
            if len(self._sealed) > 1024:
                self._sealed.clear()
            self._sealed[sid] = (refresh_token, sealed)
            return sealed

    # Login transactions (in the browser) ------------------------------------------------------

    def seal_login(self, cookie: str | None, transaction: LoginTransaction) -> str:
        """The binding cookie's new value: this transaction added to those still pending."""
        pending = [tx for tx in self.open_login(cookie) if tx.state != transaction.state]
        pending = [*pending[-(_MAX_LOGINS - 1):], transaction]
        while True:
            value = self._box.seal(json.dumps([asdict(tx) for tx in pending]).encode()).decode()
            if len(value) <= _MAX_LOGIN_COOKIE or len(pending) == 1:
                return value
            pending = pending[1:]

    def open_login(self, cookie: str | None) -> list[LoginTransaction]:
        """The login transactions sealed in a binding cookie that have not expired."""
        if not cookie:
            return []
        opened = self._box.open(cookie.encode(), ttl=LOGIN_TRANSACTION_TTL)
        if opened is None:
            return []
        try:
            transactions = [LoginTransaction(**item) for item in json.loads(opened)]
        except (ValueError, TypeError):
            return []
        now = self._clock.now()
        return [tx for tx in transactions if now - tx.created_at <= LOGIN_TRANSACTION_TTL]

    def find_login(self, cookie: str | None, state: str) -> tuple[LoginTransaction | None, str | None]:
        """``(transaction, the cookie's new value or None to delete it)`` for a callback's ``state``.

        Reads the browser's cookie only: a state this browser did not start finds nothing and consumes
        nothing. The caller then consumes the transaction with :meth:`consume_login`.
        """
        pending = self.open_login(cookie)
        found = next((tx for tx in pending if secrets.compare_digest(tx.state, state)), None)
        if found is None:
            return None, cookie
        rest = [tx for tx in pending if tx is not found]
        remaining = (
            self._box.seal(json.dumps([asdict(tx) for tx in rest]).encode()).decode() if rest else None
        )
        return found, remaining

    def consume_login(self, transaction: LoginTransaction) -> bool:
        """Use a login transaction once across every process: a replayed callback finds it used."""
        return self.claim_once("login-used", transaction.state, LOGIN_TRANSACTION_TTL)

    def claim_once(self, namespace: str, value: str, ttl: float) -> bool:
        """``True`` for the first caller to claim ``value`` within ``ttl`` seconds, across processes
        (replay guards: a used login state, a back-channel logout token's ``jti``)."""
        digest = hashlib.sha256(value.encode()).hexdigest()
        return self._store.put(once_key(namespace, digest), b"1", ttl, only_new=True)

    # Connect transactions (in the store) ------------------------------------------------------

    def put_connect(
        self, session: LiveSession, state: str, binding: str, payload: t.Mapping[str, t.Any], ttl: float
    ) -> bool:
        """Keep a connect flow for ``ttl`` seconds; ``False`` when the session has too many in progress."""
        for slot in range(MAX_CONNECT_FLOWS):
            if self._store.acquire(connect_slot(session.sid, slot), state, ttl):
                transaction = ConnectTransaction(session.sid, session.sub, binding, slot, dict(payload))
                sealed = self._box.seal(json.dumps(asdict(transaction)).encode())
                self._store.put(connect_key(state), sealed, ttl)
                return True
        return False

    def peek_connect(self, state: str) -> ConnectTransaction | None:
        """The flow for ``state`` without consuming it (to check its binding first)."""
        sealed = self._store.get(connect_key(state))
        opened = self._box.open(sealed) if sealed else None
        if opened is None:
            return None
        try:
            return ConnectTransaction(**json.loads(opened))
        except (ValueError, TypeError):
            return None

    def take_connect(self, state: str) -> bool:
        """Consume the flow for ``state``: exactly one caller gets ``True``; its slot is freed."""
        sealed = self._store.take(connect_key(state))
        opened = self._box.open(sealed) if sealed else None
        if opened is None:
            return False
        transaction = ConnectTransaction(**json.loads(opened))
        self._store.release(connect_slot(transaction.sid, transaction.slot), state)
        return True

    # Internals --------------------------------------------------------------------------------

    def _tag(self, sid: str) -> str:
        return session_tag(self._box.mac, sid)

    def _forget(self, sid: str) -> None:
        if self._cache is not None:
            self._cache.invalidate(sid)

    def _announce(self, sid: str) -> None:
        if self._cache is not None:
            self._cache.announce(sid)

    def _live_until(self, session: LiveSession) -> float:
        """When the session ends if nothing happens: its idle deadline, capped by its lifetime."""
        return min(session.seen + self._policy.idle_timeout, session.expires_at)

    def _expiry(self, session: LiveSession, now: float) -> EndReason | None:
        if session.expires_at <= now:
            return EndReason.LIFETIME
        if session.seen + self._policy.idle_timeout <= now:
            return EndReason.IDLE_TIMEOUT
        return None

    def _ttl(self, session: LiveSession, now: float) -> float:
        """The store's TTL: the idle deadline capped by the lifetime, plus a grace period."""
        remaining = session.expires_at - now
        return max(1.0, min(self._policy.idle_timeout, remaining)) + _EXPIRY_GRACE
