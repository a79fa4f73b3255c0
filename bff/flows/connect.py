"""Connected Accounts, run server-side: ``POST /bff/connect`` and ``GET /bff/connect/callback``.

The My Account API's connect/complete pair (connected-accounts-for-token-vault.md) needs an access
token, a PKCE verifier and an ``auth_session`` that must never reach the browser, so the BFF runs
the flow itself and the proxy never exposes those two routes:

1. ``POST /bff/connect`` ``{connection, scopes?, returnTo?, authorization_params?}`` with
   ``X-CSRF: 1``: validates everything, obtains a ``create:me:connected_accounts`` token for the
   session, generates ``state`` and a PKCE pair, calls ``POST /connected-accounts/connect`` with
   the BFF's callback as ``redirect_uri``, and has the session core keep ``{auth_session,
   code_verifier, redirect_uri, returnTo, connection}`` sealed for the flow's ``expires_in`` (at
   most :data:`~bff.session.MAX_CONNECT_FLOWS` flows in progress per session: a 429 beyond).
   Answers ``{"redirect_url": connect_uri?ticket=…}`` for the SPA to navigate to.
2. ``GET /bff/connect/callback?connect_code=…&state=…``: consumes the transaction exactly once,
   calls ``POST /connected-accounts/complete`` and redirects (302) to ``returnTo`` with
   ``connected=<connection>`` or ``error=<code>`` added to its query.

Callback outcomes: an unknown, expired, replayed or foreign ``state`` sends the browser home (``/``)
with ``error=connect_failed`` (the 400 problem to a caller that asks for JSON): the flow's own return
URL cannot be trusted before the state is proven. Everything after that is a redirect to it:
``error=access_denied`` (or the provider's other error code) when the user declined,
``error=already_connected`` when the API answers 409, ``error=step_up_required`` /
``login_required`` when no token could be had, ``error=temporarily_unavailable`` for 429/5xx and
``error=connect_failed`` for anything else.

Security:

* CSRF: starting a flow needs ``X-CSRF: 1`` and a same-origin ``Origin``, so a cross-site page
  cannot link an attacker-chosen account or burn the user's consent.
* Binding: the session cookie is ``SameSite=Strict`` and is not sent on the redirect back from
  the cross-site consent page. The transaction therefore holds the session id *and* the hash of
  a short-lived ``SameSite=Lax`` binding cookie (``bff-connect``, ``__Host-bff-connect`` over
  https) set when the flow starts. The callback requires that cookie, and refuses a transaction
  of another session when a session cookie is present, so a callback URL planted on a victim
  (with the attacker's ``connect_code``) links nothing to the victim's account. One binding
  value is reused per browser, so flows started in several tabs each complete.
* Single use: the transaction is taken atomically; a replayed callback finds nothing.
* ``authorization_params`` are limited to an allowlist; ``id_token_hint`` is refused because
  the browser has no business choosing which identity the provider assumes.
* ``returnTo`` is a local path (:func:`bff.security.safe_return_to`): no open redirect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import typing as t
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, jsonify, request
from werkzeug.wrappers import Response as BaseResponse

from ..bodies import parse_json, read_body
from ..errors import Problem, ProblemKind, store_unavailable_problem
from ..myaccount import CallFailure, call_problem
from ..navigation import back_to, navigation_error
from ..proxy.forward import UpstreamResponse
from ..security import check_anti_forgery, safe_return_to
from ..services import Services, services
from ..session import LiveSession, current_session, require_session
from ..settings import Settings
from ..store import StoreUnavailable
from ..tokens.manager import TokenRefusal

__all__ = ["AUTHORIZATION_PARAMS", "CONNECT_SCOPE", "blueprint", "connect_cookie_name"]

blueprint = Blueprint("connect", __name__, url_prefix="/bff")

CONNECT_SCOPE = "create:me:connected_accounts"
_CONNECT_PATH = "/connected-accounts/connect"
_COMPLETE_PATH = "/connected-accounts/complete"
#: Upper bound on how long a transaction is kept, whatever ``expires_in`` the API names.
_MAX_FLOW_TTL = 3600

_BODY_KEYS = frozenset({"connection", "scopes", "returnTo", "authorization_params"})
_CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_SCOPE = re.compile(r"[\x21-\x7e]{1,255}")
_TEXT = re.compile(r"[\x20-\x7e]+")
_UI_LOCALES = re.compile(r"[a-zA-Z]{2}(-[a-zA-Z]{2})?(\s[a-zA-Z]{2}(-[a-zA-Z]{2})?)*")
_BINDING = re.compile(r"[A-Za-z0-9_-]{32,64}")
_STATE = re.compile(r"[A-Za-z0-9_-]{20,128}")
_CONNECT_CODE = re.compile(r"[\x21-\x7e]{1,256}")
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")
_MAX_SCOPES = 100


def _text(limit: int) -> t.Callable[[object], bool]:
    return lambda value: isinstance(value, str) and len(value) <= limit and bool(_TEXT.fullmatch(value))


def _one_of(*choices: str) -> t.Callable[[object], bool]:
    return lambda value: isinstance(value, str) and value in choices


def _max_age(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31 - 1


def _ui_locales(value: object) -> bool:
    return isinstance(value, str) and 2 <= len(value) <= 100 and bool(_UI_LOCALES.fullmatch(value))


#: The authorization parameters the SPA may pass on to the provider, with their validators
#: (the spec's ``AuthorizationParams`` minus ``id_token_hint``).
AUTHORIZATION_PARAMS: dict[str, t.Callable[[object], bool]] = {
    "acr_values": _text(1024),
    "audience": _text(512),
    "resource": _text(512),
    "display": _one_of("page", "popup", "touch", "wap"),
    "login_hint": _text(255),
    "max_age": _max_age,
    "prompt": _one_of("none", "login", "consent", "select_account"),
    "ui_locales": _ui_locales,
}


def connect_cookie_name(settings: Settings) -> str:
    return "__Host-bff-connect" if settings.secure_cookies else "bff-connect"


def _binding_hash(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class ConnectRequest:
    """A validated ``POST /bff/connect`` body."""

    connection: str
    scopes: list[str] | None
    return_to: str
    authorization_params: dict[str, t.Any]


def _bad(detail: str) -> Problem:
    return Problem(ProblemKind.INVALID_CONNECT_REQUEST, detail)


def parse_connect_request(body: object) -> ConnectRequest:
    """Validate the SPA's request in full, or raise a 400 problem naming the first fault."""
    if not isinstance(body, dict):
        raise _bad("The body must be a JSON object.")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise _bad(f"Unsupported member: {unknown[0]}.")
    connection = body.get("connection")
    if not isinstance(connection, str) or not _CONNECTION.fullmatch(connection):
        raise _bad("connection must be a connection name (letters, digits, '-' and '_').")
    scopes = body.get("scopes")
    if scopes is not None and (
        not isinstance(scopes, list)
        or not 0 < len(scopes) <= _MAX_SCOPES
        or not all(isinstance(scope, str) and _SCOPE.fullmatch(scope) for scope in scopes)
        or len(set(scopes)) != len(scopes)
    ):
        raise _bad(f"scopes must be a list of 1 to {_MAX_SCOPES} distinct scope strings.")
    return_to = body.get("returnTo")
    if return_to is not None and not isinstance(return_to, str):
        raise _bad("returnTo must be a string.")
    params = body.get("authorization_params", {})
    if not isinstance(params, dict):
        raise _bad("authorization_params must be an object.")
    for name, value in params.items():
        check = AUTHORIZATION_PARAMS.get(name)
        if check is None:
            raise _bad(f"authorization_params.{name} is not allowed.")
        if not check(value):
            raise _bad(f"authorization_params.{name} is malformed.")
    return ConnectRequest(connection, scopes, safe_return_to(return_to), dict(params))


