"""The application factory: settings -> services -> session interface -> blueprints -> handlers."""

from __future__ import annotations

import os
from importlib import resources

from flask import Flask, Response, abort, request, send_from_directory

from .auth import backchannel as backchannel_views
from .auth import sessions as sessions_views
from .auth import views as auth_views
from .clock import Clock, SystemClock
from .errors import register_error_handlers
from .flows import connect as connect_views
from .health import blueprint as health_blueprint
from .oidc import Provider
from .proxy import views as proxy_views
from .proxy.forward import Forwarder
from .proxy.routes import RouteTable
from .security import SecretBox
from .services import EXTENSION_KEY, Services, current_session
from .session import SEEN, StoreSessionInterface
from .settings import ConfigError, Settings
from .store import SessionStore, open_store
from .tokens.endpoint import TokenClient
from .tokens.manager import ScopePlan, TokenManager

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    clock: Clock | None = None,
) -> Flask:
    """Build the BFF. ``settings`` default to the environment; ``store`` and ``clock`` are seams
    for tests and embedding (the store defaults to ``BFF_SESSION_STORE``)."""
    settings = settings or Settings.from_env()
    clock = clock or SystemClock()
    if store is None:
        if settings.session_store is None:
            raise ConfigError("BFF_SESSION_STORE", "is required but not set")
        try:
            store = open_store(settings.session_store)
        except ValueError as error:
            raise ConfigError("BFF_SESSION_STORE", str(error)) from error
    try:
        routes = RouteTable.from_config(settings.proxy_routes)
    except ValueError as error:
        raise ConfigError("BFF_PROXY_ROUTES", str(error)) from error

    app = Flask(__name__, static_folder=None)
    # Never rewrite a path (``//`` merged and redirected): the proxy judges the raw path itself.
    app.url_map.merge_slashes = False
    app.url_map.converters["anypath"] = proxy_views.AnyPathConverter
    app.config.update(
        SESSION_COOKIE_NAME=settings.session_cookie_name,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        SESSION_REFRESH_EACH_REQUEST=False,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    box = SecretBox(settings.secret_keys)
    provider = Provider(settings, clock)
    token_client = TokenClient(settings, clock)
    sessions = StoreSessionInterface(app, store, settings, clock)
    app.session_interface = sessions
    tokens = TokenManager(
        settings, store, token_client, box, clock, ScopePlan(routes.scopes),
        lambda: provider.endpoint("token_endpoint"),
    )
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        clock=clock,
        store=store,
        box=box,
        provider=provider,
        token_client=token_client,
        tokens=tokens,
        sessions=sessions,
        routes=routes,
        forwarder=Forwarder(settings),
    )

    register_error_handlers(app)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(auth_views.blueprint)
    app.register_blueprint(backchannel_views.blueprint)
    app.register_blueprint(sessions_views.blueprint)
    app.register_blueprint(connect_views.blueprint)
    app.register_blueprint(proxy_views.blueprint)
    _register_static(app, settings)
    _register_activity(app, settings, store, sessions, clock)
    _register_headers(app)
    return app


def _register_activity(
    app: Flask, settings: Settings, store: SessionStore, sessions: StoreSessionInterface, clock: Clock
) -> None:
    """Slide the idle timeout without writing the session on every request.

    The record's TTL is the idle timeout (capped by the absolute lifetime); it is renewed only
    when a touch interval has passed since the last renewal, so a busy session costs one extra
    write per interval, not one per request.
    """
    interval = min(60.0, settings.session_idle_timeout / 10)

    @app.before_request
    def _touch() -> None:
        session = current_session()
        record = session.record
        if not session.authenticated or record is None:
            return
        now = clock.now()
        if now - float(record.fields.get(SEEN) or 0.0) >= interval:
            store.update(session.sid, {SEEN: f"{now:.3f}".encode()}, ttl=sessions.record_ttl(session))


def _register_headers(app: Flask) -> None:
    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/bff/") and response.mimetype in ("application/json", "application/problem+json"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _register_static(app: Flask, settings: Settings) -> None:
    """``/bff/static/bff.js`` always; an SPA from ``BFF_STATIC_DIR`` with index fallback if set."""
    client_dir = str(resources.files("bff") / "static")

    @app.get("/bff/static/<path:filename>")
    def _client(filename: str) -> Response:
        response = send_from_directory(client_dir, filename, max_age=300)
        return response

    if settings.static_dir:
        serve_spa(app, settings.static_dir)


def serve_spa(app: Flask, directory: str) -> None:
    """Serve an SPA from ``directory``: files as they are, unknown paths fall back to index.html.

    ``/bff/`` and ``/me/`` are never answered with the SPA, so an API typo is a 404 problem and
    not an HTML page with status 200.
    """
    root = os.path.abspath(directory)
    if not os.path.isfile(os.path.join(root, "index.html")):
        raise ConfigError("BFF_STATIC_DIR", f"{directory!r} has no index.html")
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def _spa(path: str) -> Response:
        if path.startswith(("bff/", "me/")):
            abort(404)
        candidate = os.path.join(root, path)
        if path and os.path.isfile(candidate):
            response = send_from_directory(root, path, max_age=60)
        else:
            response = send_from_directory(root, "index.html", max_age=0)
            response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = csp
        return response
