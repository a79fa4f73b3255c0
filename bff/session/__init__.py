"""The session core: one package owns the session record, its keys and indexes, its one-time
transactions, and the one path by which a session ends (see :mod:`bff.session.core`)."""

from __future__ import annotations

from .core import (
    LOGIN_TRANSACTION_TTL,
    MAX_CONNECT_FLOWS,
    ConnectTransaction,
    EndReason,
    LoginTransaction,
    SessionCore,
    SessionPolicy,
)
from .interface import BffSession, StoreSessionInterface, current_session, init_app, require_session
from .record import LiveSession

__all__ = [
    "LOGIN_TRANSACTION_TTL",
    "MAX_CONNECT_FLOWS",
    "BffSession",
    "ConnectTransaction",
    "EndReason",
    "LiveSession",
    "LoginTransaction",
    "SessionCore",
    "SessionPolicy",
    "StoreSessionInterface",
    "current_session",
    "init_app",
    "require_session",
]
