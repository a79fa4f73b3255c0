"""``/bff/sessions``: the logged-in user's sessions, and ending one of them.

* ``GET /bff/sessions`` — ``{"sessions": [{id, current, created_at, last_seen, device}]}`` for the
  current user, found through the ``sub:`` index (no scan of the store).
* ``DELETE /bff/sessions/<id>`` — CSRF-protected; ends that session as logout does (refresh
  token revoked, record and index entries deleted) and answers 204; an id that is not one of the
  user's live sessions is a 404 problem.

Security: a session id is a bearer credential (it *is* the cookie), so the listing never shows
one. Each session is named by an opaque handle, an HMAC of its id under the BFF's secret: stable,
unguessable, and useless as a cookie. A handle only ever resolves among the caller's own
sessions, so a user cannot end (or probe) anybody else's.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..errors import Problem, ProblemKind
from ..security import check_anti_forgery
from ..services import Services, services
from ..session import EndReason, require_session

__all__ = ["blueprint", "describe_device", "session_handle"]

blueprint = Blueprint("sessions", __name__, url_prefix="/bff")

_MAX_HANDLE = 128


def session_handle(svc: Services, sid: str) -> str:
    """The public name of a session: never the session id itself."""
    return svc.box.mac("session:" + sid)


@blueprint.get("/sessions")
def list_sessions() -> Response:
    svc = services()
    session = require_session(svc.sessions)
    sessions = [
        {
            "id": session_handle(svc, other.sid),
            "current": other.sid == session.sid,
            "created_at": other.created_at,
            "last_seen": other.seen,
            "device": describe_device(str(other.document.get("device", ""))),
            "user_agent": other.document.get("device", ""),
        }
        for other in svc.sessions.list_for_user(str(session["sub"]))
    ]
    sessions.sort(key=lambda entry: (not entry["current"], -(entry["created_at"] or 0)))
    response = jsonify({"sessions": sessions})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.delete("/sessions/<handle>")
def end_one_session(handle: str) -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    session = require_session(svc.sessions)
    if len(handle) <= _MAX_HANDLE:
        for other in svc.sessions.list_for_user(str(session["sub"])):
            if svc.box.verify_mac("session:" + other.sid, handle):
                svc.sessions.end(other, EndReason.ENDED_BY_USER)
                if other.sid == session.sid:
                    # Ending the current session is a logout: the cookie goes too.
                    session.drop()
                response = Response(status=204)
                response.headers["Cache-Control"] = "no-store"
                return response
    raise Problem(ProblemKind.SESSION_NOT_FOUND, "No session of yours has this id.")


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
             ("Chromium/", "Chromium"), ("Safari/", "Safari"))
_SYSTEMS = (("iPhone", "iPhone"), ("iPad", "iPad"), ("Android", "Android"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def describe_device(user_agent: str) -> str:
    """A short, human name for a User-Agent ("Chrome on Linux"); the raw string is kept beside it."""
    browser = next((name for marker, name in _BROWSERS if marker in user_agent), None)
    system = next((name for marker, name in _SYSTEMS if marker in user_agent), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or (user_agent[:40] if user_agent else "Unknown device")
