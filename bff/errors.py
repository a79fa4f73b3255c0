"""Problem details (RFC 9457): the one catalogue of problem kinds, and the exception behind them.

Every error the BFF itself produces reaches an API caller as ``application/problem+json`` with
``type`` (``urn:bff:problem:<kind>``), ``title``, ``status`` and ``detail``; nothing else (no stack
trace, no token, no upstream secret) is ever rendered. Each kind is a member of :class:`ProblemKind`,
which carries its status and title, so a kind always answers with the same status wherever it is
raised, and the table in ``docs/problems.md`` is checked against this enum by a test.

Expected failures are typed values below the web layer (a token failure, a route rejection); the
web layer turns them into :class:`Problem` in one place each. The store's own
:class:`~bff.store.StoreUnavailable` is mapped to 503 ``store-unavailable`` with ``Retry-After``
here, at the edge, because a store hiccup must never look like a logout.

    Exception
     ├── Problem                      a designed answer: a ProblemKind, a detail, extra members
     └── bff.store.StoreUnavailable   the store did not answer (mapped to 503 store-unavailable)
"""

from __future__ import annotations

import enum
import logging
import typing as t

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from . import metrics
from .store import StoreUnavailable

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_PREFIX",
    "Problem",
    "ProblemKind",
    "problem_response",
    "register_error_handlers",
    "store_unavailable_problem",
]

PROBLEM_TYPE_PREFIX = "urn:bff:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

log = logging.getLogger(__name__)


class ProblemKind(enum.Enum):
    """Every problem the BFF answers with: ``(slug, status, title)``."""

    # Sessions and login
    NOT_AUTHENTICATED = ("not-authenticated", 401, "Not logged in")
    LOGIN_REQUIRED = ("login-required", 401, "Login required")
    STEP_UP_REQUIRED = ("step-up-required", 401, "Step-up authentication required")
    REFRESH_INTERRUPTED = ("refresh-interrupted", 401, "Login required")
    CSRF = ("csrf", 403, "Anti-forgery check failed")
    INVALID_RETURN_URL = ("invalid-return-url", 400, "Invalid return URL")
    INVALID_LOGIN_REQUEST = ("invalid-login-request", 400, "Invalid login request")
    LOGIN_FAILED = ("login-failed", 400, "Login failed")
    SESSION_NOT_FOUND = ("session-not-found", 404, "Session not found")
    INVALID_LOGOUT_TOKEN = ("invalid-logout-token", 400, "Invalid logout token")
    # The proxy's own refusals
    ROUTE_NOT_ALLOWED = ("route-not-allowed", 404, "Not found")
    BAD_PATH = ("bad-path", 400, "Invalid path")
    BAD_QUERY = ("bad-query", 400, "Invalid query")
    UNEXPECTED_BODY = ("unexpected-body", 400, "Unexpected body")
    MALFORMED_BODY = ("malformed-body", 400, "Malformed body")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type")
    PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "Payload too large")
    UNSUPPORTED_TRANSFER_CODING = ("unsupported-transfer-coding", 501, "Unsupported transfer coding")
    # The identity provider
    IDP_UNAVAILABLE = ("idp-unavailable", 503, "Identity provider unavailable")
    IDP_ERROR = ("idp-error", 502, "Identity provider error")
    IDP_REJECTED = ("idp-rejected", 502, "Token request rejected")
    IDP_MISCONFIGURED = ("idp-misconfigured", 502, "Identity provider misconfigured")
    TOKEN_AUDIENCE_MISMATCH = ("token-audience-mismatch", 502, "Wrong token audience")
    TOKEN_SCOPE_MISMATCH = ("token-scope-mismatch", 502, "Missing token scope")
    TOKEN_BUSY = ("token-busy", 503, "Token refresh in progress")
    # The My Account API
    UPSTREAM_UNAVAILABLE = ("upstream-unavailable", 502, "My Account API unavailable")
    UPSTREAM_TIMEOUT = ("upstream-timeout", 504, "My Account API timeout")
    UPSTREAM_ERROR = ("upstream-error", 502, "My Account API error")
    RATE_LIMITED = ("rate-limited", 429, "Too many requests")
    # Connected accounts
    INVALID_CONNECT_REQUEST = ("invalid-connect-request", 400, "Invalid connect request")
    CONNECT_FAILED = ("connect-failed", 400, "Connecting the account failed")
    CONNECT_REJECTED = ("connect-rejected", 400, "Connection rejected")
    ALREADY_CONNECTED = ("already-connected", 409, "Already connected")
    TOO_MANY_CONNECT_FLOWS = ("too-many-connect-flows", 429, "Too many connect flows")
    # Infrastructure and HTTP
    STORE_UNAVAILABLE = ("store-unavailable", 503, "Session store unavailable")
    BAD_REQUEST = ("bad-request", 400, "Bad request")
    NOT_FOUND = ("not-found", 404, "Not found")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed")
    REQUEST_TOO_LARGE = ("request-too-large", 431, "Request header fields too large")
    INTERNAL_ERROR = ("internal-error", 500, "Internal error")
    SERVER_UNSUPPORTED = ("server-unsupported", 500, "Server not supported")

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug = slug
        self.status = status
        self.title = title

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug


