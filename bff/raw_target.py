"""Serve only under a WSGI server that hands over the raw request target.

The proxy's allowlist is matched on the path and query exactly as the client sent them, still
percent-encoded: a decoded ``PATH_INFO`` turns ``%2F`` into ``/`` and ``%2E%2E`` into ``..``, so a path
the allowlist would refuse could be matched as one it allows. gunicorn (``bff serve``) and werkzeug give
the raw target as ``RAW_URI`` / ``REQUEST_URI``; some servers (granian, for one) give only the decoded
path. Under such a server the BFF answers every request, health checks included, with a 500
``server-unsupported`` problem and logs why once, instead of serving on a decoded path: a deployment that
starts it there fails its readiness check rather than running without the raw-path allowlist.
"""

from __future__ import annotations

import logging
import typing as t

from flask import Flask

from .errors import ProblemKind, problem_response

__all__ = ["RawTargetRequired", "init_app"]

log = logging.getLogger(__name__)


class RawTargetRequired:
    """WSGI middleware: pass a request on only when the server gave its raw target."""

    def __init__(self, app: t.Callable[..., t.Iterable[bytes]]) -> None:
        self._app = app
        self._logged = False

    def __call__(self, environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Iterable[bytes]:
        if environ.get("RAW_URI") or environ.get("REQUEST_URI"):
            return self._app(environ, start_response)
        if not self._logged:
            self._logged = True
            log.error("the WSGI server gives no raw request target (RAW_URI or REQUEST_URI): every request is "
                      "refused; run the BFF with bff serve (gunicorn)",
                      extra={"event": "server.unsupported", "server": str(environ.get("SERVER_SOFTWARE", ""))})
        response = problem_response(
            ProblemKind.SERVER_UNSUPPORTED,
            "This server does not give the BFF the raw request target it matches its allowlist on.",
        )
        return response(environ, start_response)


def init_app(app: Flask) -> None:
    app.wsgi_app = RawTargetRequired(app.wsgi_app)  # type: ignore[method-assign]