# Upstream ----------------------------------------------------------------------------------------


def _upstream_problem(upstream: UpstreamResponse) -> Problem:
    _, detail = upstream.error()
    status = upstream.status
    if status == 409:
        return Problem(ProblemKind.ALREADY_CONNECTED, detail or "This connect request has already been completed.")
    if status == 429:
        retry = dict((name.lower(), value) for name, value in upstream.headers).get("retry-after", "1")
        return Problem(ProblemKind.RATE_LIMITED, "The My Account API is rate limiting; retry.",
                       headers={"Retry-After": retry})
    if 400 <= status < 500:
        return Problem(ProblemKind.CONNECT_REJECTED, detail or f"The My Account API refused the request ({status}).")
    return Problem(ProblemKind.UPSTREAM_ERROR, f"The My Account API failed ({status}); try again.")


def _call(
    svc: Services, session: LiveSession, path: str, payload: dict[str, t.Any]
) -> UpstreamResponse | CallFailure:
    """POST ``payload`` to the API with the session's connect token, through the one My Account client."""
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "accept": "application/json"}
    result = svc.myaccount.call(session, CONNECT_SCOPE, "POST", path, "", headers, body)
    if isinstance(result, TokenRefusal) and result.ended_session:
        current = current_session()
        if current.sid == session.sid:
            current.drop()
    return result


