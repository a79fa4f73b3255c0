"""Flask's session, as a read-only view of the session core's record, and the session cookie.

The browser holds only an opaque, random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie.
Opening a session is one round trip (:meth:`SessionCore.load_live`), or none for a proxied read the
session cache can answer (:mod:`bff.session.cache`); nothing is ever written back
from Flask's session object, so concurrent requests of one session can never write a stale copy of
anything (the lost-update bug of whole-blob sessions): every change goes through the session core.

A store outage while opening the session does not raise inside Flask's request setup (that would be
a 500, or worse, look like "no session"): the session is marked unavailable, and
:func:`bff.session.require_session` answers 503 instead of 401.
"""

from __future__ import annotations

import re
import typing as t

from flask import Flask, Request, Response, session
from flask.sessions import SessionInterface
from flask_session.base import ServerSideSession

from ..errors import Problem, ProblemKind
from ..settings import Settings
from ..store import StoreUnavailable
from .core import SessionCore
from .record import LiveSession

__all__ = ["BffSession", "StoreSessionInterface", "current_session", "init_app", "require_session"]

_SID = re.compile(r"[A-Za-z0-9_-]{43}")
# Paths that never need the session: answering them must not cost a store round trip, and a store
# outage must not affect them.
_SESSIONLESS_PREFIXES = ("/healthz", "/readyz", "/bff/static/", "/bff/backchannel-logout")
_SESSION_PREFIXES = ("/bff/", "/me/")
# The reads the session cache may answer: proxied calls that change nothing. Every other request (a
# write, a login, a logout, the session list) reads the store.
_CACHED_PREFIX = "/me/"
_CACHED_METHODS = frozenset({"GET", "HEAD"})


class BffSession(ServerSideSession):  # type: ignore[misc]
    """The session document as a dict, plus the live record it was loaded from.

    ``unavailable``: the store could not be read (answer 503, never 401). ``started``/``ended``:
    the response must set or delete the cookie.
    """

    live: LiveSession | None = None
    unavailable: bool = False
    started: bool = False
    ended: bool = False

    @property
    def authenticated(self) -> bool:
        return self.live is not None

    def adopt(self, live: LiveSession) -> None:
        """Become the freshly started ``live`` session (its cookie is set on the response)."""
        self.clear()
        self.update(live.document)
        self.sid = live.sid
        self.live = live
        self.started = True
        self.ended = False

    def drop(self) -> None:
        """The session ended: forget it and delete the cookie on the response."""
        self.clear()
        self.live = None
        self.started = False
        self.ended = True


class StoreSessionInterface(SessionInterface):
    """Opens :class:`BffSession` through the session core; sets or deletes the cookie, nothing else."""

    def __init__(self, core: SessionCore, settings: Settings) -> None:
        self.core = core
        self.settings = settings

    def _empty(self) -> BffSession:
        return BffSession(sid="", permanent=True)

    def open_session(self, app: Flask, request: Request) -> BffSession:
        path = request.path
        if path.startswith(_SESSIONLESS_PREFIXES) or not path.startswith(_SESSION_PREFIXES):
            return self._empty()
        sid = request.cookies.get(self.settings.session_cookie_name)
        if not sid or not _SID.fullmatch(sid):
            return self._empty()
        session = self._empty()
        try:
            live = self.core.load_live(
                sid, cached=request.method in _CACHED_METHODS and path.startswith(_CACHED_PREFIX)
            )
        except StoreUnavailable:
            session.unavailable = True
            return session
        if live is None:
            # Unknown ids are never adopted: a planted cookie cannot fix the next session's id.
            return session
        session.update(live.document)
        session.sid = sid
        session.live = live
        return session

    def save_session(self, app: Flask, session: t.Any, response: Response) -> None:
        if not isinstance(session, BffSession):
            return
        name = self.settings.session_cookie_name
        if session.started and session.live is not None:
            response.set_cookie(
                name,
                session.live.sid,
                path="/",
                secure=self.settings.secure_cookies,
                httponly=True,
                samesite="Strict",
            )
        elif session.ended:
            # Only on a real logout: deleting the cookie because a request carried an ended id could
            # race with (and erase) the cookie of the login that replaced it.
            response.delete_cookie(
                name, path="/", secure=self.settings.secure_cookies, httponly=True, samesite="Strict"
            )


def current_session() -> BffSession:
    return t.cast(BffSession, session._get_current_object())  # type: ignore[attr-defined]


def require_session(core: SessionCore) -> BffSession:
    """The logged-in session, or a 401 problem (with a login URL) — never a redirect.

    A session that could not be read because the store is failing is a 503, never a 401: a store
    blip must not send the user to the login page. 401 means the store answered "no such session".
    """
    current = current_session()
    if current.unavailable:
        raise StoreUnavailable("the session could not be read")
    if not current.authenticated:
        raise Problem(ProblemKind.NOT_AUTHENTICATED, "This request needs a logged-in session.",
                      login_url="/bff/login")
    return current


def init_app(app: Flask, core: SessionCore, settings: Settings) -> None:
    """Install the session interface and the idle-timeout slide (one write per touch interval)."""
    app.session_interface = StoreSessionInterface(core, settings)

    @app.before_request
    def _touch() -> None:
        current = current_session()
        if current.live is not None and not core.touch(current.live):
            current.live = None  # it ended since it was read: this request has no session
