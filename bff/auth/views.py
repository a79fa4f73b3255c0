"""Login, callback, user and logout endpoints under ``/bff``.

* ``GET /bff/login`` — a navigation: code + PKCE (S256) + ``state`` + ``nonce``. The login
  transaction (state, nonce, verifier, return URL, the browser's current session) is sealed into a
  short-lived ``SameSite=Lax`` binding cookie, never into the store: an anonymous request creates no
  server-side state, and only the browser that started a login can finish it. Several tabs may log in
  at once (the cookie holds a few transactions).
* ``GET /bff/callback`` — finds the transaction in this browser's cookie *before* consuming anything
  (a stranger opening the callback URL burns nothing), consumes it once, exchanges the code, validates
  the ID token, starts a session under a new id and ends the browser's previous session, even when the
  ``SameSite=Strict`` session cookie was not sent on the cross-site redirect back.
* ``GET /bff/user`` — the profile and session lifetime, never a token.
* ``POST /bff/logout`` — CSRF-protected: end the session (refresh token revoked), clear the cookie,
  return the IdP logout URL (``client_id`` and ``logout_hint``: never the ID token).
  ``GET /bff/logout?sid=…`` does the same for a plain link, but only with the session's logout tag,
  which a cross-site page cannot know.
"""

from __future__ import annotations

import logging
import re
import typing as t

from flask import Blueprint, Response, after_this_request, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from ..errors import Problem, ProblemKind, store_unavailable_problem
from ..logs import session_tag
from ..navigation import navigation_error, wants_json
from ..security import check_anti_forgery, safe_return_to
from ..services import Services, services
from ..session import (
    LOGIN_TRANSACTION_TTL,
    BffSession,
    EndReason,
    LoginTransaction,
    current_session,
    require_session,
)
from ..store import StoreUnavailable
from ..tokens.endpoint import TokenFailure

__all__ = ["blueprint", "logout_tag"]

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__, url_prefix="/bff")

_PROMPTS = {"login", "consent", "select_account", "none"}
_SAFE_TEXT = re.compile(r"[\x21-\x7e ]{1,512}")
_STATE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_SID = re.compile(r"[A-Za-z0-9_-]{43}")


def _login_failed(detail: str, kind: ProblemKind = ProblemKind.LOGIN_FAILED) -> Problem:
    # The kind only: the detail may quote the provider's error_description, which came in a query string.
    log.warning("login failed: %s", kind.slug, extra={"event": "login", "result": "failed", "problem": kind.slug})
    return Problem(kind, detail, login_url="/bff/login")


def _invalid(detail: str) -> Problem:
    return Problem(ProblemKind.INVALID_LOGIN_REQUEST, detail)


def _login_params(svc: Services) -> dict[str, str]:
    """The allowlisted authorization parameters a caller may add (step-up, hints, more scope)."""
    args = request.args
    extra: dict[str, str] = {}
    allowed = set(args) - {"returnTo", "acr_values", "max_age", "prompt", "login_hint", "scope"}
    if allowed:
        raise _invalid(f"Unsupported login parameter: {sorted(allowed)[0]}.")
    if "acr_values" in args:
        if not _SAFE_TEXT.fullmatch(args["acr_values"]):
            raise _invalid("acr_values is malformed.")
        extra["acr_values"] = args["acr_values"]
    if "max_age" in args:
        if not args["max_age"].isdigit() or len(args["max_age"]) > 9:
            raise _invalid("max_age must be a number of seconds.")
        extra["max_age"] = args["max_age"]
    if "prompt" in args:
        if args["prompt"] not in _PROMPTS:
            raise _invalid("prompt is not supported.")
        extra["prompt"] = args["prompt"]
    if "login_hint" in args:
        if not _SAFE_TEXT.fullmatch(args["login_hint"]) or len(args["login_hint"]) > 256:
            raise _invalid("login_hint is malformed.")
        extra["login_hint"] = args["login_hint"]
    if "scope" in args:
        requested = args["scope"].split()
        unknown = [scope for scope in requested if scope not in svc.settings.step_up_scopes]
        if unknown:
            raise _invalid(f"Scope {unknown[0]!r} is not in BFF_STEP_UP_SCOPES.")
        base = svc.settings.scopes.split()
        extra["scope"] = " ".join(base + [scope for scope in requested if scope not in base])
    return extra


def _set_login_cookie(svc: Services, response: BaseResponse, value: str | None) -> None:
    name = svc.settings.login_cookie_name
    secure = svc.settings.secure_cookies
    if value is None:
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="Lax")
    else:
        response.set_cookie(name, value, max_age=LOGIN_TRANSACTION_TTL, path="/", secure=secure,
                            httponly=True, samesite="Lax")


