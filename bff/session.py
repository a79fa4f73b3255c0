"""Server-side sessions: flask-session's interface on top of :class:`bff.store.SessionStore`.

The browser holds only an opaque, random session id in an HttpOnly cookie. The session record
in the store has one field per concern:

* ``doc``  — the flask-session document (user claims, lifetimes), written at login only;
* ``rt``   — the sealed refresh token, written only under the session's refresh lock;
* ``at:*`` — sealed access tokens per scope set, written under the same lock;
* ``seen`` — last activity, written at most once per touch interval.

Because flask-session writes only ``doc``, and only when the document changed, concurrent
requests of one session can never write a stale copy of the tokens back (the lost-update bug
of whole-blob sessions). The whole record is read in one round trip, which is also all the hot
proxy path needs.

A store outage while opening the session does not raise inside Flask's request setup (that
would be a 500); the session is marked unavailable and the views answer 503 instead.
"""

from __future__ import annotations

import json
import re
import typing as t
from datetime import timedelta

from flask import Flask, Request, Response
from flask_session.base import ServerSideSession, ServerSideSessionInterface

from .clock import Clock
from .errors import StoreUnavailable, problem_response
from .settings import Settings
from .store import Record, SessionStore

__all__ = ["ACCESS_PREFIX", "DOC", "REFRESH", "SEEN", "BffSession", "StoreSessionInterface"]

DOC = "doc"
REFRESH = "rt"
ACCESS_PREFIX = "at:"
SEEN = "seen"

_SID = re.compile(r"[A-Za-z0-9_-]{43}")
_SID_BYTES = 32
# Paths that never need the session: answering them must not cost a store round trip, and a
# store outage must not affect them.
_SESSIONLESS_PREFIXES = ("/healthz", "/readyz", "/bff/static/", "/bff/backchannel-logout")
_SESSION_PREFIXES = ("/bff/", "/me/")


class BffSession(ServerSideSession):  # type: ignore[misc]
    """A flask-session session that also carries the raw record it was loaded from."""

    record: Record | None = None
    unavailable: bool = False

    @property
    def authenticated(self) -> bool:
        return bool(self.get("sub"))


class JsonSerializer:
    """JSON only: flask-session's default decoder falls back to pickle, which this must never do."""

    def encode(self, session: ServerSideSession) -> bytes:
        return json.dumps(dict(session), separators=(",", ":")).encode()

    def decode(self, serialized_data: bytes) -> dict[str, t.Any]:
        value = json.loads(serialized_data)
        if not isinstance(value, dict):
            raise ValueError("session document is not an object")
        return value


class StoreSessionInterface(ServerSideSessionInterface):  # type: ignore[misc]
    """flask-session backend for any :class:`SessionStore`."""

    session_class = BffSession

    def __init__(self, app: Flask, store: SessionStore, settings: Settings, clock: Clock) -> None:
        super().__init__(app, key_prefix="", use_signer=False, permanent=True, sid_length=_SID_BYTES)
        self.serializer = JsonSerializer()
        self.store = store
        self.settings = settings
        self.clock = clock

    def new_sid(self) -> str:
        return str(self._generate_sid(_SID_BYTES))

    def _fresh(self) -> BffSession:
        return BffSession(sid=self.new_sid(), permanent=True)

    def open_session(self, app: Flask, request: Request) -> BffSession:
        path = request.path
        if path.startswith(_SESSIONLESS_PREFIXES) or not path.startswith(_SESSION_PREFIXES):
            return self._fresh()
        sid = request.cookies.get(self.settings.session_cookie_name)
        if not sid or not _SID.fullmatch(sid):
            return self._fresh()
        try:
            record = self.store.load(sid)
        except StoreUnavailable:
            session = self._fresh()
            session.unavailable = True
            return session
        if record is None or DOC not in record.fields:
            # Unknown ids are never adopted: a planted cookie cannot fix the next session's id.
            return self._fresh()
        try:
            document = self.serializer.decode(record.fields[DOC])
        except ValueError:
            return self._fresh()
        if float(document.get("expires_at", 0)) <= self.clock.now():
            return self._fresh()
        session = BffSession(document, sid=sid)
        session.record = record
        return session

    def idle_left(self, session: BffSession) -> float | None:
        """Seconds until the session ends for inactivity (or for its absolute lifetime, if sooner)."""
        record = session.record
        if record is None:
            return None
        seen = float(record.fields.get(SEEN) or 0.0)
        ends = min(seen + self.settings.session_idle_timeout, float(session.get("expires_at", 0)))
        return max(0.0, ends - self.clock.now())

    def record_ttl(self, session: ServerSideSession) -> float:
        """Idle timeout, capped by what remains of the absolute lifetime."""
        remaining = float(session.get("expires_at", 0)) - self.clock.now()
        return max(1.0, min(float(self.settings.session_idle_timeout), remaining))

    def _retrieve_session_data(self, store_id: str) -> dict[str, t.Any] | None:
        record = self.store.load(store_id)
        if record is None or DOC not in record.fields:
            return None
        return self.serializer.decode(record.fields[DOC])

    def _upsert_session(self, session_lifetime: timedelta, session: ServerSideSession, store_id: str) -> None:
        self.store.write(store_id, {DOC: self.serializer.encode(session)}, self.record_ttl(session))

    def _delete_session(self, store_id: str) -> None:
        self.store.delete(store_id)

    def get_expiration_time(self, app: Flask, session: ServerSideSession) -> None:
        # A session cookie (no Expires): the server-side record decides the lifetime.
        return None

    def save_session(self, app: Flask, session: ServerSideSession, response: Response) -> None:
        if getattr(session, "unavailable", False):
            return
        try:
            super().save_session(app, session, response)
        except StoreUnavailable as error:
            # Too late for an error handler: turn the finished response into the 503 itself.
            failure = problem_response(503, "store-unavailable", error.title, error.detail)
            response.status_code = 503
            response.set_data(failure.get_data())
            response.headers.clear()
            response.headers.extend(failure.headers)
