"""The consent page of the emulator's Connected Accounts flow (``{issuer}connect``).

Security first: the ticket in the URL is the only credential, as with Auth0's ``connect_uri``; it
is single-use and expires with its flow. The page is sent with ``no-store``, ``no-referrer`` and
``frame-ancestors 'none'`` so the ticket does not leak into caches or referrers and the Allow
button cannot be clickjacked.

``GET /connect?ticket=...`` shows the connection, the account at the provider being connected (the
request's ``login_hint``, else the user's email) and the scopes in words (:func:`scope_words`), each
scope itself in small type under its words, with Allow and Deny. The form posts back to ``/connect``;
Allow redirects to the flow's ``redirect_uri`` with ``connect_code`` and ``state``, Deny with
``error=access_denied``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, Response, make_response, redirect, render_template, request
from flask.typing import ResponseReturnValue

from .myaccount_state import ConnectTicketError, MyAccountState

__all__ = ["CONNECT_PATH", "blueprint", "scope_words"]

CONNECT_PATH = "/connect"

#: What a provider's consent page says for the scopes the emulator's connections offer. The demo SPA
#: (``bff/demo/static/ui.js``, ``SCOPE_WORDS``) says the same.
SCOPE_WORDS = {
    "openid": "Know who you are",
    "email": "See your email address",
    "profile": "See your name and profile picture",
    "offline_access": "Keep access when you are not using the application",
    "https://www.googleapis.com/auth/calendar": "See, edit, share and delete your calendars",
    "https://www.googleapis.com/auth/calendar.readonly": "See your calendars",
    "https://www.googleapis.com/auth/calendar.events": "See and edit events on your calendars",
    "https://www.googleapis.com/auth/calendar.events.readonly": "See events on your calendars",
    "https://www.googleapis.com/auth/calendar.settings.readonly": "See your calendar settings",
    "https://www.googleapis.com/auth/calendar.addons.execute": "Run as a Calendar add-on",
    "read:user": "See your profile",
    "user:email": "See your email addresses",
    "repo": "See and change your repositories",
}


def scope_words(scope: str) -> str:
    """A scope as a person reads it: ``See your calendars`` for ``https://www.googleapis.com/auth/calendar.readonly``.

    An unknown scope is named by its last path segment, with dots, underscores and colons as spaces and a
    trailing ``readonly`` as ``(read-only)``: ``Drive file`` for ``https://www.googleapis.com/auth/drive.file``.
    """
    if scope in SCOPE_WORDS:
        return SCOPE_WORDS[scope]
    last = urlsplit(scope).path.rstrip("/").rpartition("/")[2] if "://" in scope else scope
    words = [word for word in re.split(r"[._:]+", last or scope) if word]
    read_only = len(words) > 1 and words[-1] == "readonly"
    if read_only:
        words.pop()
    text = " ".join(words) or scope
    text = text[:1].upper() + text[1:]
    return f"{text} (read-only)" if read_only else text


def blueprint(store: MyAccountState) -> Blueprint:
    bp = Blueprint("myaccount_connect", __name__, template_folder="templates")

    @bp.get(CONNECT_PATH)
    def consent_page() -> Response:
        ticket = request.args.get("ticket", "")
        try:
            flow = store.consent_request(ticket)
        except ConnectTicketError as exc:
            return _page(render_template("connect_error.html", message=str(exc)), 400)
        # The provider's page names who is signed in there: the external account being connected.
        scopes = [(scope_words(scope), scope) for scope in flow.scopes]
        html = render_template(
            "connect_consent.html", flow=flow, account=flow.external_account, scopes=scopes, ticket=ticket
        )
        return _page(html, 200, redirect_uri=flow.redirect_uri)

    @bp.post(CONNECT_PATH)
    def consent_decision() -> ResponseReturnValue:
        decision = request.form.get("decision")
        if decision not in ("allow", "deny"):
            return _page(render_template("connect_error.html", message="Choose Allow or Deny."), 400)
        try:
            target = store.decide(request.form.get("ticket", ""), allow=decision == "allow")
        except ConnectTicketError as exc:
            return _page(render_template("connect_error.html", message=str(exc)), 400)
        return redirect(target, code=302)

    return bp


def _page(html: str, status: int, *, redirect_uri: str | None = None) -> Response:
    """``form-action`` also governs the redirect that answers the form (browsers enforce it on
    redirects), so the consent page names the origin of the flow's ``redirect_uri`` as well."""
    form_action = "'self'"
    if redirect_uri is not None:
        target = urlsplit(redirect_uri)
        form_action += f" {target.scheme}://{target.netloc}"
    response = make_response(html, status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'"
    )
    return response