@blueprint.get("/login")
def login() -> BaseResponse:
    try:
        return_to = safe_return_to(request.args.get("returnTo"))
    except Problem as problem:
        # Not a place to send anyone back to: a page that offers a fresh start.
        return navigation_error(request, problem, return_to=None)
    try:
        return _login(return_to)
    except Problem as problem:
        return navigation_error(request, problem, return_to=return_to)


def _dpop_algorithm(svc: Services) -> str | None:
    """The algorithm of DPoP keys with ``BFF_DPOP`` on, ``None`` with it off."""
    if not svc.settings.dpop:
        return None
    algorithm = svc.provider.dpop_algorithm()
    if algorithm is None:
        raise Problem(ProblemKind.IDP_MISCONFIGURED,
                      "BFF_DPOP is on, but the provider accepts none of the BFF's DPoP signing algorithms.")
    return algorithm


def _dpop_jkt(svc: Services) -> t.Callable[[str], str] | None:
    """The authorization request's ``dpop_jkt``, from the key the login's ``state`` derives."""
    algorithm = _dpop_algorithm(svc)
    if algorithm is None:
        return None
    return lambda state: svc.dpop_keys.for_login(state, algorithm).thumbprint


def _login(return_to: str) -> BaseResponse:
    svc = services()
    extra = _login_params(svc)
    svc.limits.hit("login", request.remote_addr or "")
    authorization = svc.provider.authorization_request(extra, dpop_jkt=_dpop_jkt(svc))
    # The browser's current session, ended once the new one starts. The raw cookie, not a loaded
    # session: the login must not depend on the store, and an id that names nothing ends nothing.
    current = request.cookies.get(svc.settings.session_cookie_name, "")
    transaction = LoginTransaction(
        state=authorization.state,
        nonce=authorization.nonce,
        verifier=authorization.code_verifier,
        return_to=return_to,
        max_age=extra.get("max_age"),
        previous_sid=current if _SID.fullmatch(current) else None,
        created_at=svc.clock.now(),
    )
    cookie = svc.sessions.seal_login(request.cookies.get(svc.settings.login_cookie_name), transaction)
    response = redirect(authorization.url, code=302)
    response.headers["Cache-Control"] = "no-store"
    _set_login_cookie(svc, response, cookie)
    return response


@blueprint.get("/callback")
def callback() -> BaseResponse:
    """Every failure goes back to the SPA: to the page the login started from once the transaction is
    known, else to ``/``; with ``error`` and ``error_description`` (or the problem, if JSON is asked for)."""
    svc = services()
    args = request.args
    state = args.get("state", "")
    cookie = request.cookies.get(svc.settings.login_cookie_name)
    transaction, remaining = svc.sessions.find_login(cookie, state) if _STATE.fullmatch(state) else (None, cookie)
    if transaction is None:
        unknown = _login_failed("Unknown or expired login state, or a login this browser did not start.")
        return navigation_error(request, unknown, return_to="/")
    try:
        if not svc.sessions.consume_login(transaction):
            used = _login_failed("This login was already completed; log in again.")
            return navigation_error(request, used, return_to="/")
    except StoreUnavailable:
        return navigation_error(request, store_unavailable_problem(), return_to=transaction.return_to)
    if remaining != cookie:

        @after_this_request
        def _update_cookie(response: Response) -> Response:
            _set_login_cookie(svc, response, remaining)
            return response

    if "error" in args:
        error = str(args.get("error"))[:64]
        description = str(args.get("error_description", ""))[:200]
        answered = _login_failed(f"The identity provider answered {error}: {description}".rstrip(": "))
        return navigation_error(request, answered, return_to=transaction.return_to, upstream_error=error)
    try:
        return _finish_login(svc, transaction)
    except Problem as problem:
        return navigation_error(request, problem, return_to=transaction.return_to)
    except StoreUnavailable:
        return navigation_error(request, store_unavailable_problem(), return_to=transaction.return_to)


