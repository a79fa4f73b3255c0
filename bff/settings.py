"""Typed, frozen settings read from ``BFF_*`` environment variables and validated at startup.

Every value is checked before the first request: a missing or malformed variable raises
:class:`ConfigError`, whose message is one line naming the variable and what is wrong. Nothing
falls back silently, because a BFF that guesses its issuer, origin or secrets is a BFF that
leaks sessions.
"""

from __future__ import annotations

import ipaddress
import os
import typing as t
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["DEFAULT_SCOPES", "ConfigError", "Settings"]

DEFAULT_SCOPES = "openid profile email offline_access"
_LOOPBACK_NAMES = {"localhost"}
_MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """A configuration value is missing or malformed; ``str()`` is one line naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(variable: str, value: str, *, allow_path: bool) -> str:
    """Validate an absolute http(s) URL; ``http`` is accepted for loopback hosts only."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(variable, f"must be an absolute https:// URL, got {value!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(variable, "http:// is accepted only for loopback hosts; use https://")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(variable, "must not contain a query, fragment or credentials")
    if not allow_path and parts.path not in ("", "/"):
        raise ConfigError(variable, f"must be an origin without a path, got path {parts.path!r}")
    return value


def _positive_number(variable: str, raw: str, kind: type[int] | type[float], *, zero: bool = False) -> t.Any:
    try:
        number = kind(raw)
    except ValueError:
        raise ConfigError(variable, f"must be a {kind.__name__}, got {raw!r}") from None
    if number < 0 or (number == 0 and not zero):
        raise ConfigError(variable, f"must be {'zero or more' if zero else 'greater than zero'}, got {raw!r}")
    return number


