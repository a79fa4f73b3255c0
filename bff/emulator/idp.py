"""The OpenID Provider routes of the emulator, following Auth0's documented behaviour.

Security first: this is a test double for a local Auth0 (see :mod:`bff.emulator.state`), served on loopback
only. It still enforces what the BFF must cope with at Auth0: the client and the redirect URI must match
exactly (an unknown one gets an error page, never a redirect), PKCE S256 is required, an authorization code
is good for one attempt, client secrets and passwords are compared in constant time, a user whose password
was deleted cannot log in with one, a reused refresh token revokes its family, and a logout redirect must be
one of the Allowed Logout URLs, compared exactly. Token answers are ``no-store``.

:class:`IdentityProvider` serves the routes for one :class:`~bff.emulator.state.EmulatorState`;
:func:`register` mounts them on the emulator's app. The routes:

- ``/.well-known/openid-configuration``, ``/.well-known/jwks.json``, ``/userinfo``.
- ``/authorize`` (code flow, PKCE S256 required) with a login form at ``/u/login`` and a TOTP step at
  ``/u/mfa``; an SSO session cookie lets later requests skip the form (``prompt``, ``max_age``).
  Step-up: ``acr_values`` with the multi-factor URI (configure-step-up-authentication-for-web-apps.md).
- ``/oauth/token``: ``authorization_code`` and ``refresh_token`` with rotation, reuse detection and an overlap
  period (refresh-token-rotation.md, configure-refresh-token-rotation.md), multi-resource refresh tokens
  (multi-resource-refresh-token.md, configure-and-implement-multi-resource-refresh-token.md) and the My
  Account API Default Policy (my-account-api.md).
- DPoP (demonstrating-proof-of-possession-dpop.md, RFC 9449): a token request with a valid proof gets
  DPoP-bound tokens (``token_type`` ``DPoP``, ``cnf.jkt`` in the access token, the refresh-token family
  bound to the key for its life); ``/authorize`` takes ``dpop_jkt`` and binds the code to it. Proofs are
  checked by :mod:`bff.emulator.dpop_check`; the knobs are :class:`~bff.emulator.state.TokenSettings`'
  ``dpop_*`` fields and ``require_proof_of_possession``.
- ``/oauth/revoke`` (revoke-refresh-token.md), ``/oidc/logout`` (oidc-logout.md) and Auth0's own
  ``/v2/logout`` (``client_id``, ``returnTo``, ``federated``), which end the SSO session and send an OIDC
  back-channel logout (back-channel-logout.md).

Errors at the token endpoint are JSON ``{error, error_description}``, as Auth0 answers: an unknown, expired,
revoked or reused refresh token is 403 ``invalid_grant`` "Unknown or invalid refresh token." (refresh-token.md
lists 403 for it), and ``mfa_required`` carries an ``mfa_token``, as Auth0's MFA API documents. DPoP failures
are 400 ``invalid_dpop_proof`` (a bad proof, none where the code, the refresh token or the application needs
one, or one made with another key: RFC 9449 section 5 names this error for the token endpoint, Auth0's
DPoP page lists it) and 400 ``use_dpop_nonce`` with a ``DPoP-Nonce`` header, in Auth0's words ("Authorization
server requires nonce in DPoP proof").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import select
import socket
import ssl
import typing as t
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import pyotp
from flask import Blueprint, Flask, Response, jsonify, render_template, request
from markupsafe import escape

from bff.emulator.dpop_check import (
    INVALID_DPOP_PROOF,
    Proof,
    ProofError,
    ResourceAuthError,
    check_resource_request,
)
from bff.emulator.state import (
    AUTHORIZATION_CODE_LIFETIME,
    DEFAULT_POLICY_WINDOW,
    LOGIN_TRANSACTION_LIFETIME,
    MFA_ACR,
    MY_ACCOUNT_SCOPES,
    OIDC_SCOPES,
    AuthorizationCode,
    AuthorizeRequest,
    EmulatorState,
    InvalidAccessToken,
    IssuedTokens,
    LoginTransaction,
    RefreshFamily,
    SsoSession,
    TokenSettings,
    User,
)

__all__ = [
    "SSO_COOKIE",
    "IdentityProvider",
    "OAuthError",
    "client_disconnected",
    "mfa_required",
    "pkce_s256",
    "register",
]

SSO_COOKIE = "auth0"
"""Auth0's own session cookie name."""

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_JWK_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest
_PROMPTS = frozenset({"none", "login", "consent", "select_account"})
_LOGIN_EXPIRED = ("Login expired", "This login attempt has expired. Start again from the application.")


class OAuthError(Exception):
    """An OAuth error answered to the client: JSON at the token endpoint, a redirect at ``/authorize``.

    ``extra`` are further members of the JSON answer, such as ``mfa_token``; ``headers`` are response
    headers, such as ``DPoP-Nonce``.
    """

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        extra: t.Mapping[str, str] | None = None,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def mfa_required() -> OAuthError:
    """Auth0's ``mfa_required`` answer (403), with a fresh ``mfa_token``.

    The token is opaque and unguessable (256 random bits). The emulator has no MFA API to redeem it at
    (``/mfa/challenge``, the ``mfa-otp`` grant): a client completes the second factor through ``/authorize``
    with the multi-factor ``acr_values`` instead.
    """
    return OAuthError(
        "mfa_required", "Multifactor authentication required", 403, {"mfa_token": secrets.token_urlsafe(32)}
    )


