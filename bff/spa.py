"""Serving an SPA beside the BFF (``BFF_STATIC_DIR``), and the browser client (``/bff/static/``).

Security: paths are joined with :func:`werkzeug.security.safe_join` before the file system is touched,
so no request can read, or learn whether there is, a file outside the directory: a path that escapes
it is answered exactly like a path that names nothing (the index page). ``/bff/`` and ``/me/`` are
never answered with the SPA, so an API typo is a 404 problem, not an HTML page with status 200. The SPA
gets a strict Content-Security-Policy.
"""

from __future__ import annotations

import os
from importlib import resources

from flask import Blueprint, Flask, Response, abort, send_from_directory
from werkzeug.security import safe_join

from .settings import ConfigError, Settings

__all__ = ["SPA_CONTENT_SECURITY_POLICY", "init_app"]

SPA_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _client_blueprint() -> Blueprint:
    client_dir = str(resources.files("bff") / "static")
    blueprint = Blueprint("client", __name__)

    @blueprint.get("/bff/static/<path:filename>")
    def client(filename: str) -> Response:
        return send_from_directory(client_dir, filename, max_age=300)

    return blueprint


def _spa_blueprint(directory: str) -> Blueprint:
    root = os.path.abspath(directory)
    if not os.path.isfile(os.path.join(root, "index.html")):
        raise ConfigError("BFF_STATIC_DIR", f"{directory!r} has no index.html")
    blueprint = Blueprint("spa", __name__)

    @blueprint.get("/", defaults={"path": ""})
    @blueprint.get("/<path:path>")
    def spa(path: str) -> Response:
        if path.startswith(("bff/", "me/")):
            abort(404)
        candidate = safe_join(root, path) if path else None
        if candidate is not None and os.path.isfile(candidate):
            response = send_from_directory(root, path, max_age=60)
        else:
            response = send_from_directory(root, "index.html", max_age=0)
            response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = SPA_CONTENT_SECURITY_POLICY
        return response

    return blueprint


def init_app(app: Flask, settings: Settings) -> None:
    """``/bff/static/bff.js`` always; the SPA from ``BFF_STATIC_DIR`` (index fallback) when set."""
    app.register_blueprint(_client_blueprint())
    if settings.static_dir:
        app.register_blueprint(_spa_blueprint(settings.static_dir))
