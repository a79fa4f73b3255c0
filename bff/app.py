"""The application factory: it only wires. Settings -> services -> session -> blueprints -> handlers."""

from __future__ import annotations

import typing as t

from flask import Flask

from . import access, proxies, raw_target, security, spa
from .auth import backchannel as backchannel_views
from .auth import sessions as sessions_views
from .auth import views as auth_views
from .clock import Clock, SystemClock
from .dpop import SessionKeys
from .errors import Problem, register_error_handlers
from .flows import connect as connect_views
from .health import blueprint as health_blueprint
from .myaccount import MyAccountClient
from .oidc import Provider
from .proxy import views as proxy_views
from .proxy.forward import Forwarder
from .proxy.matching import RouteTable
from .ratelimit import RateLimits
from .security import SecretBox
from .services import EXTENSION_KEY, Services
from .session import SessionCore, SessionPolicy
from .session import init_app as init_sessions
from .session.cache import open_cache
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
            store = open_store(settings.session_store, prefix=settings.store_prefix, clock=clock.now)
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
    # Bounds what werkzeug itself parses (the back-channel logout form); the proxy reads its own bodies.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    box = SecretBox(settings.secret_keys)
    provider = Provider(settings, clock)
    token_client = TokenClient(settings, clock)
    sessions = SessionCore(
        store,
        box,
        clock,
        SessionPolicy(idle_timeout=settings.session_idle_timeout, lifetime=settings.session_lifetime),
        _revoker(provider, token_client),
        open_cache(store, clock, enabled=settings.session_cache),
    )
    dpop_keys = SessionKeys(box.derived("bff/dpop"), box.seal, box.open)
    tokens = TokenManager(
        settings, sessions, token_client, box, clock, ScopePlan(routes.scopes),
        lambda: provider.endpoint("token_endpoint"), dpop_keys,
    )
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        clock=clock,
        store=store,
        box=box,
        provider=provider,
        token_client=token_client,
        sessions=sessions,
        tokens=tokens,
        myaccount=MyAccountClient(tokens, Forwarder(settings), dpop_keys, clock),
        routes=routes,
        limits=RateLimits(settings, store, box.mac),
        dpop_keys=dpop_keys,
    )

    init_sessions(app, sessions, settings)
    register_error_handlers(app)
    raw_target.init_app(app)  # inside the access log, which records the refusals
    access.init_app(app, box.mac)
    security.init_app(app)
    proxies.init_app(app, settings.trusted_proxies)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(auth_views.blueprint)
    app.register_blueprint(backchannel_views.blueprint)
    app.register_blueprint(sessions_views.blueprint)
    app.register_blueprint(connect_views.blueprint)
    app.register_blueprint(proxy_views.blueprint)
    spa.init_app(app, settings)
    return app


def _revoker(provider: Provider, client: TokenClient) -> t.Callable[[str], bool]:
    """Best-effort revocation for the session core: a failure is reported, never raised, so a session
    always ends even while the IdP is unreachable."""

    def revoke(refresh_token: str) -> bool:
        try:
            endpoint = provider.revocation_endpoint()
        except Problem:
            return False
        if endpoint is None:
            return True  # the provider offers no revocation (``bff check`` says so); nothing to do
        return client.revoke(endpoint, refresh_token)

    return revoke
