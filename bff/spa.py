"""Serving an SPA beside the BFF (``BFF_STATIC_DIR``), and the browser client (``/bff/static/``).

Security: paths are joined with :func:`werkzeug.security.safe_join` before the file system is touched,
so no request can read, or learn whether there is, a file outside the directory: a path that escapes
it is answered exactly like a path that names nothing (the index page). ``/bff/`` and ``/me/`` are
never answered with the SPA, so an API typo is a 404 problem, not an HTML page with status 200. The SPA
gets a strict Content-Security-Policy (``BFF_CONTENT_SECURITY_POLICY`` replaces it).

The client is served under two names, so that a page never runs a cached old client against a new BFF:

* ``/bff/static/bff.js`` (and ``bff.d.ts``, ``manifest.json``): ``Cache-Control: no-cache``, revalidated
  by ETag on every load, so it is always the installed release;
* ``/bff/static/bff.<hash>.js``, named by the first 16 hex digits of the SHA-256 of its content:
  ``immutable`` for a year. Only the installed release's hash exists; ``manifest.json`` names it, with
  its subresource-integrity digest.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from importlib import resources

from flask import Blueprint, Flask, Response, abort, jsonify, request, send_from_directory
from werkzeug.security import safe_join

from .settings import ConfigError, Settings

__all__ = [
    "CLIENT_FILE",
    "SPA_CONTENT_SECURITY_POLICY",
    "ClientRelease",
    "client_release",
    "init_app",
]

SPA_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""The default policy of the SPA's pages. ``img-src`` allows any ``https:`` image: the ``picture`` claim names
an avatar on the identity provider's or a social network's origin."""

CLIENT_FILE = "bff.js"
_STATIC = "/bff/static/"
_REVALIDATE = "no-cache"
_IMMUTABLE = "public, max-age=31536000, immutable"
_MEDIA_TYPES = {".js": "text/javascript", ".ts": "application/typescript", ".json": "application/json"}


@dataclass(frozen=True, slots=True)
class ClientRelease:
    """The installed ``bff.js``: its content, the content-hashed name it is also served under, and its
    subresource-integrity digest."""

    content: bytes

    @property
    def hashed_name(self) -> str:
        return f"bff.{hashlib.sha256(self.content).hexdigest()[:16]}.js"

    @property
    def url(self) -> str:
        return _STATIC + self.hashed_name

    @property
    def integrity(self) -> str:
        return "sha384-" + base64.b64encode(hashlib.sha384(self.content).digest()).decode()

    def manifest(self) -> dict[str, dict[str, str]]:
        return {CLIENT_FILE: {"url": self.url, "integrity": self.integrity}}


def _client_dir() -> str:
    return str(resources.files("bff") / "static")


def client_release() -> ClientRelease:
    """The client as installed now."""
    with open(os.path.join(_client_dir(), CLIENT_FILE), "rb") as file:
        return ClientRelease(file.read())


def _media_type(filename: str) -> str | None:
    return _MEDIA_TYPES.get(os.path.splitext(filename)[1])


def _client_blueprint() -> Blueprint:
    client_dir = _client_dir()
    # Read once: the hashed URL always serves the bytes its name was computed from.
    release = client_release()
    blueprint = Blueprint("client", __name__)

    @blueprint.get(_STATIC + "manifest.json")
    def manifest() -> Response:
        response = jsonify(release.manifest())
        response.headers["Cache-Control"] = _REVALIDATE
        return response

    @blueprint.get(_STATIC + "<path:filename>")
    def client(filename: str) -> Response:
        if filename == release.hashed_name:
            response = Response(release.content, mimetype=_media_type(filename))
            response.set_etag(release.hashed_name)
            response.make_conditional(request)
            response.headers["Cache-Control"] = _IMMUTABLE
            return response
        response = send_from_directory(client_dir, filename, mimetype=_media_type(filename))
        response.headers["Cache-Control"] = _REVALIDATE
        return response

    return blueprint


def _spa_blueprint(directory: str, content_security_policy: str) -> Blueprint:
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
        response.headers["Content-Security-Policy"] = content_security_policy
        return response

    return blueprint


def init_app(app: Flask, settings: Settings) -> None:
    """``/bff/static/`` always; the SPA from ``BFF_STATIC_DIR`` (index fallback) when set, with
    ``BFF_CONTENT_SECURITY_POLICY`` or :data:`SPA_CONTENT_SECURITY_POLICY`."""
    app.register_blueprint(_client_blueprint())
    if settings.static_dir:
        policy = settings.content_security_policy or SPA_CONTENT_SECURITY_POLICY
        app.register_blueprint(_spa_blueprint(settings.static_dir, policy))
