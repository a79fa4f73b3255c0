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

import typing as t

from flask import Blueprint, Response, jsonify, request

from ..errors import Problem
from ..security import check_anti_forgery
from ..services import Services, services
from ..session import DOC, SEEN
from .lifecycle import end_record, load_document, sub_index
from .views import require_session

__all__ = ["blueprint", "session_handle"]

blueprint = Blueprint("sessions", __name__, url_prefix="/bff")

_MAX_HANDLE = 128


def session_handle(svc: Services, sid: str) -> str:
    """The public name of a session: never the session id itself."""
    return svc.box.mac("session:" + sid)


def _user_sessions(svc: Services, sub: str) -> list[tuple[str, dict[str, t.Any], float | None]]:
    """``(sid, document, last_seen)`` of every live session of ``sub``; tidies stale index entries."""
    found = []
    index = sub_index(sub)
    now = svc.clock.now()
    for sid in svc.store.index_members(index):
        record = svc.store.load(sid)
        document = load_document(record.fields.get(DOC)) if record is not None else None
        if record is None or document is None or float(document.get("expires_at", 0)) <= now:
            # The record expired (idle or lifetime) and left its index entry behind.
            svc.store.index_remove(index, sid)
            continue
        if document.get("sub") != sub:
            continue
        seen = record.fields.get(SEEN)
        found.append((sid, document, float(seen) if seen else None))
    return found


@blueprint.get("/sessions")
def list_sessions() -> Response:
    session = require_session()
    svc = services()
    sessions = [
        {
            "id": session_handle(svc, sid),
            "current": sid == session.sid,
            "created_at": document.get("created_at"),
            "last_seen": last_seen,
            "device": describe_device(str(document.get("device", ""))),
            "user_agent": document.get("device", ""),
        }
        for sid, document, last_seen in _user_sessions(svc, str(session["sub"]))
    ]
    sessions.sort(key=lambda entry: (not entry["current"], -(entry["created_at"] or 0)))
    response = jsonify({"sessions": sessions})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.delete("/sessions/<handle>")
def end_one_session(handle: str) -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    session = require_session()
    if len(handle) <= _MAX_HANDLE:
        for sid, document, _ in _user_sessions(svc, str(session["sub"])):
            if svc.box.verify_mac("session:" + sid, handle):
                end_record(svc, sid, document, revoke=True)
                if sid == session.sid:
                    # Ending the current session is a logout: the cookie goes too.
                    session.clear()
                response = Response(status=204)
                response.headers["Cache-Control"] = "no-store"
                return response
    raise Problem(404, "session-not-found", "Session not found", "No session of yours has this id.")


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
