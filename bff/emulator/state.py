"""Everything the local Auth0 remembers, and the knobs tests turn.

Security first: this is a test double. Its signing key lives in memory, its users have plain-text passwords
and its control surface (:meth:`EmulatorState.fail_next_token`, the ``/_emulator`` endpoints) is open to
anyone who can reach it, which is why :class:`~bff.emulator.server.EmulatorServer` binds to loopback only.

One :class:`EmulatorState` holds one tenant with one application (the BFF): users, the RS256 signing key,
SSO sessions, authorization codes, refresh-token families, run-time token settings, injected faults,
counters, the record of back-channel logout deliveries, the outbox of one-time codes "sent" by email or
text message (shown on the emulator's ``/inbox`` page), the record of token responses given
(:meth:`EmulatorState.issued_tokens`) and each DPoP-receiving server's nonce and memory of proofs
(:class:`~bff.emulator.dpop_check.ProofGuard`). Every mutation happens under ``state.lock``;
protocol time is read only through :class:`Clock`, so tests move it instead of sleeping. Injected holds
(latency, a hang) and time-window faults run on real monotonic time: they model an IdP that is slow or
down *now*, for the clients waiting on it.

The protocol rules that use this state (what ``/authorize`` and ``/oauth/token`` decide) live in
:mod:`bff.emulator.idp`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import typing as t
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from bff.emulator.dpop_check import DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS, ProofGuard

__all__ = [
    "AUTHORIZATION_CODE_LIFETIME",
    "BACKCHANNEL_LOGOUT_EVENT",
    "BACKCHANNEL_TIMEOUT",
    "CODE_CHANNELS",
    "DEFAULT_POLICY_WINDOW",
    "DPOP_SERVERS",
    "ISSUED_TOKENS_SIZE",
    "LOGIN_TRANSACTION_LIFETIME",
    "LOGOUT_TOKEN_LIFETIME",
    "MFA_ACR",
    "MY_ACCOUNT_SCOPES",
    "OIDC_SCOPES",
    "OUTBOX_SIZE",
    "AuthorizationCode",
    "AuthorizeRequest",
    "BackchannelDelivery",
    "Clock",
    "CodeDelivery",
    "DpopServer",
    "EmulatorConfig",
    "EmulatorState",
    "InvalidAccessToken",
    "IssuedTokens",
    "LoginTransaction",
    "RefreshFamily",
    "RefreshTokenPolicy",
    "RefreshTokenRecord",
    "SsoSession",
    "TokenFault",
    "TokenHold",
    "TokenRequests",
    "TokenSettings",
    "User",
]

MFA_ACR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
"""``acr_values`` / ``acr`` for multi-factor login (configure-step-up-authentication-for-web-apps.md)."""

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"

OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})

MY_ACCOUNT_SCOPES: tuple[str, ...] = (
    "create:me:authentication_methods",
    "create:me:connected_accounts",
    "delete:me:authentication_methods",
    "delete:me:connected_accounts",
    "read:me:authentication_methods",
    "read:me:connected_accounts",
    "read:me:consents",
    "read:me:factors",
    "read:me:organizations",
    "update:me:authentication_methods",
)
"""Every scope the My Account API declares (myaccount-api-oas.json)."""

DEFAULT_POLICY_WINDOW = 15 * 60
"""The Default Policy wants a second factor (or, without one, a login) this recent (my-account-api.md)."""

AUTHORIZATION_CODE_LIFETIME = 10 * 60
LOGIN_TRANSACTION_LIFETIME = 30 * 60
LOGOUT_TOKEN_LIFETIME = 2 * 60
"""Logout tokens expire after two minutes (configure-back-channel-logout.md)."""
BACKCHANNEL_TIMEOUT = 2.0

CODE_CHANNELS = frozenset({"email", "sms", "voice"})
"""How a one-time code reaches its user: by email, or to a phone by text message or voice call."""
OUTBOX_SIZE = 50
"""The outbox keeps this many most recent code deliveries; older ones are forgotten."""
ISSUED_TOKENS_SIZE = 200
"""The record of token responses keeps this many most recent ones (:meth:`EmulatorState.issued_tokens`)."""

DpopServer = t.Literal["token_endpoint", "my_account"]
DPOP_SERVERS: tuple[DpopServer, ...] = ("token_endpoint", "my_account")
"""The servers that can ask for DPoP nonces, each with its own nonce and count of challenges."""


class Clock:
    """Wall-clock time plus an offset that tests move.

    The clock keeps running in real time (the demo needs that); :meth:`advance` and :meth:`set` shift it.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def set(self, ts: float) -> None:
        with self._lock:
            self._offset = ts - time.time()


class InvalidAccessToken(Exception):
    """A bearer token that is malformed, not signed by this emulator, from another issuer, or expired."""


