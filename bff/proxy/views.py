"""``/me/v1/...``: the browser's door to the My Account API.

Order of checks, cheapest and most decisive first, all before any token work or upstream call:
anti-forgery (``X-CSRF: 1`` and Origin), the route allowlist on the *raw* path and query,
the body rules, then the session. Only then is a token obtained and the call forwarded.
"""

from __future__ import annotations

import typing as t
from urllib.parse import urlsplit

from flask import Blueprint, Response, request
from werkzeug.routing import PathConverter

from ..auth.views import require_session
from ..errors import Problem
from ..security import check_anti_forgery
from ..services import current_session, services
from ..tokens.manager import AccessToken, TokenError
from .forward import BFF_PREFIX, UpstreamFailure, UpstreamResponse
from .routes import RouteRejection

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
        raise Problem(400, "bad-path", "Invalid path", "The server did not provide the raw request path.")
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
        raise Problem(404, "route-not-allowed", "Not found", "This path is not on the proxy's allowlist.")
    match = svc.routes.match(request.method, path[len(BFF_PREFIX):], query)
    if isinstance(match, RouteRejection):
        _reject(match)
        raise AssertionError("unreachable")
    body: bytes | None = None
    if match.expects_body:
        content_type = request.mimetype
        allowed = match.route.body_media_types or ("application/json",)
        if content_type not in allowed:
            raise Problem(415, "unsupported-media-type", "Unsupported media type",
                          f"This call takes a body of type {', '.join(allowed)}.")
        body = request.get_data(cache=False)
    elif request.content_length or request.headers.get("Transfer-Encoding"):
        raise Problem(400, "unexpected-body", "Unexpected body", "This call takes no request body.")
    session = require_session()
    return_to = _return_to()
    headers = {name.lower(): value for name, value in request.headers.items()}
    scope = match.route.scope

    token = svc.tokens.access_token(session, scope, return_to=return_to)
    upstream = _send(token, match.route.method, match.upstream_path, match.query, headers, body)
    if _token_refused(upstream):
        # The API refused a token the BFF believed good (revoked, clock skew, consent or policy changed
        # since it was minted): one fresh token, one retry. A second refusal is the user's to resolve.
        token = svc.tokens.access_token(session, scope, return_to=return_to, force_refresh=True)
        upstream = _send(token, match.route.method, match.upstream_path, match.query, headers, body)
        if isinstance(upstream, UpstreamResponse) and upstream.status == 401:
            raise Problem(401, "login-required", "Login required",
                          "The My Account API rejected the session's tokens.",
                          login_url=svc.tokens.login_url(return_to))
        if isinstance(upstream, UpstreamResponse) and upstream.insufficient_scope:
            raise Problem(401, "step-up-required", "Step-up authentication required",
                          f"The My Account API requires {scope}, which a new login may grant.",
                          login_url=svc.tokens.login_url(return_to, step_up=True), required_scope=scope)
    if isinstance(upstream, UpstreamFailure):
        raise Problem(upstream.status, upstream.kind, "My Account API unavailable", upstream.detail)
    response = Response(upstream.body, status=upstream.status)
    response.headers.clear()
    for name, value in upstream.headers:
        response.headers.add(name, value)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def _token_refused(upstream: UpstreamResponse | UpstreamFailure) -> bool:
    return isinstance(upstream, UpstreamResponse) and (upstream.status == 401 or upstream.insufficient_scope)


def _send(
    token: AccessToken | TokenError,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes | None,
) -> UpstreamResponse | UpstreamFailure:
    if isinstance(token, TokenError):
        if token.ends_session:
            current_session().clear()
        raise token.problem()
    return services().forwarder.send(method, path, query, headers, body, token.token)


def _reject(rejection: RouteRejection) -> t.NoReturn:
    if rejection.kind == "not-found":
        raise Problem(404, "route-not-allowed", "Not found", "This call is not on the proxy's allowlist.")
    if rejection.kind == "bad-query":
        raise Problem(400, "bad-query", "Invalid query", rejection.detail, parameter=rejection.parameter)
    raise Problem(400, "bad-path", "Invalid path", rejection.detail)
