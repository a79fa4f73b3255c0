"""Login, callback, user and logout endpoints under ``/bff``.

* ``GET /bff/login`` — a navigation: code + PKCE (S256) + ``state`` + ``nonce``. The login
  transaction is kept server-side under its ``state`` and bound to this browser by a short-lived
  ``SameSite=Lax`` cookie, because the ``SameSite=Strict`` session cookie is not sent on the
  cross-site redirect back from the IdP.
* ``GET /bff/callback`` — consumes the transaction exactly once, exchanges the code, validates
  the ID token and starts a session under a new id. Any failure is a 400/502/503 problem and
  leaves an existing session untouched.
* ``GET /bff/user`` — the profile and session lifetime, never a token.
* ``POST /bff/logout`` — CSRF-protected: revoke, delete, clear the cookie, return the IdP
  logout URL. ``GET /bff/logout?sid=…`` does the same for a plain link, but only with the
  session's logout tag, which a cross-site page cannot know.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from flask import Blueprint, Response, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from ..errors import Problem
from ..security import check_anti_forgery, safe_return_to
from ..services import Services, current_session, services
from ..session import SEEN, BffSession
from ..tokens.endpoint import TokenFailure
from .lifecycle import end_session, start_session

__all__ = ["blueprint", "require_session"]

blueprint = Blueprint("auth", __name__, url_prefix="/bff")

_LOGIN_TTL = 600
_PROMPTS = {"login", "consent", "select_account", "none"}
_SAFE_TEXT = re.compile(r"[\x21-\x7e ]{1,512}")


def _login_failed(detail: str, status: int = 400) -> Problem:
    return Problem(status, "login-failed", "Login failed", detail, login_url="/bff/login")


def _binding_hash(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


def _login_params(svc: Services) -> dict[str, str]:
    """The allowlisted authorization parameters a caller may add (step-up, hints, more scope)."""
    args = request.args
    extra: dict[str, str] = {}
    allowed = set(args) - {"returnTo", "acr_values", "max_age", "prompt", "login_hint", "scope"}
    if allowed:
        raise Problem(400, "invalid-login-request", "Invalid login request",
                      f"Unsupported login parameter: {sorted(allowed)[0]}.")
    if "acr_values" in args:
        if not _SAFE_TEXT.fullmatch(args["acr_values"]):
            raise Problem(400, "invalid-login-request", "Invalid login request", "acr_values is malformed.")
        extra["acr_values"] = args["acr_values"]
    if "max_age" in args:
        if not args["max_age"].isdigit() or len(args["max_age"]) > 9:
            raise Problem(400, "invalid-login-request", "Invalid login request",
                          "max_age must be a number of seconds.")
        extra["max_age"] = args["max_age"]
    if "prompt" in args:
        if args["prompt"] not in _PROMPTS:
            raise Problem(400, "invalid-login-request", "Invalid login request", "prompt is not supported.")
        extra["prompt"] = args["prompt"]
    if "login_hint" in args:
        if not _SAFE_TEXT.fullmatch(args["login_hint"]) or len(args["login_hint"]) > 256:
            raise Problem(400, "invalid-login-request", "Invalid login request", "login_hint is malformed.")
        extra["login_hint"] = args["login_hint"]
    if "scope" in args:
        requested = args["scope"].split()
        unknown = [scope for scope in requested if scope not in svc.settings.step_up_scopes]
        if unknown:
            raise Problem(400, "invalid-login-request", "Invalid login request",
                          f"Scope {unknown[0]!r} is not in BFF_STEP_UP_SCOPES.")
        base = svc.settings.scopes.split()
        extra["scope"] = " ".join(base + [scope for scope in requested if scope not in base])
    return extra


@blueprint.get("/login")
def login() -> BaseResponse:
    return_to = safe_return_to(request.args.get("returnTo"))
    svc = services()
    extra = _login_params(svc)
    authorization = svc.provider.authorization_request(extra)
    binding = request.cookies.get(svc.settings.login_cookie_name) or ""
    if not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", binding):
        binding = secrets.token_urlsafe(32)
    transaction = {
        "verifier": authorization.code_verifier,
        "nonce": authorization.nonce,
        "return_to": return_to,
        "binding": _binding_hash(binding),
        "max_age": extra.get("max_age"),
    }
    svc.store.put(
        "login:" + authorization.state,
        svc.box.seal(json.dumps(transaction).encode()),
        _LOGIN_TTL,
    )
    response = redirect(authorization.url, code=302)
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        svc.settings.login_cookie_name,
        binding,
        max_age=_LOGIN_TTL,
        path="/",
        secure=svc.settings.secure_cookies,
        httponly=True,
        samesite="Lax",
    )
    return response


@blueprint.get("/callback")
def callback() -> BaseResponse:
    svc = services()
    args = request.args
    state = args.get("state")
    if "error" in args:
        if state:
            svc.store.take("login:" + state)
        error = str(args.get("error"))[:64]
        description = str(args.get("error_description", ""))[:200]
        raise _login_failed(f"The identity provider answered {error}: {description}".rstrip(": "))
    code = args.get("code")
    if not state or not code:
        raise _login_failed("The callback is missing its code or state.")
    sealed = svc.store.take("login:" + state)
    opened = svc.box.open(sealed) if sealed else None
    if opened is None:
        raise _login_failed("Unknown, expired or already used login state.")
    transaction = json.loads(opened)
    binding = request.cookies.get(svc.settings.login_cookie_name, "")
    if not binding or not secrets.compare_digest(_binding_hash(binding), transaction["binding"]):
        raise _login_failed("This login was not started in this browser.")
    result = svc.token_client.exchange_code(
        svc.provider.endpoint("token_endpoint"),
        code=code,
        code_verifier=transaction["verifier"],
        redirect_uri=svc.settings.redirect_uri,
    )
    if isinstance(result, TokenFailure):
        if result.kind == "unavailable":
            raise Problem(503, "idp-unavailable", "Identity provider unavailable",
                          "The token endpoint is not answering; try logging in again.", login_url="/bff/login")
        if result.kind == "server_error":
            raise _login_failed(f"The token endpoint failed ({result.error}).", status=502)
        raise _login_failed(f"The code could not be exchanged ({result.error}).")
    if not result.id_token:
        raise _login_failed("The token response has no ID token.", status=502)
    if not result.refresh_token:
        raise _login_failed(
            "The token response has no refresh token: request offline_access and allow the "
            "refresh-token grant for this application.",
            status=502,
        )
    claims = svc.provider.validate_id_token(result.id_token, nonce=transaction["nonce"])
    max_age = transaction.get("max_age")
    if max_age is not None:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or svc.clock.now() - auth_time > int(max_age) + 60:
            raise _login_failed("The identity provider did not re-authenticate within max_age.")
    start_session(svc, current_session(), claims, result, request.headers.get("User-Agent", ""))
    response = redirect(transaction["return_to"], code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


def require_session() -> BffSession:
    """The logged-in session, or a 401 problem (with a login URL) — never a redirect."""
    session = current_session()
    svc = services()
    if session.unavailable:
        svc.store.ping()  # raises StoreUnavailable (503) while the outage lasts
    if not session.authenticated:
        raise Problem(401, "not-authenticated", "Not logged in", "This request needs a logged-in session.",
                      login_url="/bff/login")
    return session


def logout_tag(svc: Services, session: BffSession) -> str:
    return svc.box.mac("logout:" + session.sid)


@blueprint.get("/user")
def user() -> Response:
    session = require_session()
    svc = services()
    now = svc.clock.now()
    record = session.record
    idle_left = svc.sessions.idle_left(session)
    seen = float(record.fields.get(SEEN, b"0")) if record is not None else 0.0
    body = {
        "claims": session.get("claims", {}),
        "session": {
            "created_at": session.get("created_at"),
            "expires_in": max(0, int(float(session.get("expires_at", now)) - now)),
            "idle_expires_in": None if idle_left is None else int(idle_left),
            "last_seen": seen or None,
            "acr": session.get("acr"),
            "amr": session.get("amr"),
            "auth_time": session.get("auth_time"),
        },
        "logout_url": "/bff/logout?sid=" + logout_tag(svc, session),
    }
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.post("/logout")
def logout() -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    session = current_session()
    if session.unavailable:
        svc.store.ping()
    id_token = end_session(svc, session, revoke=True)
    response = jsonify({"logout_url": svc.provider.logout_url(id_token)})
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/logout")
def logout_link() -> BaseResponse:
    """Plain-link logout; requires the session's logout tag so it cannot be triggered cross-site."""
    svc = services()
    session = require_session()
    tag = request.args.get("sid", "")
    if not tag or not svc.box.verify_mac("logout:" + session.sid, tag):
        raise Problem(403, "csrf", "Anti-forgery check failed",
                      "A logout link must carry this session's sid parameter.")
    id_token = end_session(svc, session, revoke=True)
    response = redirect(svc.provider.logout_url(id_token), code=302)
    response.headers["Cache-Control"] = "no-store"
    return response