def problem_response(
    kind: ProblemKind,
    detail: str,
    *,
    headers: t.Mapping[str, str] | None = None,
    **extra: t.Any,
) -> Response:
    """Build an ``application/problem+json`` response; ``None``-valued extras are left out."""
    body: dict[str, t.Any] = {
        "type": kind.type_uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    response = Response(json.dumps(body), status=kind.status, mimetype=PROBLEM_CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class Problem(Exception):
    """Stop the request with a problem+json answer of ``kind``."""

    def __init__(
        self,
        kind: ProblemKind,
        detail: str,
        *,
        headers: t.Mapping[str, str] | None = None,
        **extra: t.Any,
    ) -> None:
        super().__init__(f"{kind.status} {kind.slug}: {detail}")
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def status(self) -> int:
        return self.kind.status

    def response(self) -> Response:
        return problem_response(self.kind, self.detail, headers=self.headers, **self.extra)


def store_unavailable_problem() -> Problem:
    """503 with ``Retry-After``: the session is kept; the caller should simply retry."""
    return Problem(
        ProblemKind.STORE_UNAVAILABLE,
        "The session store is not answering; try again shortly.",
        headers={"Retry-After": "1"},
    )


_HTTP_KINDS = {kind.status: kind for kind in (
    ProblemKind.BAD_REQUEST,
    ProblemKind.NOT_FOUND,
    ProblemKind.METHOD_NOT_ALLOWED,
    ProblemKind.PAYLOAD_TOO_LARGE,
    ProblemKind.UNSUPPORTED_MEDIA_TYPE,
    ProblemKind.REQUEST_TOO_LARGE,
)}


def register_error_handlers(app: Flask) -> None:
    """Answer every error, including werkzeug's own and unexpected bugs, with problem+json."""

    @app.errorhandler(Problem)
    def _problem(error: Problem) -> Response:
        return error.response()

    @app.errorhandler(StoreUnavailable)
    def _store(error: StoreUnavailable) -> Response:
        # Only the failure's type: a store client's own message may name hosts or keys.
        cause = type(error.__cause__ or error).__name__
        log.warning("session store unavailable (%s)", cause,
                    extra={"event": "store.error", "operation": "request", "error": cause})
        metrics.store_error()
        return store_unavailable_problem().response()

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        kind = _HTTP_KINDS.get(status, ProblemKind.BAD_REQUEST if status < 500 else ProblemKind.INTERNAL_ERROR)
        response = problem_response(kind, error.description or error.name)
        if status == 405 and error.response is None:
            allowed = getattr(error, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _bug(error: Exception) -> Response:
        # A bug: log it with its traceback server-side, tell the browser nothing about it.
        log.exception("unhandled error", exc_info=error, extra={"event": "error"})
        return problem_response(ProblemKind.INTERNAL_ERROR, "The BFF failed to handle this request.")