def _same_origin(url: str, *bases: str) -> bool:
    target = urlsplit(url)
    return target.scheme in ("https", "http") and any(
        (target.scheme, target.netloc) == (urlsplit(base).scheme, urlsplit(base).netloc) for base in bases
    )


# Views -------------------------------------------------------------------------------------------


@blueprint.post("/connect")
def start() -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    if not request.is_json:
        raise Problem(ProblemKind.UNSUPPORTED_MEDIA_TYPE, "Send the body as application/json.")
    session = require_session(svc.sessions)
    live = session.live
    assert live is not None
    svc.limits.hit("connect", live.sid)
    wanted = parse_connect_request(parse_json(read_body(request, svc.settings.max_body_bytes)))

    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)
    payload: dict[str, t.Any] = {
        "connection": wanted.connection,
        "redirect_uri": svc.settings.connect_redirect_uri,
        "state": state,
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    if wanted.scopes is not None:
        payload["scopes"] = wanted.scopes
    if wanted.authorization_params:
        payload["authorization_params"] = wanted.authorization_params
    result = _call(svc, live, _CONNECT_PATH, payload)
    if not isinstance(result, UpstreamResponse):
        raise call_problem(result, wanted.return_to)
    if result.status != 201:
        raise _upstream_problem(result)
    connect_uri, auth_session, ticket, expires_in = _parse_started(svc, result)
    ttl = max(1, min(expires_in, _MAX_FLOW_TTL))

    cookie_name = connect_cookie_name(svc.settings)
    binding = request.cookies.get(cookie_name, "")
    if not _BINDING.fullmatch(binding):
        binding = secrets.token_urlsafe(32)
    flow = {
        "auth_session": auth_session,
        "code_verifier": verifier,
        "redirect_uri": svc.settings.connect_redirect_uri,
        "return_to": wanted.return_to,
        "connection": wanted.connection,
    }
    if not svc.sessions.put_connect(live, state, _binding_hash(binding), flow, ttl):
        raise Problem(ProblemKind.TOO_MANY_CONNECT_FLOWS,
                      "This session has too many connect flows in progress; finish one or wait.",
                      headers={"Retry-After": "60"})

    separator = "&" if urlsplit(connect_uri).query else "?"
    response = jsonify({"redirect_url": f"{connect_uri}{separator}{urlencode({'ticket': ticket})}"})
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        cookie_name, binding, max_age=ttl, path="/", secure=svc.settings.secure_cookies, httponly=True,
        samesite="Lax",
    )
    return response


