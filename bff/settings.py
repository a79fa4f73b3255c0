"""Typed, frozen settings read from ``BFF_*`` environment variables and validated at startup.

Every value is checked before the first request. Each field names its variable and its parser in
its metadata, so the variable, its parsing and its default live in one place (the README's table is
held against the fields by a test). Every bad variable is reported at once: :class:`ConfigError`
carries one line per variable (``BFF_X: what is wrong``). Nothing falls back silently, because a BFF
that guesses its issuer, origin or secrets is a BFF that leaks sessions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import typing as t
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["DEFAULT_SCOPES", "ConfigError", "Settings", "variables"]

DEFAULT_SCOPES = "openid profile email offline_access"
_LOOPBACK_NAMES = {"localhost"}
_MIN_SECRET_LENGTH = 32
_STORE_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster", "sqlite")
_LOG_FORMATS = ("json", "text")
_OFFLOAD_MODES = ("nginx",)
#: What an offload secret may hold: it is written into nginx's configuration and sent as a header value.
_OFFLOAD_SECRET_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
_MIN_DISTINCT_SECRET_CHARS = 10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """Configuration values are missing or malformed.

    ``str()`` is the first problem, one line naming its variable; :attr:`problems` holds every one
    as ``(variable, problem)``, and :meth:`lines` one line per problem.
    """

    def __init__(self, variable: str, problem: str, *more: tuple[str, str]) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem
        self.problems: tuple[tuple[str, str], ...] = ((variable, problem), *more)

    def lines(self) -> list[str]:
        return [f"{variable}: {problem}" for variable, problem in self.problems]

    @classmethod
    def of(cls, problems: t.Sequence[tuple[str, str]]) -> ConfigError:
        return cls(problems[0][0], problems[0][1], *problems[1:])


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(value: str, *, allow_path: bool) -> str | None:
    """Why ``value`` is not an acceptable absolute http(s) URL; ``http`` only for loopback hosts."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"must be an absolute https:// URL, got {value!r}"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "http:// is accepted only for loopback hosts; use https://"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must not contain a query, fragment or credentials"
    if not allow_path and parts.path not in ("", "/"):
        return f"must be an origin without a path, got path {parts.path!r}"
    return None


# Parsers: text from the environment -> value, or ValueError with the message to show -------------


def _text(raw: str) -> str:
    return raw


def _number(kind: type[int] | type[float], *, zero: bool = False) -> t.Callable[[str], t.Any]:
    def parse(raw: str) -> t.Any:
        try:
            number = kind(raw)
        except ValueError:
            raise ValueError(f"must be a {kind.__name__}, got {raw!r}") from None
        if number < 0 or (number == 0 and not zero):
            raise ValueError(f"must be {'zero or more' if zero else 'greater than zero'}, got {raw!r}")
        return number

    return parse