@dataclass(frozen=True)
class _Grant:
    """What a successful token request issues; signing happens after ``state.lock`` is released.

    ``jkt``: the DPoP key the access token is bound to (``cnf.jkt``), ``None`` for a Bearer token.
    """

    sub: str
    audience: str
    scope: tuple[str, ...]
    id_token_claims: dict[str, t.Any] | None
    refresh_token: str | None
    jkt: str | None = None


def pkce_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_disconnected(environ: dict[str, t.Any]) -> bool:
    """Whether the client of this request has closed its connection.

    Used after injected latency: a client that timed out and hung up while its request was "in transit"
    gets its request dropped unprocessed, so the emulator models a request that never arrived rather than
    one that was processed and whose answer was lost. The request body must have been read already, so a
    readable socket that peeks as empty means end-of-file. Over TLS the peek looks at the raw connection
    (a TLS socket cannot peek), so only a closed TCP connection counts, not a bare ``close_notify``.
    Without werkzeug's socket the answer is ``False``.
    """
    sock = environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as raw:
                return raw.recv(1, socket.MSG_PEEK) == b""
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _with_query(uri: str, params: dict[str, str | None]) -> str:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    if not extra:
        return uri
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _redirect(uri: str, **params: str | None) -> Response:
    response = Response(status=302)
    response.headers["Location"] = _with_query(uri, params)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(title: str, message: str, status: int) -> Response:
    return Response(render_template("message.html", title=title, message=message), status=status)


def _oauth_error(
    status: int,
    error: str,
    description: str,
    extra: t.Mapping[str, str] | None = None,
    headers: t.Mapping[str, str] | None = None,
) -> Response:
    response = jsonify(error=error, error_description=description, **(extra or {}))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def _ordered(scopes: t.Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(scopes))