@dataclass(frozen=True)
class Settings:
    """Everything the BFF needs to know, immutable after startup.

    Security-relevant derivations (cookie names, the Origin to compare against, redirect URIs)
    are properties of this object so that there is exactly one place that computes them.
    """

    issuer_url: str
    client_id: str
    client_secret: str = field(repr=False)
    base_url: str
    secret_keys: tuple[str, ...] = field(repr=False)
    session_store: str | None = None
    scopes: str = DEFAULT_SCOPES
    audience: str | None = None
    my_account_url: str = ""
    my_account_audience: str = ""
    proxy_routes: str | None = None
    token_refresh_margin: int = 60
    token_timeout: float = 10.0
    upstream_connect_timeout: float = 3.0
    upstream_read_timeout: float = 15.0
    max_body_bytes: int = 64 * 1024
    session_idle_timeout: int = 8 * 3600
    session_lifetime: int = 7 * 24 * 3600
    static_dir: str | None = None
    step_up_scopes: tuple[str, ...] = ()
    refresh_lock_lease: float = 30.0
    refresh_token_overlap: int = 0

    def __post_init__(self) -> None:
        # Normalise once so every consumer sees the same spelling.
        issuer = self.issuer_url if self.issuer_url.endswith("/") else self.issuer_url + "/"
        object.__setattr__(self, "issuer_url", issuer)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.my_account_url:
            object.__setattr__(self, "my_account_url", issuer + "me/v1")
        object.__setattr__(self, "my_account_url", self.my_account_url.rstrip("/"))
        if not self.my_account_audience:
            object.__setattr__(self, "my_account_audience", issuer + "me/")
        self.validate()

    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the first bad variable."""
        _url("BFF_ISSUER_URL", self.issuer_url, allow_path=True)
        _url("BFF_BASE_URL", self.base_url, allow_path=False)
        _url("BFF_MY_ACCOUNT_URL", self.my_account_url, allow_path=True)
        if not self.client_id.strip():
            raise ConfigError("BFF_CLIENT_ID", "must not be empty")
        if not self.client_secret.strip():
            raise ConfigError("BFF_CLIENT_SECRET", "must not be empty")
        if not self.secret_keys:
            raise ConfigError("BFF_SECRET_KEY", "must hold at least one secret")
        for index, key in enumerate(self.secret_keys):
            if len(key) < _MIN_SECRET_LENGTH:
                raise ConfigError(
                    "BFF_SECRET_KEY",
                    f"secret #{index + 1} is shorter than {_MIN_SECRET_LENGTH} characters",
                )
        if self.session_store is not None:
            scheme = urlsplit(self.session_store).scheme
            if scheme not in ("redis", "rediss", "redis+sentinel", "sqlite"):
                raise ConfigError(
                    "BFF_SESSION_STORE",
                    "must start with redis://, rediss://, redis+sentinel:// or sqlite:///",
                )
        scopes = self.scopes.split()
        if "openid" not in scopes:
            raise ConfigError("BFF_SCOPES", "must include openid")
        if "offline_access" not in scopes:
            raise ConfigError("BFF_SCOPES", "must include offline_access (the BFF needs a refresh token)")
        if self.session_lifetime < self.session_idle_timeout:
            raise ConfigError(
                "BFF_SESSION_LIFETIME", "must not be shorter than BFF_SESSION_IDLE_TIMEOUT"
            )
        if self.refresh_token_overlap < 0:
            raise ConfigError("BFF_REFRESH_TOKEN_OVERLAP", "must be zero or more seconds")
        if self.refresh_lock_lease <= self.token_timeout:
            raise ConfigError(
                "BFF_REFRESH_LOCK_LEASE", "must be longer than BFF_TOKEN_TIMEOUT (the slowest exchange)"
            )

    # Derived values -------------------------------------------------------------------------

    @property
    def secure_cookies(self) -> bool:
        """Cookies are ``Secure`` and ``__Host-`` prefixed whenever the public origin is https."""
        return self.base_url.startswith("https://")

    @property
    def origin(self) -> str:
        """The exact ``Origin`` header value a same-origin browser request carries."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def session_cookie_name(self) -> str:
        return "__Host-bff-session" if self.secure_cookies else "bff-session"

    @property
    def login_cookie_name(self) -> str:
        return "__Host-bff-login" if self.secure_cookies else "bff-login"

    @property
    def redirect_uri(self) -> str:
        return self.base_url + "/bff/callback"

    @property
    def connect_redirect_uri(self) -> str:
        return self.base_url + "/bff/connect/callback"

    @property
    def post_logout_redirect_uri(self) -> str:
        return self.base_url + "/"

    @property
    def ambiguous_refresh_window(self) -> float:
        """How long after an attempt whose outcome is unknown its refresh token may be presented again.

        The tenant's rotation overlap (``BFF_REFRESH_TOKEN_OVERLAP``) less one token timeout, so the
        retry itself completes inside the overlap; zero or less means never.
        """
        return self.refresh_token_overlap - self.token_timeout

    @property
    def login_audience_is_my_account(self) -> bool:
        return self.audience == self.my_account_audience

    # Construction ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: t.Mapping[str, str] | None = None) -> Settings:
        """Read ``BFF_*`` variables; raise :class:`ConfigError` naming the first bad one."""
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(name, "is required but not set")
            return value

        def optional(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: t.Any, kind: type[int] | type[float]) -> t.Any:
            raw = optional(name)
            return default if raw is None else _positive_number(name, raw, kind)

        # Required variables are checked in the order the documentation lists them.
        issuer_url = required("BFF_ISSUER_URL")
        client_id = required("BFF_CLIENT_ID")
        client_secret = required("BFF_CLIENT_SECRET")
        base_url = required("BFF_BASE_URL")
        secrets = tuple(part.strip() for part in required("BFF_SECRET_KEY").split(",") if part.strip())
        step_up = optional("BFF_STEP_UP_SCOPES")
        defaults = cls.__dataclass_fields__
        return cls(
            issuer_url=issuer_url,
            client_id=client_id,
            client_secret=client_secret,
            base_url=base_url,
            secret_keys=secrets,
            session_store=optional("BFF_SESSION_STORE"),
            scopes=optional("BFF_SCOPES") or DEFAULT_SCOPES,
            audience=optional("BFF_AUDIENCE"),
            my_account_url=optional("BFF_MY_ACCOUNT_URL") or "",
            my_account_audience=optional("BFF_MY_ACCOUNT_AUDIENCE") or "",
            proxy_routes=optional("BFF_PROXY_ROUTES"),
            token_refresh_margin=number(
                "BFF_TOKEN_REFRESH_MARGIN", defaults["token_refresh_margin"].default, int
            ),
            token_timeout=number("BFF_TOKEN_TIMEOUT", defaults["token_timeout"].default, float),
            upstream_connect_timeout=number(
                "BFF_UPSTREAM_CONNECT_TIMEOUT", defaults["upstream_connect_timeout"].default, float
            ),
            upstream_read_timeout=number(
                "BFF_UPSTREAM_READ_TIMEOUT", defaults["upstream_read_timeout"].default, float
            ),
            max_body_bytes=number("BFF_MAX_BODY_BYTES", defaults["max_body_bytes"].default, int),
            session_idle_timeout=number(
                "BFF_SESSION_IDLE_TIMEOUT", defaults["session_idle_timeout"].default, int
            ),
            session_lifetime=number("BFF_SESSION_LIFETIME", defaults["session_lifetime"].default, int),
            static_dir=optional("BFF_STATIC_DIR"),
            step_up_scopes=tuple(step_up.split()) if step_up else (),
            refresh_lock_lease=number(
                "BFF_REFRESH_LOCK_LEASE", defaults["refresh_lock_lease"].default, float
            ),
            refresh_token_overlap=_positive_number(
                "BFF_REFRESH_TOKEN_OVERLAP", optional("BFF_REFRESH_TOKEN_OVERLAP") or "0", int, zero=True
            ),
        )
