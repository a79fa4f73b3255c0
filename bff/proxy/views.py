"""``/me/v1/...``: the browser's door to the My Account API.

Order of checks, cheapest and most decisive first, all before any token work or upstream call:
anti-forgery (``X-CSRF: 1`` and Origin), the route allowlist on the *raw* path and query, the body
rules that need no body (media type, framing, declared length), then the session. Only then is the
body read (within ``BFF_MAX_BODY_BYTES``, JSON checked) and the call made through the My Account
client. Every proxied response is ``Cache-Control: no-store``.

With ``BFF_OFFLOAD=nginx``, a read that came through the configured nginx is not called from here: once
every check has passed and the token is in hand, nginx is handed the call (:mod:`bff.proxy.offload`).
"""

from __future__ import annotations

import typing as t
from urllib.parse import urlsplit

from flask import Blueprint, Response, request
from werkzeug.routing import PathConverter

from .. import logs
from ..access import note_route
from ..bodies import check_framing, parse_json, read_body
from ..errors import Problem, ProblemKind
from ..myaccount import call_problem
from ..security import check_anti_forgery
from ..services import services
from ..session import BffSession, require_session
from ..tokens.manager import TokenRefusal
from . import offload
from .forward import BFF_PREFIX, UpstreamResponse
from .matching import RouteRejection

__all__ = ["AnyPathConverter", "blueprint"]

blueprint = Blueprint("proxy", __name__)

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class AnyPathConverter(PathConverter):
    """Matches any rest of the path, empty segments included: the proxy judges it, not routing."""

    regex = r"[\s\S]*"
    part_isolating = False


def raw_target(environ: t.Mapping[str, t.Any]) -> tuple[str, str]:
    """The request's path and query exactly as the client sent them (still percent-encoded).

    Decoded ``PATH_INFO`` would hide ``%2F`` and ``%2E%2E``; the servers the BFF runs under
    (gunicorn, werkzeug) keep the raw request target in ``RAW_URI`` / ``REQUEST_URI``.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        raise Problem(ProblemKind.BAD_PATH, "The server did not provide the raw request path.")
    if not raw.startswith("/"):
        raw = urlsplit(raw)._replace(scheme="", netloc="").geturl() or "/"
    path, _, query = raw.partition("?")
    return path, query


def _return_to() -> str:
    """Where a login should bring the user back: the page that made the call, if it is ours."""
    referer = request.headers.get("Referer")
    origin = services().settings.origin
    if referer and referer.startswith(origin + "/"):
        path = referer[len(origin):]
        if not path.startswith("//") and "\\" not in path:
            return path.split("#", 1)[0]
    return "/"


@blueprint.route("/me", methods=_METHODS)
@blueprint.route("/me/<anypath:rest>", methods=_METHODS)
def proxy(rest: str = "") -> Response:
    svc = services()
    check_anti_forgery(request, svc.settings)
    path, query = raw_target(request.environ)
    if not path.startswith(BFF_PREFIX + "/"):
        raise Problem(ProblemKind.ROUTE_NOT_ALLOWED, "This path is not on the proxy's allowlist.")
    match = svc.routes.match(request.method, path[len(BFF_PREFIX):], query)
    if isinstance(match, RouteRejection):
        _reject(match)
    note_route(BFF_PREFIX + match.route.template)
    limit = svc.settings.max_body_bytes
    if match.expects_body:
        allowed = match.route.body_media_types or ("application/json",)
        if request.mimetype not in allowed:
            raise Problem(ProblemKind.UNSUPPORTED_MEDIA_TYPE, f"This call takes a body of type {', '.join(allowed)}.")
        check_framing(request, limit)
    elif request.content_length or request.headers.get("Transfer-Encoding"):
        raise Problem(ProblemKind.UNEXPECTED_BODY, "This call takes no request body.")
    svc.limits.hit("address", request.remote_addr or "")
    session = require_session(svc.sessions)
    live = session.live
    assert live is not None
    svc.limits.hit("session", live.sid)
    verdict = offload.verdict(request, svc.settings)
    if verdict == "hand-off":
        handed = _hand_off(session, match.route.scope, match.route.method, match.upstream_path, match.query)
        if handed is not None:
            return handed
    elif verdict == "fallback":
        logs.bind(offload="fallback")
    body: bytes | None = None
    if match.expects_body:
        body = read_body(request, limit)
        if request.mimetype == "application/json" or request.mimetype.endswith("+json"):
            parse_json(body)
    headers = {name.lower(): value for name, value in request.headers.items()}
    result = svc.myaccount.call(
        live, match.route.scope, match.route.method, match.upstream_path, match.query, headers, body
    )
    if not isinstance(result, UpstreamResponse):
        if isinstance(result, TokenRefusal) and result.ended_session:
            session.drop()
        raise call_problem(result, _return_to())
    response = Response(result.body, status=result.status)
    response.headers.clear()
    for name, value in result.headers:
        response.headers.add(name, value)
    return response


def _hand_off(session: BffSession, scope: str, method: str, path: str, query: str) -> Response | None:
    """The internal redirect that has nginx make this call with the session's token, or ``None`` when
    the token needs a header nginx does not send (the call is then forwarded from here)."""
    svc = services()
    live = session.live
    assert live is not None
    token = svc.tokens.access_token(live, scope)
    if isinstance(token, TokenRefusal):
        if token.ended_session:
            session.drop()
        raise call_problem(token, _return_to())
    handed = offload.handoff(svc.myaccount.target(path, query), svc.myaccount.credentials(live, token, method, path))
    if handed is not None:
        logs.bind(offload="nginx")
    return handed


def _reject(rejection: RouteRejection) -> t.NoReturn:
    if rejection.kind == "not-found":
        raise Problem(ProblemKind.ROUTE_NOT_ALLOWED, "This call is not on the proxy's allowlist.")
    if rejection.kind == "bad-query":
        raise Problem(ProblemKind.BAD_QUERY, rejection.detail, parameter=rejection.parameter)
    raise Problem(ProblemKind.BAD_PATH, rejection.detail)