def _finish_login(svc: Services, transaction: LoginTransaction) -> BaseResponse:
    args = request.args
    code = args.get("code")
    if not code:
        raise _login_failed("The callback is missing its code.")
    algorithm = _dpop_algorithm(svc)
    dpop = svc.dpop_keys.for_login(transaction.state, algorithm) if algorithm is not None else None
    result = svc.token_client.exchange_code(
        svc.provider.endpoint("token_endpoint"),
        code=code,
        code_verifier=transaction.verifier,
        redirect_uri=svc.settings.redirect_uri,
        dpop=dpop,
    )
    if isinstance(result, TokenFailure):
        if result.kind in ("unavailable", "ambiguous"):
            raise _login_failed("The token endpoint is not answering; try logging in again.",
                                ProblemKind.IDP_UNAVAILABLE)
        if result.kind == "server_error":
            raise _login_failed(f"The token endpoint failed ({result.error}).", ProblemKind.IDP_ERROR)
        raise _login_failed(f"The code could not be exchanged ({result.error}).")
    if not result.id_token:
        raise _login_failed("The token response has no ID token.", ProblemKind.IDP_ERROR)
    if dpop is not None and not result.dpop_bound:
        raise _login_failed(
            f"The identity provider answered {result.token_type} tokens where DPoP was required: enable "
            "DPoP (sender-constraining) for the application, or turn BFF_DPOP off.",
            ProblemKind.IDP_MISCONFIGURED,
        )
    if not result.refresh_token:
        raise _login_failed(
            "The token response has no refresh token: request offline_access and allow the "
            "refresh-token grant for this application.",
            ProblemKind.IDP_ERROR,
        )
    claims = svc.provider.validate_id_token(result.id_token, nonce=transaction.nonce)
    if transaction.max_age is not None:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or svc.clock.now() - auth_time > int(transaction.max_age) + 60:
            raise _login_failed("The identity provider did not re-authenticate within max_age.")
    session = current_session()
    previous = transaction.previous_sid or (session.sid if session.authenticated else None)
    live = svc.sessions.start(
        claims,
        result.refresh_token,
        request.headers.get("User-Agent", ""),
        access=svc.tokens.login_access(result),
        previous_sid=previous,
        dpop_key=svc.dpop_keys.seal(dpop) if dpop is not None else None,
    )
    session.adopt(live)
    log.info("login", extra={"event": "login", "result": "ok", "session": session_tag(svc.box.mac, live.sid),
                             "mfa": "mfa" in (claims.get("amr") or []), "replaced": previous is not None})
    response = redirect(transaction.return_to, code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


def logout_tag(svc: Services, session: BffSession) -> str:
    return svc.box.mac("logout:" + session.sid)


@blueprint.get("/user")
def user() -> Response:
    svc = services()
    session = require_session(svc.sessions)
    live = session.live
    assert live is not None
    now = svc.clock.now()
    body = {
        "claims": live.document.get("claims", {}),
        "session": {
            "created_at": live.created_at,
            "expires_in": max(0, int(live.expires_at - now)),
            "idle_expires_in": int(svc.sessions.idle_left(live)),
            "last_seen": live.seen,
            "acr": live.document.get("acr"),
            "amr": live.document.get("amr"),
            "auth_time": live.document.get("auth_time"),
        },
        "logout_url": "/bff/logout?sid=" + logout_tag(svc, session),
    }
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _end_current(svc: Services, session: BffSession) -> str | None:
    """End the current session (if any); returns its IdP session id for the logout hint."""
    live = session.live
    if live is None:
        return None
    svc.sessions.end(live, EndReason.LOGOUT)
    session.drop()
    log.info("logout", extra={"event": "logout", "session": session_tag(svc.box.mac, live.sid)})
    return live.idp_sid


@blueprint.post("/logout")
def logout() -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    session = current_session()
    if session.unavailable:
        raise StoreUnavailable("the session could not be read")
    idp_sid = _end_current(svc, session)
    response = jsonify({"logout_url": svc.provider.logout_url(idp_sid)})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/logout")
def logout_link() -> BaseResponse:
    """Plain-link logout; requires the session's logout tag so it cannot be triggered cross-site.

    A navigation: without a session it goes home (there is nothing to end), a foreign tag gets a page.
    """
    svc = services()
    try:
        return _logout_link(svc)
    except Problem as problem:
        home = None if problem.kind is ProblemKind.CSRF else "/"
        return navigation_error(request, problem, return_to=home, retry="/")
    except StoreUnavailable:
        return navigation_error(request, store_unavailable_problem(), return_to="/", retry="/")


def _logout_link(svc: Services) -> BaseResponse:
    if not current_session().authenticated and not current_session().unavailable and not wants_json(request):
        # Nothing to end (already logged out, or the session expired): the link has done its job.
        return redirect(svc.settings.post_logout_redirect_uri, code=302)
    session = require_session(svc.sessions)
    tag = request.args.get("sid", "")
    if not tag or not svc.box.verify_mac("logout:" + session.sid, tag):
        raise Problem(ProblemKind.CSRF, "A logout link must carry this session's sid parameter.")
    idp_sid = _end_current(svc, session)
    response = redirect(svc.provider.logout_url(idp_sid), code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