def _parse_started(svc: Services, upstream: UpstreamResponse) -> tuple[str, str, str, int]:
    """``(connect_uri, auth_session, ticket, expires_in)`` from the API's 201, or a 502 problem."""
    try:
        body = json.loads(upstream.body)
        connect_uri, auth_session = body["connect_uri"], body["auth_session"]
        ticket, expires_in = body["connect_params"]["ticket"], body["expires_in"]
    except (ValueError, KeyError, TypeError):
        body = None
    if (
        body is None
        or not all(isinstance(value, str) and value for value in (connect_uri, auth_session, ticket))
        or not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
    ):
        raise Problem(ProblemKind.UPSTREAM_ERROR, "The connect response is malformed.")
    # The browser is sent there next: only ever to the identity provider itself.
    if not _same_origin(connect_uri, svc.settings.issuer_url, svc.settings.my_account_url):
        raise Problem(ProblemKind.UPSTREAM_ERROR, "The connect URI is not on the identity provider's domain.")
    return connect_uri, auth_session, ticket, expires_in


def _failed(detail: str) -> Problem:
    return Problem(ProblemKind.CONNECT_FAILED, detail)


@blueprint.get("/connect/callback")
def callback() -> BaseResponse:
    """A navigation: a flow that cannot be matched to this browser sends it home (``/``) with an error,
    or answers the problem to a caller that asks for JSON."""
    svc = services()
    try:
        return _complete(svc)
    except Problem as problem:
        return navigation_error(request, problem, return_to="/")
    except StoreUnavailable:
        return navigation_error(request, store_unavailable_problem(), return_to="/")


def _complete(svc: Services) -> BaseResponse:
    args = request.args
    state = args.get("state", "")
    transaction = svc.sessions.peek_connect(state) if _STATE.fullmatch(state) else None
    if transaction is None:
        raise _failed("Unknown, expired or already used connect state.")
    # Checked before the transaction is consumed, so a foreign browser cannot burn the owner's flow.
    binding = request.cookies.get(connect_cookie_name(svc.settings), "")
    if not binding or not secrets.compare_digest(_binding_hash(binding), transaction.binding):
        raise _failed("This connection was not started in this browser.")
    current = current_session()
    if current.authenticated and current.sid != transaction.sid:
        raise _failed("This connection was started by another session.")
    connect_code = args.get("connect_code", "")
    if "error" not in args and not _CONNECT_CODE.fullmatch(connect_code):
        raise _failed("The callback carries neither a well-formed connect_code nor an error.")
    if not svc.sessions.take_connect(state):
        raise _failed("Unknown, expired or already used connect state.")
    flow = transaction.payload
    return_to = str(flow["return_to"])

    if "error" in args:
        error = args["error"] if _ERROR_CODE.fullmatch(args["error"]) else None
        declined = _failed(f"The connection was declined ({error or 'an unknown error'}).")
        return navigation_error(request, declined, return_to=return_to, upstream_error=error)
    live = current.live if current.live is not None else svc.sessions.load_live(transaction.sid)
    if live is None or live.sub != transaction.sub:
        ended = Problem(ProblemKind.LOGIN_REQUIRED, "The session that started this connection has ended.")
        return navigation_error(request, ended, return_to=return_to)
    result = _call(
        svc,
        live,
        _COMPLETE_PATH,
        {
            "auth_session": flow["auth_session"],
            "connect_code": connect_code,
            "redirect_uri": flow["redirect_uri"],
            "code_verifier": flow["code_verifier"],
        },
    )
    if isinstance(result, UpstreamResponse) and result.status in (200, 201):
        return back_to(return_to, connected=str(flow["connection"]))
    problem = _upstream_problem(result) if isinstance(result, UpstreamResponse) else call_problem(result, return_to)
    return navigation_error(request, problem, return_to=return_to)
