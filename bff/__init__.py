"""bff: a backend-for-frontend that keeps an SPA's tokens server-side.

It logs users in with Auth0 (authorization code + PKCE), keeps tokens in server-side sessions,
obtains My Account API tokens with Multi-Resource Refresh Tokens, and proxies an allowlist of
My Account calls for the browser.
"""

from __future__ import annotations

import typing as t

from .settings import ConfigError, Settings

if t.TYPE_CHECKING:
    from .app import create_app

__all__ = ["ConfigError", "Settings", "__version__", "create_app"]

__version__ = "0.1.0"


def __getattr__(name: str) -> t.Any:
    # The factory (and everything it imports: TLS, HTTP clients) is loaded on first use, so that
    # ``bff serve`` can let gevent patch the standard library before any of it is imported.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'bff' has no attribute {name!r}")
