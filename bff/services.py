"""The app's collaborators, built once by the factory and reached through ``services()``.

Nothing here stores the Flask app; views look the bundle up on ``current_app.extensions``.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from flask import current_app, session

from .clock import Clock
from .oidc import Provider
from .security import SecretBox
from .session import BffSession, StoreSessionInterface
from .settings import Settings
from .store import SessionStore
from .tokens.endpoint import TokenClient
from .tokens.manager import TokenManager

if t.TYPE_CHECKING:
    from .proxy.forward import Forwarder
    from .proxy.routes import RouteTable

__all__ = ["Services", "current_session", "services"]

EXTENSION_KEY = "bff"


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    store: SessionStore
    box: SecretBox
    provider: Provider
    token_client: TokenClient
    tokens: TokenManager
    sessions: StoreSessionInterface
    routes: RouteTable
    forwarder: Forwarder


def services() -> Services:
    return t.cast(Services, current_app.extensions[EXTENSION_KEY])


def current_session() -> BffSession:
    return t.cast(BffSession, session._get_current_object())  # type: ignore[attr-defined]