def _secrets(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _words(raw: str) -> tuple[str, ...]:
    return tuple(raw.split())


def _networks(raw: str) -> tuple[Network, ...]:
    networks = []
    for part in (item.strip() for item in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an address or CIDR network") from None
    return tuple(networks)


def _choice(*choices: str) -> t.Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _address(raw: str) -> str:
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {raw!r}")
    return raw


def _env(name: str, parse: t.Callable[[str], t.Any] = _text, *, required: bool = False) -> dict[str, t.Any]:
    return {"env": name, "parse": parse, "required": required}


@dataclass(frozen=True)
class Settings:
    """Everything the BFF needs to know, immutable after startup.

    Security-relevant derivations (cookie names, the Origin to compare against, redirect URIs)
    are properties of this object so that there is exactly one place that computes them.
    """

    issuer_url: str = field(metadata=_env("BFF_ISSUER_URL", required=True))
    client_id: str = field(metadata=_env("BFF_CLIENT_ID", required=True))
    client_secret: str = field(repr=False, metadata=_env("BFF_CLIENT_SECRET", required=True))
    base_url: str = field(metadata=_env("BFF_BASE_URL", required=True))
    secret_keys: tuple[str, ...] = field(repr=False, metadata=_env("BFF_SECRET_KEY", _secrets, required=True))
    session_store: str | None = field(default=None, metadata=_env("BFF_SESSION_STORE"))
    store_prefix: str = field(default="bff:", metadata=_env("BFF_STORE_PREFIX"))
    session_cache: bool = field(default=True, metadata=_env("BFF_SESSION_CACHE", _flag))
    scopes: str = field(default=DEFAULT_SCOPES, metadata=_env("BFF_SCOPES"))
    audience: str | None = field(default=None, metadata=_env("BFF_AUDIENCE"))
    resource_parameter: str = field(
        default="audience", metadata=_env("BFF_RESOURCE_PARAMETER", _choice("audience", "resource"))
    )
    my_account_url: str = field(default="", metadata=_env("BFF_MY_ACCOUNT_URL"))
    my_account_audience: str = field(default="", metadata=_env("BFF_MY_ACCOUNT_AUDIENCE"))
    proxy_routes: str | None = field(default=None, metadata=_env("BFF_PROXY_ROUTES"))
    token_refresh_margin: int = field(default=60, metadata=_env("BFF_TOKEN_REFRESH_MARGIN", _number(int)))
    token_timeout: float = field(default=10.0, metadata=_env("BFF_TOKEN_TIMEOUT", _number(float)))
    upstream_connect_timeout: float = field(
        default=3.0, metadata=_env("BFF_UPSTREAM_CONNECT_TIMEOUT", _number(float))
    )
    upstream_read_timeout: float = field(default=15.0, metadata=_env("BFF_UPSTREAM_READ_TIMEOUT", _number(float)))
    max_body_bytes: int = field(default=64 * 1024, metadata=_env("BFF_MAX_BODY_BYTES", _number(int)))
    session_idle_timeout: int = field(default=8 * 3600, metadata=_env("BFF_SESSION_IDLE_TIMEOUT", _number(int)))
    session_lifetime: int = field(default=7 * 24 * 3600, metadata=_env("BFF_SESSION_LIFETIME", _number(int)))
    static_dir: str | None = field(default=None, metadata=_env("BFF_STATIC_DIR"))
    content_security_policy: str | None = field(default=None, metadata=_env("BFF_CONTENT_SECURITY_POLICY"))
    step_up_scopes: tuple[str, ...] = field(default=(), metadata=_env("BFF_STEP_UP_SCOPES", _words))
    refresh_lock_lease: float = field(default=30.0, metadata=_env("BFF_REFRESH_LOCK_LEASE", _number(float)))
    refresh_token_overlap: int = field(
        default=0, metadata=_env("BFF_REFRESH_TOKEN_OVERLAP", _number(int, zero=True))
    )
    log_format: str | None = field(default=None, metadata=_env("BFF_LOG_FORMAT", _choice(*_LOG_FORMATS)))
    metrics_address: str | None = field(default=None, metadata=_env("BFF_METRICS_ADDRESS", _address))
    trusted_proxies: tuple[Network, ...] = field(default=(), metadata=_env("BFF_TRUSTED_PROXIES", _networks))
    offload: str | None = field(default=None, metadata=_env("BFF_OFFLOAD", _choice(*_OFFLOAD_MODES)))
    offload_secret: str = field(default="", repr=False, metadata=_env("BFF_OFFLOAD_SECRET"))
    rate_limit_session: str = field(default="600/minute", metadata=_env("BFF_RATE_LIMIT_SESSION"))
    rate_limit_address: str = field(default="1200/minute", metadata=_env("BFF_RATE_LIMIT_ADDRESS"))
    rate_limit_login: str = field(default="30/minute", metadata=_env("BFF_RATE_LIMIT_LOGIN"))
    rate_limit_connect: str = field(default="10/minute", metadata=_env("BFF_RATE_LIMIT_CONNECT"))
    dpop: bool = field(default=False, metadata=_env("BFF_DPOP", _flag))

    def __post_init__(self) -> None:
        # The issuer is kept as configured: providers differ on the trailing slash, and the provider's
        # own spelling (from discovery) is what ID tokens carry. URLs derived from it are joined on the
        # issuer without its trailing slash, so either spelling gives the same URLs.
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not self.my_account_url:
            object.__setattr__(self, "my_account_url", self.issuer_base + "/me/v1")
        object.__setattr__(self, "my_account_url", self.my_account_url.rstrip("/"))
        if not self.my_account_audience:
            object.__setattr__(self, "my_account_audience", self.issuer_base + "/me/")
        self.validate()

    def problems(self) -> list[tuple[str, str]]:
        """Every ``(variable, problem)`` of these values, in the order the documentation lists them."""
        found: list[tuple[str, str]] = []

        def check(variable: str, problem: str | None) -> None:
            if problem is not None:
                found.append((variable, problem))

        check("BFF_ISSUER_URL", _url_problem(self.issuer_url, allow_path=True))
        check("BFF_CLIENT_ID", None if self.client_id.strip() else "must not be empty")
        check("BFF_CLIENT_SECRET", None if self.client_secret.strip() else "must not be empty")
        check("BFF_BASE_URL", _url_problem(self.base_url, allow_path=False))
        if not self.secret_keys:
            check("BFF_SECRET_KEY", "must hold at least one secret")
        for index, key in enumerate(self.secret_keys):
            if len(key) < _MIN_SECRET_LENGTH:
                check("BFF_SECRET_KEY", f"secret #{index + 1} is shorter than {_MIN_SECRET_LENGTH} characters")
                break
        if self.session_store is not None and urlsplit(self.session_store).scheme not in _STORE_SCHEMES:
            check("BFF_SESSION_STORE", "must start with " + ", ".join(f"{s}://" for s in _STORE_SCHEMES))
        if not self.store_prefix or any(c in self.store_prefix for c in " {}\r\n"):
            check("BFF_STORE_PREFIX", "must be non-empty, without spaces or braces")
        scopes = self.scopes.split()
        if "openid" not in scopes:
            check("BFF_SCOPES", "must include openid")
        elif "offline_access" not in scopes:
            check("BFF_SCOPES", "must include offline_access (the BFF needs a refresh token)")
        check("BFF_MY_ACCOUNT_URL", _url_problem(self.my_account_url, allow_path=True))
        if self.session_lifetime < self.session_idle_timeout:
            check("BFF_SESSION_LIFETIME", "must not be shorter than BFF_SESSION_IDLE_TIMEOUT")
        if self.refresh_lock_lease <= self.token_timeout:
            check("BFF_REFRESH_LOCK_LEASE", "must be longer than BFF_TOKEN_TIMEOUT (the slowest exchange)")
        if self.refresh_token_overlap < 0:
            check("BFF_REFRESH_TOKEN_OVERLAP", "must be zero or more seconds")
        if self.log_format is not None and self.log_format not in _LOG_FORMATS:
            check("BFF_LOG_FORMAT", f"must be one of {', '.join(_LOG_FORMATS)}")
        if self.offload is not None and self.offload not in _OFFLOAD_MODES:
            check("BFF_OFFLOAD", f"must be one of {', '.join(_OFFLOAD_MODES)}")
        if self.offload is not None:
            check("BFF_OFFLOAD_SECRET", _offload_secret_problem(self.offload_secret, self.secret_keys))
        for variable, value in (
            ("BFF_RATE_LIMIT_SESSION", self.rate_limit_session),
            ("BFF_RATE_LIMIT_ADDRESS", self.rate_limit_address),
            ("BFF_RATE_LIMIT_LOGIN", self.rate_limit_login),
            ("BFF_RATE_LIMIT_CONNECT", self.rate_limit_connect),
        ):
            check(variable, _rate_problem(value))
        return found

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming every bad variable."""
        found = self.problems()
        if found:
            raise ConfigError.of(found)

    # Derived values -------------------------------------------------------------------------

    @property
    def issuer_base(self) -> str:
        """The issuer without a trailing slash: the base every derived URL is joined on."""
        return self.issuer_url.rstrip("/")

    @property
    def discovery_url(self) -> str:
        """OpenID Connect Discovery: the issuer, then ``/.well-known/openid-configuration``."""
        return self.issuer_base + "/.well-known/openid-configuration"

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
        """Read ``BFF_*`` variables; raise :class:`ConfigError` naming every bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, t.Any] = {}
        found: list[tuple[str, str]] = []
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            raw = env.get(name, "").strip()
            if not raw:
                if spec.metadata["required"]:
                    found.append((name, "is required but not set"))
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as error:
                found.append((name, str(error)))
        if found:
            raise ConfigError.of(found)
        return cls(**values)


def variables() -> dict[str, dataclasses.Field[t.Any]]:
    """Every ``BFF_*`` variable the settings read, with its field."""
    return {spec.metadata["env"]: spec for spec in dataclasses.fields(Settings)}


def _offload_secret_problem(secret: str, secret_keys: tuple[str, ...]) -> str | None:
    """Why ``secret`` cannot prove that a request came through the offloading reverse proxy.

    Security: a request that carries it is answered with an internal redirect holding the session's
    access token in a header, which the reverse proxy consumes; anyone else who knew it could read the
    token of any session whose cookie they hold. It is also written into nginx's configuration.
    """
    if not secret:
        return "is required with BFF_OFFLOAD (the header value the reverse proxy proves itself with)"
    if len(secret) < _MIN_SECRET_LENGTH or len(set(secret)) < _MIN_DISTINCT_SECRET_CHARS:
        return (f"must be at least {_MIN_SECRET_LENGTH} random characters (e.g. openssl rand -hex 32), "
                f"not a placeholder")
    if not _OFFLOAD_SECRET_CHARS.fullmatch(secret):
        return "may hold only A-Z a-z 0-9 . _ ~ + / = - (it is written into nginx's configuration)"
    if secret in secret_keys:
        return "must not be one of BFF_SECRET_KEY's secrets"
    return None


def _rate_problem(value: str) -> str | None:
    """Why ``value`` is not a rate such as ``600/minute`` or ``10/second``; ``off`` disables a limit."""
    if value == "off":
        return None
    amount, _, per = value.partition("/")
    if not amount.isdigit() or int(amount) <= 0 or per not in ("second", "minute", "hour", "day"):
        return f"must be a rate such as 600/minute (per second, minute, hour or day) or off, got {value!r}"
    return None