def _profile_claims(state: EmulatorState, user: User, scope: t.Collection[str]) -> dict[str, t.Any]:
    claims: dict[str, t.Any] = {}
    if "profile" in scope:
        claims.update(
            name=user.name,
            nickname=user.nickname,
            picture=f"{state.issuer}avatars/{user.sub.partition('|')[2]}.svg",
            updated_at=datetime.fromtimestamp(user.updated_at, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        )
    if "email" in scope:
        claims.update(email=user.email, email_verified=user.email_verified)
    return claims


def _id_token_claims(
    state: EmulatorState,
    settings: TokenSettings,
    user: User,
    *,
    scope: tuple[str, ...],
    sid: str,
    auth_time: float,
    nonce: str | None,
    amr: list[str] | None,
) -> dict[str, t.Any]:
    now = int(state.clock.now())
    claims: dict[str, t.Any] = {
        "iss": state.issuer,
        "aud": state.client_id,
        "sub": user.sub,
        "iat": now,
        "exp": now + settings.id_token_lifetime,
        "auth_time": int(auth_time),
        "sid": sid,
        **_profile_claims(state, user, scope),
    }
    if nonce:
        claims["nonce"] = nonce
    if amr is not None:
        claims["amr"] = amr
        if "mfa" in amr:
            claims["acr"] = MFA_ACR
    return claims


def _mfa_pending(
    settings: TokenSettings, request_: AuthorizeRequest, user: User, mfa_at: float | None, now: float
) -> bool:
    """Whether login must still ask for the second factor.

    Asked when the user has one and either the client requested the multi-factor ``acr_values`` or the
    Default Policy is on; the Default Policy also wants it within the last 15 minutes (my-account-api.md).
    """
    if not user.has_second_factor or not (request_.wants_mfa or settings.default_policy_mfa):
        return False
    if mfa_at is None:
        return True
    return settings.default_policy_mfa and now - mfa_at > DEFAULT_POLICY_WINDOW


def _check_default_policy(
    state: EmulatorState,
    settings: TokenSettings,
    user: User,
    *,
    audience: str,
    scope: tuple[str, ...],
    auth_time: float,
    mfa_at: float | None,
    now: float,
) -> None:
    """Enforce the My Account API Default Policy on sensitive (non ``read:me:``) scopes (my-account-api.md).

    A user with a second factor must have used it within 15 minutes, else ``mfa_required``. A user without
    one gets access for 15 minutes after login, then ``unmet_authentication_requirements``.
    """
    if not settings.default_policy_mfa or audience != state.my_account_audience:
        return
    if not any(s in MY_ACCOUNT_SCOPES and not s.startswith("read:me:") for s in scope):
        return
    if user.has_second_factor:
        if mfa_at is None or now - mfa_at > DEFAULT_POLICY_WINDOW:
            raise mfa_required()
    elif now - auth_time > DEFAULT_POLICY_WINDOW:
        raise OAuthError(
            "unmet_authentication_requirements", "The user does not meet the authentication requirements", 403
        )


def _parse_authorize(state: EmulatorState, args: t.Mapping[str, str]) -> AuthorizeRequest:
    """Validate an ``/authorize`` request whose client and redirect URI are already known to be good."""
    if args.get("response_type") != "code":
        raise OAuthError(
            "unsupported_response_type", f"Unsupported response type: {args.get('response_type')}"
        )
    challenge = args.get("code_challenge", "")
    if args.get("code_challenge_method") != "S256" or not _PKCE_CHALLENGE.fullmatch(challenge):
        raise OAuthError(
            "invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256"
        )
    prompt = frozenset(args.get("prompt", "").split())
    if not prompt <= _PROMPTS or ("none" in prompt and len(prompt) > 1):
        raise OAuthError("invalid_request", f"Invalid prompt: {args.get('prompt')}")
    max_age: int | None = None
    if args.get("max_age"):
        try:
            max_age = int(args["max_age"])
        except ValueError:
            max_age = -1
        if max_age < 0:
            raise OAuthError("invalid_request", "max_age must be a non-negative integer")
    # A tenant without DPoP ignores the parameter, as it ignores proofs.
    dpop_jkt = (args.get("dpop_jkt") or None) if state.settings.dpop_enabled else None
    if dpop_jkt is not None and not _JWK_THUMBPRINT.fullmatch(dpop_jkt):
        raise OAuthError("invalid_request", "dpop_jkt must be the base64url SHA-256 thumbprint of a JWK")
    audience = args.get("audience") or None
    if audience == state.userinfo_audience:
        audience = None
    requested = args.get("scope", "").split()
    # Without an API audience only OIDC scopes mean anything; the My Account API knows its own scopes only.
    if audience is None:
        scope = _ordered(s for s in requested if s in OIDC_SCOPES)
    elif audience == state.my_account_audience:
        scope = _ordered(s for s in requested if s in OIDC_SCOPES or s in MY_ACCOUNT_SCOPES)
    else:
        scope = _ordered(requested)
    return AuthorizeRequest(
        redirect_uri=args["redirect_uri"],
        state=args.get("state"),
        nonce=args.get("nonce"),
        scope=scope,
        audience=audience,
        code_challenge=challenge,
        prompt=prompt,
        max_age=max_age,
        login_hint=args.get("login_hint"),
        acr_values=tuple(args.get("acr_values", "").split()),
        dpop_jkt=dpop_jkt,
    )


def _verify_totp(user: User, code: str, now: float) -> bool:
    code = code.replace(" ", "")
    # One step either side tolerates the drift between an authenticator app and this clock.
    return code.isdigit() and any(
        pyotp.TOTP(s).verify(code, for_time=now, valid_window=1) for s in user.totp_secrets
    )


def register(app: Flask, state: EmulatorState) -> None:
    """Serve the IdP routes for ``state`` from the emulator's ``app``."""
    app.register_blueprint(IdentityProvider(state).blueprint())


class IdentityProvider:
    """The OpenID Provider of the emulator: its routes, bound to one :class:`~bff.emulator.state.EmulatorState`.

    The views are bound methods registered by :meth:`blueprint`; the other methods are the steps they share
    (login transactions, authorization codes, client authentication, the two grants). All mutable data lives
    in ``state`` and is read and written under ``state.lock``; this object holds nothing else.
    """

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def blueprint(self) -> Blueprint:
        """The routes, in a blueprint named ``emulator_idp`` (the login templates' ``url_for`` names it)."""
        bp = Blueprint("emulator_idp", __name__)
        bp.add_url_rule(
            "/.well-known/openid-configuration", "openid_configuration", self.openid_configuration, methods=["GET"]
        )
        bp.add_url_rule("/.well-known/jwks.json", "jwks", self.jwks, methods=["GET"])
        bp.add_url_rule("/avatars/<user_id>.svg", "avatar", self.avatar, methods=["GET"])
        bp.add_url_rule("/authorize", "authorize", self.authorize, methods=["GET"])
        bp.add_url_rule("/u/login", "login", self.login, methods=["POST"])
        bp.add_url_rule("/u/mfa", "mfa", self.mfa, methods=["POST"])
        bp.add_url_rule("/oauth/token", "token", self.token, methods=["POST"])
        bp.add_url_rule("/oauth/revoke", "revoke", self.revoke, methods=["POST"])
        bp.add_url_rule("/userinfo", "userinfo", self.userinfo, methods=["GET", "POST"])
        bp.add_url_rule("/oidc/logout", "logout", self.logout, methods=["GET", "POST"])
        bp.add_url_rule("/v2/logout", "v2_logout", self.v2_logout, methods=["GET"])
        return bp

    # -- discovery ---------------------------------------------------------------------------------------

    def openid_configuration(self) -> Response:
        issuer = self.state.issuer
        return jsonify(
            issuer=issuer,
            authorization_endpoint=issuer + "authorize",
            token_endpoint=issuer + "oauth/token",
            userinfo_endpoint=issuer + "userinfo",
            jwks_uri=issuer + ".well-known/jwks.json",
            revocation_endpoint=issuer + "oauth/revoke",
            end_session_endpoint=issuer + "oidc/logout",
            scopes_supported=["openid", "profile", "email", "offline_access", *MY_ACCOUNT_SCOPES],
            response_types_supported=["code"],
            response_modes_supported=["query"],
            grant_types_supported=["authorization_code", "refresh_token"],
            code_challenge_methods_supported=["S256"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
            claims_supported=[
                "aud",
                "auth_time",
                "acr",
                "amr",
                "email",
                "email_verified",
                "exp",
                "iat",
                "iss",
                "name",
                "nickname",
                "nonce",
                "picture",
                "sid",
                "sub",
                "updated_at",
            ],
            request_uri_parameter_supported=False,
            backchannel_logout_supported=True,
            backchannel_logout_session_supported=True,
            **self._dpop_metadata(),
        )

    def _dpop_metadata(self) -> dict[str, t.Any]:
        settings = self.state.settings
        return {"dpop_signing_alg_values_supported": list(settings.dpop_signing_algs)} if settings.dpop_enabled else {}

    def jwks(self) -> Response:
        return jsonify(self.state.jwks())

    def avatar(self, user_id: str) -> Response:
        with self.state.lock:
            user = self.state.users.get(f"auth0|{user_id}")
        if user is None:
            return Response(status=404)
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" '
            f'fill="#635dff"/><text x="48" y="62" font-size="44" text-anchor="middle" fill="#fff" '
            f'font-family="sans-serif">{escape(user.name[:1].upper())}</text></svg>'
        )
        return Response(svg, mimetype="image/svg+xml")

    # -- authorization and login -------------------------------------------------------------------------

    def issue_code(self, request_: AuthorizeRequest, session: SsoSession) -> Response:
        now = self.state.clock.now()
        code = secrets.token_urlsafe(32)
        with self.state.lock:
            for stale in [c for c, v in self.state.codes.items() if v.expires_at <= now]:
                del self.state.codes[stale]
            self.state.codes[code] = AuthorizationCode(
                request=request_,
                sub=session.sub,
                sid=session.sid,
                auth_time=session.auth_time,
                mfa_at=session.mfa_at,
                expires_at=now + AUTHORIZATION_CODE_LIFETIME,
            )
        return _redirect(request_.redirect_uri, code=code, state=request_.state)

    def deny(self, tx: LoginTransaction) -> Response:
        with self.state.lock:
            self.state.login_transactions.pop(tx.id, None)
        return _redirect(
            tx.request.redirect_uri,
            error="access_denied",
            error_description="User did not authorize the request",
            state=tx.request.state,
        )

    def login_form(
        self, tx: LoginTransaction, *, email: str = "", error: str | None = None, status: int = 200
    ) -> Response:
        html = render_template(
            "login.html",
            tx=tx.id,
            email=email or tx.request.login_hint or "",
            error=error,
            demo_credentials=self.state.config.show_demo_credentials,
        )
        return Response(html, status=status)

    def mfa_form(self, tx: LoginTransaction, *, error: str | None = None, status: int = 200) -> Response:
        with self.state.lock:
            user = self.state.users[t.cast(str, tx.sub)]
        return Response(render_template("mfa.html", tx=tx.id, email=user.email, error=error), status=status)

    def transaction(self, tx_id: str) -> LoginTransaction | None:
        with self.state.lock:
            tx = self.state.login_transactions.get(tx_id)
            if tx is not None and tx.expires_at <= self.state.clock.now():
                del self.state.login_transactions[tx_id]
                return None
            return tx

    def finish_login(self, tx: LoginTransaction, user: User, *, mfa_at: float | None) -> Response:
        """Record the interactive login on this browser's SSO session, then issue the code."""
        now = self.state.clock.now()
        current = self.state.sso_session_by_cookie(request.cookies.get(SSO_COOKIE))
        if current is not None and current.sub != user.sub:
            # Another user was logged in on this browser: that session ends, as at Auth0.
            self.state.end_sso_session(current.sid)
            current = None
        with self.state.lock:
            self.state.login_transactions.pop(tx.id, None)
            if current is not None:
                current.auth_time = now
                current.mfa_at = mfa_at or current.mfa_at
        session = current or self.state.create_sso_session(user.sub, auth_time=now, mfa_at=mfa_at)
        response = self.issue_code(tx.request, session)
        response.set_cookie(
            SSO_COOKIE, session.cookie, httponly=True, secure=request.is_secure, samesite="Lax", path="/"
        )
        return response

    def authorize(self) -> Response:
        args = request.args
        if args.get("client_id") != self.state.client_id:
            return _page("Unknown client", f"Unknown client: {args.get('client_id')}", 400)
        if args.get("redirect_uri") != self.state.config.redirect_uri:
            return _page(
                "Callback URL mismatch",
                f"{args.get('redirect_uri')} is not in the list of Allowed Callback URLs.",
                400,
            )
        try:
            request_ = _parse_authorize(self.state, args)
        except OAuthError as exc:
            return _redirect(
                args["redirect_uri"],
                error=exc.error,
                error_description=exc.description,
                state=args.get("state"),
            )

        now = self.state.clock.now()
        settings = self.state.settings
        session = self.state.sso_session_by_cookie(request.cookies.get(SSO_COOKIE))
        with self.state.lock:
            user = self.state.users.get(session.sub) if session else None
        # What the SSO session cannot provide, with the error prompt=none answers instead of asking.
        need: tuple[str, str] | None = None
        if (
            session is None
            or user is None
            or "login" in request_.prompt
            or (request_.max_age is not None and now - session.auth_time > request_.max_age)
        ):
            need = ("login", "login_required")
        elif (
            settings.default_policy_mfa
            and not user.has_second_factor
            and now - session.auth_time > DEFAULT_POLICY_WINDOW
        ):
            need = ("login", "unmet_authentication_requirements")
        elif _mfa_pending(settings, request_, user, session.mfa_at, now):
            need = ("mfa", "interaction_required")

        if need is None:
            return self.issue_code(request_, t.cast(SsoSession, session))
        step, silent_error = need
        if "none" in request_.prompt:
            return _redirect(
                request_.redirect_uri,
                error=silent_error,
                error_description="The user must authenticate interactively",
                state=request_.state,
            )
        tx = LoginTransaction(
            id=secrets.token_urlsafe(24), request=request_, expires_at=now + LOGIN_TRANSACTION_LIFETIME
        )
        if step == "mfa":
            tx.sub = t.cast(User, user).sub
        with self.state.lock:
            for stale in [k for k, v in self.state.login_transactions.items() if v.expires_at <= now]:
                del self.state.login_transactions[stale]
            self.state.login_transactions[tx.id] = tx
        return self.mfa_form(tx) if step == "mfa" else self.login_form(tx)

    def login(self) -> Response:
        tx = self.transaction(request.form.get("tx", ""))
        if tx is None:
            return _page(*_LOGIN_EXPIRED, 400)
        if request.form.get("action") == "deny":
            return self.deny(tx)
        email = request.form.get("email", "")
        user = self.state.user_by_email(email)
        password = request.form.get("password", "")
        with self.state.lock:
            expected = user.password if user is not None else None
        # A user without a password (deleted through the My Account API) is refused like a wrong password;
        # the comparison runs either way so the answer takes as long.
        matches = hmac.compare_digest(password.encode(), (expected or "").encode())
        if user is None or expected is None or not matches:
            return self.login_form(tx, email=email, error="Wrong email or password.", status=400)
        if _mfa_pending(self.state.settings, tx.request, user, None, self.state.clock.now()):
            with self.state.lock:
                tx.sub = user.sub
            return self.mfa_form(tx)
        return self.finish_login(tx, user, mfa_at=None)

    def mfa(self) -> Response:
        tx = self.transaction(request.form.get("tx", ""))
        if tx is None or tx.sub is None:
            return _page(*_LOGIN_EXPIRED, 400)
        if request.form.get("action") == "deny":
            return self.deny(tx)
        with self.state.lock:
            user = self.state.users[tx.sub]
        now = self.state.clock.now()
        if not _verify_totp(user, request.form.get("otp", ""), now):
            return self.mfa_form(tx, error="Wrong or expired code.", status=400)
        return self.finish_login(tx, user, mfa_at=now)

    # -- token endpoint ----------------------------------------------------------------------------------

    def token_params(self) -> dict[str, str]:
        """Form or JSON body (Auth0 takes both); reading it here also drains the socket before any latency."""
        if request.is_json:
            body = request.get_json(silent=True)
            return {k: v for k, v in body.items() if isinstance(v, str)} if isinstance(body, dict) else {}
        return request.form.to_dict()

    def client_authenticated(self, params: dict[str, str]) -> bool:
        """client_secret_basic (form-urlencoded id and secret, RFC 6749 2.3.1) or client_secret_post."""
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            client_id, secret = unquote_plus(auth.username or ""), unquote_plus(auth.password or "")
        else:
            client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        return hmac.compare_digest(client_id.encode(), self.state.client_id.encode()) and hmac.compare_digest(
            secret.encode(), self.state.client_secret.encode()
        )

    def token_proof(self, settings: TokenSettings) -> Proof | None:
        """The request's DPoP proof, checked for this token endpoint; ``None`` when it carries none.

        Refused proofs raise :class:`OAuthError`: 400 ``invalid_dpop_proof``, or 400 ``use_dpop_nonce`` with
        the nonce in ``DPoP-Nonce`` (demonstrating-proof-of-possession-dpop.md, "Public clients"). Without a
        proof, an application that requires sender-constraining is refused with ``invalid_dpop_proof`` too.
        Checked before the grant, so a nonce challenge spends no authorization code and rotates no token.
        """
        values = request.headers.getlist("DPoP")
        if not settings.dpop_enabled:
            return None  # a tenant without DPoP ignores the header
        if not values:
            if settings.require_proof_of_possession:
                raise OAuthError(
                    INVALID_DPOP_PROOF, "This application requires sender-constrained tokens: send a DPoP proof"
                )
            return None
        try:
            return self.state.dpop_guards["token_endpoint"].check(
                values,
                method=request.method,
                url=self.state.issuer + request.path.lstrip("/"),
                algorithms=settings.dpop_signing_algs,
                nonce_required=settings.dpop_nonce,
            )
        except ProofError as exc:
            headers = {"DPoP-Nonce": exc.nonce} if exc.nonce is not None else None
            raise OAuthError(exc.error, exc.description, headers=headers) from None

    def exchange_code(self, params: dict[str, str], settings: TokenSettings, proof: Proof | None = None) -> _Grant:
        now = self.state.clock.now()
        with self.state.lock:
            # Popped before any check: a code is good for one attempt only.
            code = self.state.codes.pop(params.get("code", ""), None)
            if code is None or code.expires_at <= now:
                raise OAuthError("invalid_grant", "Invalid authorization code")
            if params.get("redirect_uri") != code.request.redirect_uri:
                raise OAuthError("invalid_grant", "The redirect_uri does not match the authorization request")
            verifier = params.get("code_verifier", "")
            if not verifier or not hmac.compare_digest(pkce_s256(verifier), code.request.code_challenge):
                raise OAuthError("invalid_grant", "Failed to verify code verifier")
            bound = code.request.dpop_jkt
            if bound is not None and proof is None:
                raise OAuthError(
                    INVALID_DPOP_PROOF, "The authorization request named a DPoP key (dpop_jkt): send a proof with it"
                )
            if bound is not None and proof is not None and not hmac.compare_digest(proof.jkt, bound):
                raise OAuthError(INVALID_DPOP_PROOF, "The DPoP proof's key does not match dpop_jkt")
            user = self.state.users.get(code.sub)
            if user is None:
                raise OAuthError("invalid_grant", "The user no longer exists")
            audience = code.request.audience or self.state.userinfo_audience
            scope = code.request.scope
            _check_default_policy(
                self.state,
                settings,
                user,
                audience=audience,
                scope=scope,
                auth_time=code.auth_time,
                mfa_at=code.mfa_at,
                now=now,
            )
            refresh_token = None
            if "offline_access" in scope:
                family = RefreshFamily(
                    id="rtf_" + secrets.token_hex(8),
                    sub=user.sub,
                    sid=code.sid,
                    audience=audience,
                    scope=scope,
                    auth_time=code.auth_time,
                    mfa_at=code.mfa_at,
                    created_at=now,
                    last_used_at=now,
                    jkt=proof.jkt if proof is not None else None,
                )
                self.state.families[family.id] = family
                refresh_token = self.state.new_refresh_token(family)
            id_claims = None
            if "openid" in scope:
                id_claims = _id_token_claims(
                    self.state,
                    settings,
                    user,
                    scope=scope,
                    sid=code.sid,
                    auth_time=code.auth_time,
                    nonce=code.request.nonce,
                    amr=["pwd", "mfa"] if code.mfa_at is not None else ["pwd"],
                )
        return _Grant(user.sub, audience, scope, id_claims, refresh_token, proof.jkt if proof else None)

    def refresh_target(
        self, params: dict[str, str], settings: TokenSettings, family: RefreshFamily
    ) -> tuple[str, tuple[str, ...]]:
        """Audience and scope of a refresh, by the MRRT rules.

        The login's audience allows the login's scopes plus its policy's; another audience allows the
        policy's scopes plus the OIDC ones the login got. An audience that no policy names is ignored
        silently, together with its scopes, and the login's audience answers
        (configure-and-implement-multi-resource-refresh-token.md).
        """
        audience = params.get("audience") or family.audience
        policy = settings.policy_for(audience)
        if audience == family.audience:
            allowed = _ordered((*family.scope, *(policy.scope if policy else ())))
        elif policy is not None:
            allowed = _ordered((*(s for s in family.scope if s in OIDC_SCOPES), *policy.scope))
        else:
            return family.audience, family.scope
        requested = params.get("scope", "").split()
        return audience, _ordered(s for s in requested if s in allowed) if requested else allowed

    def exchange_refresh_token(
        self, params: dict[str, str], settings: TokenSettings, proof: Proof | None = None
    ) -> _Grant:
        """A refresh (also an MRRT exchange, with ``audience``).

        A DPoP-bound family needs a proof made with its key (demonstrating-proof-of-possession-dpop.md,
        Step 6), else 400 ``invalid_dpop_proof``; that is checked before reuse detection, so a request
        without the key neither rotates the token nor revokes its family. A proof on an unbound family
        binds the new access token only: a family's binding is fixed when the login's tokens are issued.
        """
        now = self.state.clock.now()
        token = params.get("refresh_token", "")
        if not token:
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        # One answer for an unknown, expired, revoked or reused token: 403 (refresh-token.md), in Auth0's words.
        invalid = OAuthError("invalid_grant", "Unknown or invalid refresh token.", 403)
        with self.state.lock:
            record = self.state.refresh_tokens.get(token)
            if record is None or record.family.revoked:
                raise invalid
            family = record.family
            absolute, idle = settings.refresh_token_lifetime, settings.refresh_token_idle_lifetime
            if (absolute is not None and now - family.created_at > absolute) or (
                idle is not None and now - family.last_used_at > idle
            ):
                raise invalid
            if family.jkt is not None and proof is None:
                raise OAuthError(
                    INVALID_DPOP_PROOF, "The refresh token is DPoP-bound: send a proof made with its key"
                )
            if family.jkt is not None and proof is not None and not hmac.compare_digest(proof.jkt, family.jkt):
                raise OAuthError(INVALID_DPOP_PROOF, "The DPoP proof's key is not the refresh token's key")
            if record.rotated_at is not None:
                # Reuse detection (refresh-token-rotation.md): a token already exchanged revokes the family,
                # unless it is the one exchanged last and the overlap period has not run out.
                in_overlap = (
                    settings.leeway > 0
                    and token == family.previous
                    and now - record.rotated_at <= settings.leeway
                )
                if not in_overlap:
                    family.revoked = True
                    family.reuse_detected = True
                    raise invalid
            user = self.state.users.get(family.sub)
            if user is None:
                raise invalid
            audience, scope = self.refresh_target(params, settings, family)
            _check_default_policy(
                self.state,
                settings,
                user,
                audience=audience,
                scope=scope,
                auth_time=family.auth_time,
                mfa_at=family.mfa_at,
                now=now,
            )
            family.last_used_at = now
            new_token = None
            if settings.rotation:
                if record.rotated_at is None:
                    record.rotated_at = now
                family.previous = token
                new_token = self.state.new_refresh_token(family)
            id_claims = None
            if "openid" in scope:
                # No amr on refreshed ID tokens (configure-step-up-authentication-for-web-apps.md).
                id_claims = _id_token_claims(
                    self.state,
                    settings,
                    user,
                    scope=scope,
                    sid=family.sid,
                    auth_time=family.auth_time,
                    nonce=None,
                    amr=None,
                )
        return _Grant(user.sub, audience, scope, id_claims, new_token, proof.jkt if proof else None)

    def token(self) -> Response:
        """``/oauth/token``: injected holds (latency, a hang), then the grant.

        A request whose client hung up while it was held is dropped unprocessed, unless the hold says to
        process it anyway (an IdP that catches up after a stall: the outcome exists, its client never saw it).
        The state hears when the request has arrived and when it is over, so tests can wait for either
        moment (:meth:`~bff.emulator.state.EmulatorState.wait_for_token_requests`).
        """
        params = self.token_params()
        self.state.token_request_received()
        dropped = abandoned = False
        try:
            hold = self.state.hold_token_request()
            if hold.held and client_disconnected(request.environ):
                if not hold.process_abandoned:
                    dropped = True
                    # Nobody is listening; 499 is nginx's "client closed request" and only shows in logs.
                    return Response(status=499)
                abandoned = True
            return self.answer_token(params)
        finally:
            # However the request ends, also by an unexpected error: a test waiting for it never hangs.
            self.state.token_request_done(dropped=dropped, abandoned=abandoned)

    def answer_token(self, params: dict[str, str]) -> Response:
        """The token endpoint's answer once the request is processed: injected fault, client check, grant."""
        grant_type = params.get("grant_type", "")
        fault = self.state.begin_token_call(grant_type, params.get("refresh_token"))
        if fault is not None:
            extra = mfa_required().extra if fault.error == "mfa_required" else None
            return _oauth_error(fault.status, fault.error, fault.description, extra)
        if not self.client_authenticated(params):
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        settings = self.state.settings
        try:
            proof = self.token_proof(settings)
            if grant_type == "authorization_code":
                grant = self.exchange_code(params, settings, proof)
            elif grant_type == "refresh_token":
                grant = self.exchange_refresh_token(params, settings, proof)
            else:
                raise OAuthError("unsupported_grant_type", f"Unsupported grant type: {grant_type}")
        except OAuthError as exc:
            response = _oauth_error(exc.status, exc.error, exc.description, exc.extra, exc.headers)
            return self.with_dpop_nonce(response, settings)

        scope = " ".join(grant.scope)
        # A DPoP-bound access token names its key (cnf.jkt) and is of type DPoP (Step 4).
        token_type = "DPoP" if grant.jkt is not None else "Bearer"
        access_token = self.state.mint_access_token(
            sub=grant.sub,
            audience=grant.audience,
            scope=scope,
            lifetime=settings.access_token_lifetime,
            extra_claims={"cnf": {"jkt": grant.jkt}} if grant.jkt is not None else None,
        )
        body: dict[str, t.Any] = {
            "access_token": access_token,
            "token_type": token_type,
            "expires_in": settings.access_token_lifetime,
            "scope": scope,
        }
        if grant.id_token_claims is not None:
            body["id_token"] = self.state.sign(grant.id_token_claims)
        if grant.refresh_token is not None:
            body["refresh_token"] = grant.refresh_token
        self.state.record_issued(
            IssuedTokens(
                grant_type=grant_type,
                sub=grant.sub,
                audience=grant.audience,
                scope=scope,
                token_type=token_type,
                jkt=grant.jkt,
                access_token=access_token,
                refresh_token=grant.refresh_token,
                issued_at=self.state.clock.now(),
            )
        )
        response = jsonify(body)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return self.with_dpop_nonce(response, settings)

    def with_dpop_nonce(self, response: Response, settings: TokenSettings) -> Response:
        """While the token endpoint wants nonces, every answer names the current one (RFC 9449 section 8.2),
        so a client learns it from any answer, not only from a challenge."""
        if settings.dpop_nonce:
            response.headers.setdefault("DPoP-Nonce", self.state.dpop_nonce("token_endpoint"))
        return response

    def revoke(self) -> Response:
        params = self.token_params()
        if not self.client_authenticated(params):
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        token = params.get("token")
        if not token:
            return _oauth_error(400, "invalid_request", "Missing required parameter: token")
        with self.state.lock:
            record = self.state.refresh_tokens.get(token)
            if record is not None:
                record.family.revoked = True
        # 200 with an empty body, also for a token we do not know (revoke-refresh-token.md, RFC 7009).
        return Response(status=200)

    # -- userinfo ----------------------------------------------------------------------------------------

    def userinfo(self) -> Response:
        """``/userinfo`` with a Bearer token, or a DPoP-bound one with the ``DPoP`` scheme and a proof (the
        example of demonstrating-proof-of-possession-dpop.md, Step 5). It never asks for a DPoP nonce."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        unauthorized = Response(
            "Unauthorized", status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
        if scheme not in ("bearer", "dpop") or not token:
            return unauthorized
        try:
            claims = self.state.verify_access_token(token)
        except InvalidAccessToken:
            return unauthorized
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        with self.state.lock:
            user = self.state.users.get(str(claims.get("sub")))
        if self.state.userinfo_audience not in audiences or user is None:
            return unauthorized
        settings = self.state.settings
        try:
            check_resource_request(
                self.state.userinfo_dpop,
                scheme=scheme,
                token=token,
                claims=claims,
                proofs=request.headers.getlist("DPoP"),
                method=request.method,
                url=self.state.issuer + request.path.lstrip("/"),
                algorithms=settings.dpop_signing_algs,
                nonce_required=False,
            )
        except ResourceAuthError as exc:
            return Response("Unauthorized", status=401, headers=exc.headers(settings.dpop_signing_algs))
        return jsonify(sub=user.sub, **_profile_claims(self.state, user, str(claims.get("scope", "")).split()))

    # -- logout ------------------------------------------------------------------------------------------

    def allowed_logout_url(self, url: str) -> bool:
        """Whether ``url`` is one of the Allowed Logout URLs, character for character."""
        return url in self.state.config.logout_urls

    def end_browser_session(self, *sids: str | None) -> None:
        """End the SSO sessions named, and this browser's, each with its back-channel logout."""
        browser_session = self.state.sso_session_by_cookie(request.cookies.get(SSO_COOKIE))
        for sid in {sid for sid in (*sids, browser_session and browser_session.sid) if sid}:
            self.state.end_sso_session(sid)

    def logged_out(self, redirect_to: str | None, **params: str | None) -> Response:
        """The answer once logged out: the redirect, or a page; either way the SSO cookie goes."""
        response = (
            _redirect(redirect_to, **params) if redirect_to else _page("Logged out", "You are logged out.", 200)
        )
        response.delete_cookie(SSO_COOKIE, path="/")
        return response

    def logout(self) -> Response:
        """``/oidc/logout`` (oidc-logout.md): RP-initiated logout.

        ``post_logout_redirect_uri`` must be an Allowed Logout URL; without one, a request naming the client
        goes to the first Allowed Logout URL. A refused request ends no session.
        """
        params = request.values
        client_id = params.get("client_id")
        if client_id is not None and client_id != self.state.client_id:
            return _page("Logout failed", "Unknown client_id.", 400)
        hint_sid: str | None = None
        if params.get("id_token_hint"):
            try:
                hint = self.state.verify_signature(params["id_token_hint"])
            except InvalidAccessToken:
                return _page("Logout failed", "Invalid id_token_hint.", 400)
            if hint.get("aud") != self.state.client_id:
                return _page("Logout failed", "The id_token_hint was issued to another client.", 400)
            hint_sid = hint.get("sid")
        logout_hint = params.get("logout_hint")
        if logout_hint and hint_sid and logout_hint != hint_sid:
            return _page("Logout failed", "logout_hint does not match the sid of id_token_hint.", 400)
        redirect_to = params.get("post_logout_redirect_uri")
        if redirect_to and not self.allowed_logout_url(redirect_to):
            return _page("Logout failed", f"{redirect_to} is not in the list of Allowed Logout URLs.", 400)
        if not redirect_to and client_id is not None:
            redirect_to = next(iter(self.state.config.logout_urls), None)

        self.end_browser_session(hint_sid or logout_hint)
        return self.logged_out(redirect_to, state=params.get("state"))

    def v2_logout(self) -> Response:
        """Auth0's own ``/v2/logout``: ends this browser's SSO session, then goes to ``returnTo``.

        ``returnTo`` must be an Allowed Logout URL; without it, a request naming the client goes to the first
        Allowed Logout URL. ``federated`` changes nothing: the emulator's users have no upstream identity
        provider to log out of. A refused request ends no session.
        """
        params = request.args
        client_id = params.get("client_id")
        if client_id is not None and client_id != self.state.client_id:
            return _page("Logout failed", "Unknown client_id.", 400)
        return_to = params.get("returnTo")
        if return_to and not self.allowed_logout_url(return_to):
            return _page(
                "Logout failed",
                f'The "returnTo" querystring parameter "{return_to}" is not defined as a valid URL in '
                '"Allowed Logout URLs".',
                400,
            )
        if not return_to and client_id is not None:
            return_to = next(iter(self.state.config.logout_urls), None)
        self.end_browser_session()
        return self.logged_out(return_to)
