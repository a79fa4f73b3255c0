"""Failures of browser navigations: back to the SPA with an error code, or a small page, never raw JSON.

``/bff/login``, ``/bff/callback``, ``/bff/connect/callback`` and ``GET /bff/logout`` are reached by a
top-level navigation: the user is looking at whatever they answer. A failure there sends the browser back
to the page it came from (a local return URL, already validated) with ``?error=<code>`` and a short
``error_description``, as OAuth clients expect; where no safe return URL is known (an unknown or foreign
login state, a malformed request) the answer is a small HTML page, with the problem's status, that offers
to try again. A caller that asks for JSON (``Accept: application/json``) still gets the problem document.

Security: the page escapes everything it shows, loads nothing and runs no script (``default-src
'none'``), and the description passed in a redirect is the BFF's own text, cut short, never an upstream's.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Request, Response, redirect
from werkzeug.wrappers import Response as BaseResponse

from .errors import Problem, ProblemKind

__all__ = ["back_to", "error_code", "navigation_error", "wants_json"]

_CODE = re.compile(r"[a-z0-9_]{1,64}")
_MAX_DESCRIPTION = 200
_CODES = {
    ProblemKind.LOGIN_FAILED: "login_failed",
    ProblemKind.LOGIN_REQUIRED: "login_required",
    ProblemKind.NOT_AUTHENTICATED: "login_required",
    ProblemKind.REFRESH_INTERRUPTED: "login_required",
    ProblemKind.STEP_UP_REQUIRED: "step_up_required",
    ProblemKind.ALREADY_CONNECTED: "already_connected",
    ProblemKind.CONNECT_FAILED: "connect_failed",
    ProblemKind.RATE_LIMITED: "too_many_requests",
    # A setup fault, not a passing one: trying again later will not help.
    ProblemKind.IDP_MISCONFIGURED: "server_error",
    ProblemKind.INVALID_RETURN_URL: "invalid_request",
    ProblemKind.INVALID_LOGIN_REQUEST: "invalid_request",
    ProblemKind.CSRF: "invalid_request",
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="color-scheme" content="light dark"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:15vh auto;padding:0 1rem;color:#1f2933;
background:#fff}}h1{{font-size:1.4rem}}a{{display:inline-block;margin-top:1rem;padding:.5rem 1rem;
border-radius:.4rem;background:#3b5bdb;color:#fff;text-decoration:none}}p.detail{{color:#52606d}}
@media (prefers-color-scheme:dark){{body{{background:#16191d;color:#e4e7eb}}p.detail{{color:#aab4be}}
a{{background:#3b5bdb}}}}</style></head>
<body><main><h1>{title}</h1><p class="detail">{detail}</p><a href="{retry}">Try again</a></main></body></html>
"""


def wants_json(request: Request) -> bool:
    """Whether the caller asked for JSON rather than a page (a browser navigation asks for HTML)."""
    accept = request.accept_mimetypes
    best = accept.best_match(["text/html", "application/json", "application/problem+json"])
    return best in ("application/json", "application/problem+json") and accept["text/html"] < accept[best]


def error_code(problem: Problem, upstream_error: str | None = None) -> str:
    """The ``error`` an SPA gets: the IdP's own code when it named one, else one derived from the kind."""
    if upstream_error and _CODE.fullmatch(upstream_error):
        return upstream_error
    if problem.kind in _CODES:
        return _CODES[problem.kind]
    return "temporarily_unavailable" if problem.status >= 500 or problem.status == 429 else "request_failed"


def back_to(return_to: str, **params: str) -> BaseResponse:
    """Redirect to the SPA's (already validated, local) ``return_to`` with ``params`` added to its query."""
    parts = urlsplit(return_to)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    response = redirect(urlunsplit(("", "", parts.path, query, parts.fragment)), code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


def navigation_error(
    request: Request,
    problem: Problem,
    *,
    return_to: str | None,
    retry: str = "/bff/login",
    upstream_error: str | None = None,
) -> BaseResponse:
    """The answer to a failed navigation: problem JSON if asked for, else a redirect or a page."""
    if wants_json(request):
        return problem.response()
    if return_to is not None:
        return back_to(
            return_to,
            error=error_code(problem, upstream_error),
            error_description=problem.detail[:_MAX_DESCRIPTION],
        )
    body = _PAGE.format(
        title=html.escape(problem.kind.title),
        detail=html.escape(problem.detail[:_MAX_DESCRIPTION]),
        retry=html.escape(retry, quote=True),
    )
    response = Response(body, status=problem.status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    for name, value in problem.headers.items():
        response.headers.setdefault(name, value)
    return response