@dataclass
class User:
    """A database-connection user. ``totp_secrets`` (base32) are the enrolled second factors.

    ``password`` is ``None`` once the user's password was deleted (:meth:`EmulatorState.remove_password`):
    the login form then refuses every password for this user.
    """

    sub: str
    email: str
    password: str | None
    name: str
    email_verified: bool = True
    totp_secrets: list[str] = field(default_factory=list)
    updated_at: float = 0.0

    @property
    def nickname(self) -> str:
        return self.email.partition("@")[0]

    @property
    def has_second_factor(self) -> bool:
        return bool(self.totp_secrets)

    @property
    def has_password(self) -> bool:
        return self.password is not None


@dataclass(frozen=True)
class EmulatorConfig:
    """The one application the emulator knows: the BFF.

    The same ``BFF_*`` variables configure the BFF and the emulator, so the two always agree on the client
    and on the URLs (callback, back-channel logout) derived from ``bff_base_url``.

    ``allowed_logout_urls`` is the application's Allowed Logout URLs: where ``/oidc/logout`` and
    ``/v2/logout`` may send the browser afterwards, compared exactly, so the emulator can never be used as
    an open redirect. ``None`` (the default) stands for ``[bff_base_url + "/"]``, the BFF's own
    ``post_logout_redirect_uri``; after construction the field always holds a tuple (:attr:`logout_urls`).
    """

    client_id: str
    client_secret: str
    bff_base_url: str
    allowed_logout_urls: t.Sequence[str] | None = None
    #: Show the demo user's email and password on the login page (``bff demo`` only; off for tests).
    show_demo_credentials: bool = False

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        parts = urlsplit(self.bff_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"bff_base_url must be an absolute http(s) URL, got {self.bff_base_url!r}")
        object.__setattr__(self, "bff_base_url", self.bff_base_url.rstrip("/"))
        urls = self.allowed_logout_urls
        if urls is None:
            urls = (self.bff_base_url + "/",)
        elif isinstance(urls, str):
            raise ValueError("allowed_logout_urls is a list of URLs, not one string")
        for url in urls:
            url_parts = urlsplit(url)
            if url_parts.scheme not in ("http", "https") or not url_parts.hostname or url_parts.fragment:
                raise ValueError(f"allowed logout URLs must be absolute http(s) URLs, got {url!r}")
        object.__setattr__(self, "allowed_logout_urls", tuple(urls))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
        env = os.environ if environ is None else environ
        missing = [
            name for name in ("BFF_CLIENT_ID", "BFF_CLIENT_SECRET", "BFF_BASE_URL") if not env.get(name)
        ]
        if missing:
            raise ValueError(f"missing environment variables: {', '.join(missing)}")
        return cls(env["BFF_CLIENT_ID"], env["BFF_CLIENT_SECRET"], env["BFF_BASE_URL"])

    @property
    def redirect_uri(self) -> str:
        """The only registered callback URL."""
        return self.bff_base_url + "/bff/callback"

    @property
    def backchannel_logout_uri(self) -> str:
        return self.bff_base_url + "/bff/backchannel-logout"

    @property
    def logout_urls(self) -> tuple[str, ...]:
        """The Allowed Logout URLs, in order (the first is where a logout without a redirect URL goes)."""
        return tuple(self.allowed_logout_urls or ())


@dataclass(frozen=True)
class RefreshTokenPolicy:
    """One entry of the client's ``refresh_token.policies``.

    See configure-and-implement-multi-resource-refresh-token.md.
    """

    audience: str
    scope: tuple[str, ...]

    @classmethod
    def from_json(cls, data: object) -> RefreshTokenPolicy:
        if isinstance(data, RefreshTokenPolicy):
            return data
        if not isinstance(data, Mapping):
            raise ValueError("a refresh token policy is an object {audience, scope: [...]}")
        audience, scope = data.get("audience"), data.get("scope")
        if not isinstance(audience, str) or not isinstance(scope, list | tuple):
            raise ValueError("a refresh token policy needs a string audience and a list scope")
        if not all(isinstance(s, str) for s in scope):
            raise ValueError("refresh token policy scopes must be strings")
        return cls(audience, tuple(scope))

    def to_json(self) -> dict[str, t.Any]:
        return {"audience": self.audience, "scope": list(self.scope)}


