"""bff: a backend-for-frontend that keeps an SPA's tokens server-side.

It logs users in with Auth0 (authorization code + PKCE), keeps tokens in server-side sessions,
obtains My Account API tokens with Multi-Resource Refresh Tokens, and proxies an allowlist of
My Account calls for the browser.
"""

from __future__ import annotations

from .app import create_app
from .settings import ConfigError, Settings

__all__ = ["ConfigError", "Settings", "__version__", "create_app"]

__version__ = "0.1.0"
