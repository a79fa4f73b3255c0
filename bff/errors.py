"""Problem details (RFC 9457) and the exception tree behind them.

Every error the BFF itself produces reaches the browser as ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``; nothing else (no stack trace, no token, no
upstream secret) is ever rendered. Expected failures are values elsewhere; these exceptions are
how a view stops with a designed answer.

    Exception
     └── Problem                      a designed answer with a status and a problem type
          └── StoreUnavailable        the session store did not answer (503, session kept)
"""

from __future__ import annotations

import logging
import typing as t

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

__all__ = ["PROBLEM_TYPE_PREFIX", "Problem", "StoreUnavailable", "problem_response", "register_error_handlers"]

PROBLEM_TYPE_PREFIX = "urn:bff:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

log = logging.getLogger(__name__)


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    headers: t.Mapping[str, str] | None = None,
    **extra: t.Any,
) -> Response:
    """Build an ``application/problem+json`` response; ``kind`` becomes ``urn:bff:problem:<kind>``."""
    body: dict[str, t.Any] = {
        "type": PROBLEM_TYPE_PREFIX + kind,
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class Problem(Exception):
    """Stop the request with a problem+json answer."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        headers: t.Mapping[str, str] | None = None,
        **extra: t.Any,
    ) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> Response:
        return problem_response(
            self.status, self.kind, self.title, self.detail, headers=self.headers, **self.extra
        )


class StoreUnavailable(Problem):
    """The session store is unreachable, read-only or timing out.

    Answered with 503 and ``Retry-After``; the session is kept, because a store hiccup must
    never look like a logout.
    """

    def __init__(self, detail: str = "The session store is not answering; try again shortly.") -> None:
        super().__init__(
            503,
            "store-unavailable",
            "Session store unavailable",
            detail,
            headers={"Retry-After": "1"},
        )


_HTTP_KINDS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def register_error_handlers(app: Flask) -> None:
    """Answer every error, including werkzeug's own and unexpected bugs, with problem+json."""

    @app.errorhandler(Problem)
    def _problem(error: Problem) -> Response:
        return error.response()

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        response = problem_response(
            status,
            _HTTP_KINDS.get(status, "http-error"),
            error.name,
            error.description or error.name,
        )
        if status == 405 and error.response is None:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _bug(error: Exception) -> Response:
        # A bug: log it with its traceback server-side, tell the browser nothing about it.
        log.exception("unhandled error", exc_info=error)
        return problem_response(
            500, "internal-error", "Internal error", "The BFF failed to handle this request."
        )