@dataclass(frozen=True)
class TokenSettings:
    """Token settings that tests change at run time through :meth:`EmulatorState.configure`.

    Defaults are Auth0's: access tokens 24 h, ID tokens 10 h, rotating refresh tokens with a 30-day absolute
    and 15-day inactivity lifetime (``None`` means infinite) and no overlap period
    (configure-refresh-token-rotation.md, configure-and-implement-multi-resource-refresh-token.md).

    DPoP (demonstrating-proof-of-possession-dpop.md): ``dpop_signing_algs`` is what discovery advertises as
    ``dpop_signing_alg_values_supported`` and what proofs may be signed with (Auth0's ``["ES256"]``; only
    asymmetric algorithms are accepted). ``dpop_nonce`` makes the token endpoint require its nonce in
    proofs, as Auth0 does for public clients; ``dpop_api_nonce`` does the same for the My Account API.
    ``require_proof_of_possession`` is the application's "Require Token Sender-Constraining" (the Management
    API's client field of that name): token requests without a DPoP proof are refused. ``dpop_enabled``
    false is a tenant without DPoP: discovery advertises no algorithms and proofs are ignored (Bearer tokens).
    """

    access_token_lifetime: int = 86400
    id_token_lifetime: int = 36000
    refresh_token_lifetime: int | None = 2592000
    refresh_token_idle_lifetime: int | None = 1296000
    rotation: bool = True
    leeway: int = 0
    refresh_token_policies: tuple[RefreshTokenPolicy, ...] = ()
    default_policy_mfa: bool = False
    dpop_signing_algs: tuple[str, ...] = DEFAULT_ALGORITHMS
    dpop_nonce: bool = False
    dpop_api_nonce: bool = False
    require_proof_of_possession: bool = False
    dpop_enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("access_token_lifetime", "id_token_lifetime"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer")
        for name in ("refresh_token_lifetime", "refresh_token_idle_lifetime"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or null")
        if isinstance(self.leeway, bool) or not isinstance(self.leeway, int) or self.leeway < 0:
            raise ValueError("leeway must be a non-negative integer")
        flags = ("rotation", "default_policy_mfa", "dpop_nonce", "dpop_api_nonce", "require_proof_of_possession",
                 "dpop_enabled")
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")
        policies = tuple(RefreshTokenPolicy.from_json(p) for p in self.refresh_token_policies)
        object.__setattr__(self, "refresh_token_policies", policies)
        algs = self.dpop_signing_algs
        if isinstance(algs, str) or not isinstance(algs, list | tuple) or not algs:
            raise ValueError("dpop_signing_algs is a non-empty list of algorithm names")
        unsupported = [a for a in algs if a not in SUPPORTED_ALGORITHMS]
        if unsupported:
            raise ValueError(
                f"dpop_signing_algs: {unsupported} not supported; asymmetric algorithms only: "
                f"{', '.join(SUPPORTED_ALGORITHMS)}"
            )
        object.__setattr__(self, "dpop_signing_algs", tuple(dict.fromkeys(algs)))

    def policy_for(self, audience: str) -> RefreshTokenPolicy | None:
        return next((p for p in self.refresh_token_policies if p.audience == audience), None)

    def to_json(self) -> dict[str, t.Any]:
        return {
            "access_token_lifetime": self.access_token_lifetime,
            "id_token_lifetime": self.id_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "refresh_token_idle_lifetime": self.refresh_token_idle_lifetime,
            "rotation": self.rotation,
            "leeway": self.leeway,
            "refresh_token_policies": [p.to_json() for p in self.refresh_token_policies],
            "default_policy_mfa": self.default_policy_mfa,
            "dpop_signing_algs": list(self.dpop_signing_algs),
            "dpop_nonce": self.dpop_nonce,
            "dpop_api_nonce": self.dpop_api_nonce,
            "require_proof_of_possession": self.require_proof_of_possession,
            "dpop_enabled": self.dpop_enabled,
        }


@dataclass
class SsoSession:
    """The login session at the emulator, like Auth0's: the browser holds ``cookie``, tokens carry ``sid``."""

    sid: str
    cookie: str
    sub: str
    auth_time: float
    mfa_at: float | None = None


@dataclass(frozen=True)
class AuthorizeRequest:
    """A validated ``/authorize`` request; ``dpop_jkt`` binds its code to a DPoP key (RFC 9449 section 10)."""

    redirect_uri: str
    state: str | None
    nonce: str | None
    scope: tuple[str, ...]
    audience: str | None
    code_challenge: str
    prompt: frozenset[str]
    max_age: int | None
    login_hint: str | None
    acr_values: tuple[str, ...]
    dpop_jkt: str | None = None

    @property
    def wants_mfa(self) -> bool:
        return MFA_ACR in self.acr_values


@dataclass
class LoginTransaction:
    """An ``/authorize`` request at the login form; ``sub`` is set once the password (or SSO) is done."""

    id: str
    request: AuthorizeRequest
    expires_at: float
    sub: str | None = None


@dataclass(frozen=True)
class AuthorizationCode:
    request: AuthorizeRequest
    sub: str
    sid: str
    auth_time: float
    mfa_at: float | None
    expires_at: float


@dataclass
class RefreshFamily:
    """All refresh tokens descending from one login (refresh-token-rotation.md, "token family").

    ``audience`` and ``scope`` are what the login granted; ``previous`` is the token rotated most recently,
    the only one the overlap period lets through again. ``jkt`` is the thumbprint of the DPoP key the family
    is bound to (every token of it, for its whole life), ``None`` for an unbound family.
    """

    id: str
    sub: str
    sid: str
    audience: str
    scope: tuple[str, ...]
    auth_time: float
    mfa_at: float | None
    created_at: float
    last_used_at: float
    previous: str | None = None
    revoked: bool = False
    reuse_detected: bool = False
    token_calls: int = 0
    jkt: str | None = None


@dataclass
class RefreshTokenRecord:
    family: RefreshFamily
    rotated_at: float | None = None


@dataclass(frozen=True)
class TokenFault:
    """An error the token endpoint answers instead of processing the request."""

    error: str
    status: int
    description: str


@dataclass(frozen=True)
class TokenRequests:
    """How far the token-endpoint requests since the last :meth:`EmulatorState.reset_counters` have got.

    ``received``: arrived in full at ``/oauth/token``, counted before any injected latency; ``done``: answered
    (whatever the answer) or dropped; ``dropped``: given up by their client during the latency and never
    processed; ``abandoned``: given up by their client while held, and processed all the same (a hang, or
    latency with ``process_abandoned``), so their client never learnt the outcome. Counts only: nothing of a
    request (no token, no secret) is kept.
    """

    received: int
    done: int
    dropped: int
    abandoned: int = 0


@dataclass(frozen=True)
class TokenHold:
    """How the token request arriving now was held before being processed.

    ``held``: it waited (injected latency or a hang); ``process_abandoned``: it is processed even if its client
    has gone meanwhile, instead of being dropped.
    """

    held: bool
    process_abandoned: bool


@dataclass(frozen=True)
class BackchannelDelivery:
    """The outcome of one back-channel logout POST: the HTTP status, or the transport error."""

    sid: str
    sub: str
    logout_token: str
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class CodeDelivery:
    """One one-time code "sent" to a user: by ``channel`` (:data:`CODE_CHANNELS`) to ``address``.

    The emulator sends nothing anywhere: the delivery is kept in the outbox (:meth:`EmulatorState.outbox`)
    and shown on the ``/inbox`` page. ``sent_at`` is by the emulator's clock.
    """

    channel: str
    address: str
    code: str
    sent_at: float


@dataclass(frozen=True)
class IssuedTokens:
    """One successful token response, as the client received it.

    Kept so tests can act as someone who stole tokens (from a store dump, a log): ``access_token`` and
    ``refresh_token`` are the real tokens; ``jkt`` is the DPoP key they are bound to (``None``: Bearer).
    ``issued_at`` is by the emulator's clock.
    """

    grant_type: str
    sub: str
    audience: str
    scope: str
    token_type: str
    jkt: str | None
    access_token: str
    refresh_token: str | None
    issued_at: float


def _random_id(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


class EmulatorState:
    """One emulated Auth0 tenant with the BFF as its only application.

    ``issuer`` is the emulator's own URL with a trailing slash, as Auth0's ``iss``. Attributes that hold
    protocol state (``sso_sessions``, ``login_transactions``, ``codes``, ``refresh_tokens``, ``families``)
    are read and written only under ``lock``.
    """

    def __init__(self, config: EmulatorConfig, issuer: str, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.lock = threading.RLock()
        self.issuer = issuer.rstrip("/") + "/"
        self.my_account_audience = self.issuer + "me/"
        self.userinfo_audience = self.issuer + "userinfo"
        self.client_id = config.client_id
        self.client_secret = config.client_secret
        self.bff_base_url = config.bff_base_url

        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = RSAKey.import_key(private_key, {"kid": _random_id(12), "use": "sig", "alg": "RS256"})

        self._settings = TokenSettings(
            refresh_token_policies=(RefreshTokenPolicy(self.my_account_audience, MY_ACCOUNT_SCOPES),)
        )
        self.users: dict[str, User] = {}
        self.sso_sessions: dict[str, SsoSession] = {}
        self.login_transactions: dict[str, LoginTransaction] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.refresh_tokens: dict[str, RefreshTokenRecord] = {}
        self.families: dict[str, RefreshFamily] = {}
        self.backchannel_deliveries: list[BackchannelDelivery] = []
        self._backchannel_done = threading.Condition(self.lock)
        self._outbox: deque[CodeDelivery] = deque(maxlen=OUTBOX_SIZE)
        self._issued: deque[IssuedTokens] = deque(maxlen=ISSUED_TOKENS_SIZE)
        # One DPoP memory per receiving server: nonce, challenges, jtis seen. /userinfo never asks for a nonce.
        self.dpop_guards: dict[DpopServer, ProofGuard] = {
            "token_endpoint": ProofGuard(self.clock, "Authorization server requires nonce in DPoP proof"),
            "my_account": ProofGuard(self.clock, "Resource server requires nonce in DPoP proof"),
        }
        self.userinfo_dpop = ProofGuard(self.clock, "Resource server requires nonce in DPoP proof")

        self._faults: deque[TokenFault] = deque()
        self._latency = 0.0
        self._latency_remaining: int | None = None
        self._latency_processes_abandoned = False
        # A time-window fault (fail_tokens_for) and a hang (token_hang), both until a monotonic deadline.
        self._window_fault: TokenFault | None = None
        self._window_fault_until = 0.0
        self._hang_until: float | None = None
        self._hang_processes_abandoned = True
        self._hang_changed = threading.Condition(self.lock)
        self._token_calls = 0
        self._token_calls_by_grant: dict[str, int] = {}
        self._faulted_token_calls = 0
        self._dropped_token_calls = 0
        # Token requests' progress, for tests that wait on it (wait_for_token_requests) instead of sleeping.
        self._token_requests = threading.Condition(self.lock)
        self._received_token_requests = 0
        self._done_token_requests = 0
        self._abandoned_token_requests = 0

        self.add_user("alice@example.com", "alice", name="Alice Example")

    # -- users -------------------------------------------------------------------------------------------

    def user_by_email(self, email: str) -> User | None:
        wanted = email.strip().lower()
        with self.lock:
            return next((u for u in self.users.values() if u.email.lower() == wanted), None)

    def add_user(
        self, email: str, password: str, name: str | None = None, totp_secret: str | None = None
    ) -> User:
        """Create a user; ``sub`` is derived from the email so a restarted emulator keeps the same ids."""
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]
        user = User(
            sub=f"auth0|{digest}",
            email=email.strip(),
            password=password,
            name=name or email.strip(),
            totp_secrets=[totp_secret] if totp_secret else [],
            updated_at=self.clock.now(),
        )
        with self.lock:
            if user.sub in self.users:
                raise ValueError(f"a user with email {email!r} exists already")
            self.users[user.sub] = user
        return user

    def remove_password(self, sub: str) -> bool:
        """Delete the password of user ``sub``: from now on the login form refuses every password for them.

        For the My Account API's deletion of a password authentication method. Sessions and refresh
        tokens the user already holds stay, as a deleted password does not log anyone out. Returns
        ``False`` when the user had no password (any more); ``KeyError`` for an unknown user.
        """
        with self.lock:
            user = self.users[sub]
            had = user.password is not None
            user.password = None
            user.updated_at = self.clock.now()
            return had

    # -- one-time codes sent by email or text message ----------------------------------------------------

    def deliver_code(self, channel: str, address: str, code: str) -> CodeDelivery:
        """Record a one-time ``code`` as sent to ``address`` by ``channel`` (``email``, ``sms`` or ``voice``).

        For the My Account API's email and phone enrollments. Nothing leaves the machine: the delivery goes
        to the outbox shown on ``/inbox`` (:data:`OUTBOX_SIZE` most recent) and one line on standard output,
        ``emulator: code for <address>: <code>``, so a person at the demo can finish the enrollment. The
        codes are demo secrets only: the outbox is served on loopback, like every other emulator route.
        """
        if channel not in CODE_CHANNELS:
            raise ValueError(f"channel must be one of {sorted(CODE_CHANNELS)}, got {channel!r}")
        if not address or not code:
            raise ValueError("address and code must not be empty")
        delivery = CodeDelivery(channel, address, code, self.clock.now())
        with self.lock:
            self._outbox.append(delivery)
        print(f"emulator: code for {address}: {code}", flush=True)
        return delivery

    def outbox(self) -> list[CodeDelivery]:
        """The code deliveries kept, newest first."""
        with self.lock:
            return list(reversed(self._outbox))

    # -- keys and tokens ---------------------------------------------------------------------------------

    def jwks(self) -> dict[str, t.Any]:
        return {"keys": [self._key.as_dict(private=False)]}

    def sign(self, claims: dict[str, t.Any]) -> str:
        """Sign ``claims`` as an RS256 JWT with the emulator's key."""
        return jwt.encode({"alg": "RS256", "kid": self._key.kid}, claims, self._key)

    def mint_access_token(
        self,
        *,
        sub: str,
        audience: str,
        scope: str,
        lifetime: int | None = None,
        extra_claims: dict[str, t.Any] | None = None,
    ) -> str:
        """An RS256 JWT access token shaped like Auth0's.

        With ``openid`` in the scope and an API audience, ``aud`` is ``[audience, issuer + "userinfo"]``,
        as Auth0 does, so the same token also works at ``/userinfo``.
        """
        now = int(self.clock.now())
        aud: str | list[str] = audience
        if audience != self.userinfo_audience and "openid" in scope.split():
            aud = [audience, self.userinfo_audience]
        claims: dict[str, t.Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": now + (lifetime or self._settings.access_token_lifetime),
            "scope": scope,
            "azp": self.client_id,
            "jti": _random_id(16),
        }
        claims.update(extra_claims or {})
        return self.sign(claims)

    def verify_access_token(self, token: str) -> dict[str, t.Any]:
        """Check signature, ``iss`` and ``exp`` (by the Clock); the caller checks ``aud`` and ``scope``."""
        claims = self.verify_signature(token)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self.clock.now():
            raise InvalidAccessToken("token expired")
        return claims

    def verify_signature(self, token: str) -> dict[str, t.Any]:
        """Check only signature and ``iss``: ``id_token_hint`` may be expired and still name the session."""
        try:
            claims = jwt.decode(token, self._key, algorithms=["RS256"]).claims
        except (JoseError, ValueError) as exc:
            raise InvalidAccessToken(f"invalid token: {exc}") from exc
        if claims.get("iss") != self.issuer:
            raise InvalidAccessToken("token from another issuer")
        return claims

    # -- settings ----------------------------------------------------------------------------------------

    @property
    def settings(self) -> TokenSettings:
        """A consistent snapshot; read it once per request."""
        return self._settings

    def configure(self, **changes: t.Any) -> TokenSettings:
        """Change token settings at run time, e.g. ``configure(leeway=5, rotation=True)``.

        Keys are :class:`TokenSettings` fields; ``refresh_token_policies`` also takes Auth0's JSON shape
        ``[{"audience": ..., "scope": [...]}]``. Raises ``ValueError``/``TypeError`` on bad input.
        """
        with self.lock:
            self._settings = replace(self._settings, **changes)
            return self._settings

    # -- test controls: faults and latency ---------------------------------------------------------------

    def fail_next_token(
        self, error: str, status: int = 400, count: int = 1, description: str | None = None
    ) -> None:
        """Make the next ``count`` token calls answer ``{error, error_description}`` with ``status``."""
        if count < 1 or not 400 <= status <= 599:
            raise ValueError("count must be >= 1 and status an HTTP error status")
        fault = TokenFault(error, status, description or f"Injected fault: {error}")
        with self.lock:
            self._faults.extend([fault] * count)

    def fail_tokens_for(
        self, seconds: float, error: str = "temporarily_unavailable", status: int = 503,
        description: str | None = None,
    ) -> None:
        """An outage: every token call processed during the next ``seconds`` answers ``{error, ...}``.

        Calls are counted as they are answered (``faulted_token_calls`` in :meth:`counters`), so a test
        can tell how many its client sent during the outage. Faults queued by :meth:`fail_next_token` are
        answered first. A new window replaces the previous one; :meth:`clear_faults` ends it early.
        """
        if seconds <= 0 or not 400 <= status <= 599:
            raise ValueError("seconds must be > 0 and status an HTTP error status")
        fault = TokenFault(error, status, description or f"Injected outage: {error}")
        with self.lock:
            self._window_fault = fault
            self._window_fault_until = time.monotonic() + seconds

    def token_latency(self, seconds: float, count: int | None = None, *, process_abandoned: bool = False) -> None:
        """Delay the next ``count`` token-endpoint calls (every call when ``None``) by ``seconds``.

        The delay comes before the request is processed. By default a client that gives up and disconnects
        during it has its request dropped unprocessed, as if the request had died in transit (see
        :func:`bff.emulator.idp.client_disconnected`); with ``process_abandoned`` the request is processed
        anyway, as a slow IdP does whose client timed out (the outcome exists, the client never saw it).
        ``token_latency(0)`` switches latency off.
        """
        if seconds < 0 or (count is not None and count < 1):
            raise ValueError("seconds must be >= 0 and count >= 1")
        with self.lock:
            self._latency = seconds
            self._latency_remaining = count
            self._latency_processes_abandoned = process_abandoned

    def token_hang(self, seconds: float, *, process_abandoned: bool = True) -> None:
        """Hang the token endpoint for ``seconds`` from now: every request that arrives meanwhile is held
        until the hang ends, then processed, by default even if its client has given up meanwhile.

        That is an IdP that stalls and then catches up: a refresh token presented during the hang is
        rotated although its client saw only a timeout. Requests arriving after the hang are not held.
        A new hang replaces the one in force; :meth:`end_token_hang` or :meth:`clear_faults` end it early
        and release what it holds.
        """
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        with self._hang_changed:
            self._hang_until = time.monotonic() + seconds
            self._hang_processes_abandoned = process_abandoned
            self._hang_changed.notify_all()

    def end_token_hang(self) -> None:
        """End the hang in force now; the requests it holds go on at once."""
        with self._hang_changed:
            self._hang_until = None
            self._hang_changed.notify_all()

    def clear_faults(self) -> None:
        """Drop pending faults, the outage window, latency and the hang (releasing what it holds)."""
        with self.lock:
            self._faults.clear()
            self._window_fault = None
            self._latency = 0.0
            self._latency_remaining = None
            self._latency_processes_abandoned = False
        self.end_token_hang()

    def hold_token_request(self) -> TokenHold:
        """Hold the token request arriving now: while a hang lasts, then for its injected latency.

        Called by the token endpoint before it processes a request; the hang is waited out on a condition,
        so :meth:`end_token_hang` releases the request at once. A request is processed even if its client
        has gone when any hold it went through says so.
        """
        held = process_abandoned = False
        with self._hang_changed:
            while self._hang_until is not None and (left := self._hang_until - time.monotonic()) > 0:
                held = True
                process_abandoned = process_abandoned or self._hang_processes_abandoned
                self._hang_changed.wait(left)
            latency_processes_abandoned = self._latency_processes_abandoned
            delay = self.next_token_latency()
        if delay:
            time.sleep(delay)
            held = True
            process_abandoned = process_abandoned or latency_processes_abandoned
        return TokenHold(held, process_abandoned)

    def next_token_latency(self) -> float:
        """The delay for the token call that is arriving now (0 for none); consumes one of ``count``."""
        with self.lock:
            delay = self._latency
            if delay and self._latency_remaining is not None:
                self._latency_remaining -= 1
                if self._latency_remaining == 0:
                    self._latency = 0.0
                    self._latency_remaining = None
            return delay

    def begin_token_call(self, grant_type: str, refresh_token: str | None) -> TokenFault | None:
        """Count a token call that arrived, then hand out the next injected fault, if any."""
        with self.lock:
            self._token_calls += 1
            self._token_calls_by_grant[grant_type] = self._token_calls_by_grant.get(grant_type, 0) + 1
            record = self.refresh_tokens.get(refresh_token) if refresh_token else None
            if record is not None:
                record.family.token_calls += 1
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self._window_fault is not None:
                if time.monotonic() < self._window_fault_until:
                    fault = self._window_fault
                else:
                    self._window_fault = None
            if fault is not None:
                self._faulted_token_calls += 1
            return fault

    def token_request_received(self) -> None:
        """Note a request that arrived at the token endpoint, before its latency; wakes the waiters."""
        with self._token_requests:
            self._received_token_requests += 1
            self._token_requests.notify_all()

    def token_request_done(self, *, dropped: bool, abandoned: bool = False) -> None:
        """Note a token request that was answered, or ``dropped`` unprocessed, or processed although
        ``abandoned`` by its client; wakes the waiters."""
        with self._token_requests:
            self._done_token_requests += 1
            if dropped:
                self._dropped_token_calls += 1
            if abandoned:
                self._abandoned_token_requests += 1
            self._token_requests.notify_all()

    # -- test controls: waiting on token requests --------------------------------------------------------

    def token_requests(self) -> TokenRequests:
        """Token requests received, done, dropped and abandoned since the last :meth:`reset_counters`."""
        with self.lock:
            return TokenRequests(
                self._received_token_requests,
                self._done_token_requests,
                self._dropped_token_calls,
                self._abandoned_token_requests,
            )

    def wait_for_token_requests(
        self, *, received: int = 0, done: int = 0, dropped: int = 0, abandoned: int = 0, timeout: float = 5.0
    ) -> TokenRequests:
        """Block until at least ``received`` token requests arrived, ``done`` ended, ``dropped`` were dropped
        and ``abandoned`` were processed after their client had gone.

        Counts are since the last :meth:`reset_counters`. In-process tests use this to order an action after
        a moment at the emulator, e.g. kill a client once its token request is in flight
        (``received=1`` with :meth:`token_latency` on), or go on once a dropped request is over
        (``dropped=1``), rather than sleeping and hoping the moment has come. Raises ``TimeoutError`` with the
        counts reached after ``timeout`` seconds, so a request that never came fails the test loudly instead
        of letting it pass without the race it was written for.
        """
        wanted = TokenRequests(received, done, dropped, abandoned)
        with self._token_requests:
            reached = self._token_requests.wait_for(
                lambda: self._received_token_requests >= received
                and self._done_token_requests >= done
                and self._dropped_token_calls >= dropped
                and self._abandoned_token_requests >= abandoned,
                timeout,
            )
            if not reached:
                raise TimeoutError(
                    f"waited {timeout}s for token requests {wanted}, reached {self.token_requests()}"
                )
            return self.token_requests()

    # -- test controls: counters -------------------------------------------------------------------------

    def counters(self) -> dict[str, t.Any]:
        """Token-endpoint calls: total, by grant type, dropped, answered with an injected fault
        (``faulted_token_calls``), and per refresh-token family; ``use_dpop_nonce`` challenges by server
        (``dpop_nonce_challenges``: ``token_endpoint``, ``my_account``)."""
        with self.lock:
            return {
                "token_calls": self._token_calls,
                "token_calls_by_grant_type": dict(self._token_calls_by_grant),
                "dropped_token_calls": self._dropped_token_calls,
                "faulted_token_calls": self._faulted_token_calls,
                "dpop_nonce_challenges": {name: guard.challenges for name, guard in self.dpop_guards.items()},
                "families": {
                    f.id: {
                        "token_calls": f.token_calls,
                        "revoked": f.revoked,
                        "reuse_detected": f.reuse_detected,
                    }
                    for f in self.families.values()
                },
            }

    def reset_counters(self) -> None:
        """Zero every call counter; revocation and reuse flags are state, not counters, and stay."""
        with self.lock:
            self._token_calls = 0
            self._token_calls_by_grant.clear()
            self._dropped_token_calls = 0
            self._faulted_token_calls = 0
            self._received_token_requests = 0
            self._done_token_requests = 0
            self._abandoned_token_requests = 0
            for family in self.families.values():
                family.token_calls = 0
            for guard in self.dpop_guards.values():
                guard.reset_challenges()

    def family_of(self, refresh_token: str) -> str:
        """The family id of a refresh token this emulator issued; ``KeyError`` for an unknown token."""
        with self.lock:
            return self.refresh_tokens[refresh_token].family.id

    def token_calls(self, family: str) -> int:
        with self.lock:
            return self.families[family].token_calls

    def family_revoked(self, family: str) -> bool:
        with self.lock:
            return self.families[family].revoked

    def reuse_detected(self, family: str) -> bool:
        with self.lock:
            return self.families[family].reuse_detected

    # -- test controls: DPoP ----------------------------------------------------------------------------

    def dpop_nonce(self, server: DpopServer = "token_endpoint") -> str:
        """The nonce ``server`` currently wants in proofs (when its nonce setting is on)."""
        return self.dpop_guards[server].nonce

    def rotate_dpop_nonce(self, server: DpopServer | None = None) -> dict[str, str]:
        """Give ``server`` (both when ``None``) a new nonce; proofs with the old one are challenged from now
        on. Returns the current nonce of each server."""
        for name in (server,) if server is not None else DPOP_SERVERS:
            self.dpop_guards[name].rotate_nonce()
        return {name: guard.nonce for name, guard in self.dpop_guards.items()}

    def dpop_nonce_challenges(self, server: DpopServer = "token_endpoint") -> int:
        """``use_dpop_nonce`` answers ``server`` gave since the last :meth:`reset_counters`."""
        return self.dpop_guards[server].challenges

    def record_issued(self, issued: IssuedTokens) -> None:
        """Keep one token response (the :data:`ISSUED_TOKENS_SIZE` most recent are kept)."""
        with self.lock:
            self._issued.append(issued)

    def issued_tokens(self, sub: str | None = None) -> list[IssuedTokens]:
        """The token responses the emulator gave, newest first; only ``sub``'s when given.

        For tests that use a token the way a thief would: ``issued_tokens()[0].access_token`` is the
        latest access token, bound to ``.jkt`` when ``.token_type`` is ``DPoP``.
        """
        with self.lock:
            return [i for i in reversed(self._issued) if sub is None or i.sub == sub]

    # -- refresh tokens ----------------------------------------------------------------------------------

    def new_refresh_token(self, family: RefreshFamily) -> str:
        """Issue one more token of ``family``; call under ``lock``."""
        token = "v1." + _random_id(32)
        self.refresh_tokens[token] = RefreshTokenRecord(family)
        return token

    # -- SSO sessions and logout -------------------------------------------------------------------------

    def create_sso_session(self, sub: str, *, auth_time: float, mfa_at: float | None) -> SsoSession:
        session = SsoSession(
            sid=_random_id(16), cookie=_random_id(32), sub=sub, auth_time=auth_time, mfa_at=mfa_at
        )
        with self.lock:
            self.sso_sessions[session.sid] = session
        return session

    def sso_session_by_cookie(self, cookie: str | None) -> SsoSession | None:
        if not cookie:
            return None
        with self.lock:
            return next((s for s in self.sso_sessions.values() if s.cookie == cookie), None)

    def end_sso_session(self, sid: str) -> bool:
        """End an SSO session and send the back-channel logout for it; ``False`` if there was none."""
        with self.lock:
            session = self.sso_sessions.pop(sid, None)
        if session is None:
            return False
        self._send_backchannel_logout(session)
        return True

    def logout_user(self, sub: str) -> list[str]:
        """End every SSO session of ``sub`` ("logged out elsewhere"); returns the ended ``sid``s."""
        with self.lock:
            sids = [s.sid for s in self.sso_sessions.values() if s.sub == sub]
        return [sid for sid in sids if self.end_sso_session(sid)]

    def mint_logout_token(self, *, sub: str, sid: str) -> str:
        """A logout token as Auth0 sends it: no ``nonce``, two minutes to live (back-channel-logout.md)."""
        now = int(self.clock.now())
        return self.sign(
            {
                "iss": self.issuer,
                "sub": sub,
                "aud": self.client_id,
                "iat": now,
                "exp": now + LOGOUT_TOKEN_LIFETIME,
                "jti": _random_id(16),
                "sid": sid,
                "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            }
        )

    def wait_for_backchannel(self, count: int = 1, timeout: float = 5.0) -> list[BackchannelDelivery]:
        """Block until ``count`` deliveries finished (or ``timeout``); returns all recorded so far."""
        with self._backchannel_done:
            self._backchannel_done.wait_for(lambda: len(self.backchannel_deliveries) >= count, timeout)
            return list(self.backchannel_deliveries)

    def _send_backchannel_logout(self, session: SsoSession) -> None:
        # Auth0 queues logout tokens and sends them asynchronously (back-channel-logout.md); a slow or dead
        # receiver must not hold up the logout that triggered it.
        token = self.mint_logout_token(sub=session.sub, sid=session.sid)
        threading.Thread(
            target=self._deliver_backchannel,
            args=(session, token),
            name="emulator-backchannel-logout",
            daemon=True,
        ).start()

    def _deliver_backchannel(self, session: SsoSession, token: str) -> None:
        status: int | None = None
        error: str | None = None
        try:
            with requests.Session() as http:
                # Proxy settings from the environment must never see a logout token.
                http.trust_env = False
                response = http.post(
                    self.config.backchannel_logout_uri,
                    data={"logout_token": token},
                    timeout=BACKCHANNEL_TIMEOUT,
                )
            status = response.status_code
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._backchannel_done:
            self.backchannel_deliveries.append(
                BackchannelDelivery(session.sid, session.sub, token, status, error)
            )
            self._backchannel_done.notify_all()
