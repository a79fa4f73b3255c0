"""The app's collaborators, built once by the factory and reached through ``services()``.

Nothing here stores the Flask app; views look the bundle up on ``current_app.extensions``.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from flask import current_app

from .clock import Clock
from .dpop import SessionKeys
from .myaccount import MyAccountClient
from .oidc import Provider
from .proxy.matching import RouteTable
from .ratelimit import RateLimits
from .security import SecretBox
from .session import SessionCore
from .settings import Settings
from .store import SessionStore
from .tokens.endpoint import TokenClient
from .tokens.manager import TokenManager

__all__ = ["EXTENSION_KEY", "Services", "services"]

EXTENSION_KEY = "bff"


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    store: SessionStore
    box: SecretBox
    provider: Provider
    token_client: TokenClient
    sessions: SessionCore
    tokens: TokenManager
    myaccount: MyAccountClient
    routes: RouteTable
    limits: RateLimits
    dpop_keys: SessionKeys


def services() -> Services:
    return t.cast(Services, current_app.extensions[EXTENSION_KEY])
