"""Calls to the IdP's token and revocation endpoints, through authlib, with typed outcomes.

Failures are classified by their OAuth error code, never by message text:

* ``invalid_grant`` — the refresh token is dead (revoked, expired, reused): the session ends.
* ``mfa_required``, ``unmet_authentication_requirements`` and the interaction errors — the
  user must log in again with more assurance (step-up): a distinct 401.
* a transport error before the request was sent, a 5xx or ``temporarily_unavailable`` — the IdP
  is having a bad moment: 502/503, and the session and its refresh token are kept.
* a timeout waiting for the answer, or a connection broken after the request was sent —
  ``ambiguous``: the IdP may have processed the request (and rotated the refresh token) or not.
  The caller must not simply retry with the same refresh token (see the token manager).
* anything else (``invalid_client``, ``invalid_scope``, ...) — misconfiguration: 502.

With DPoP (a session's key passed as ``dpop``) every grant carries a fresh proof; a ``use_dpop_nonce``
answer (400, nothing processed) is retried once with the nonce it carries, and the latest nonce is
remembered for the next call, so a steady state needs no retry.
"""

from __future__ import annotations

import functools
import json
import logging
import typing as t
from dataclasses import dataclass

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

from ..clock import Clock
from ..dpop import DpopKey, NonceMemory
from ..settings import Settings

__all__ = ["TokenClient", "TokenFailure", "TokenSet"]

log = logging.getLogger(__name__)

FailureKind = t.Literal["invalid_grant", "step_up", "unavailable", "ambiguous", "server_error", "rejected"]

_STEP_UP_ERRORS = {
    "mfa_required",
    "unmet_authentication_requirements",
    "interaction_required",
    "login_required",
    "consent_required",
}
_TRANSIENT_ERRORS = {"temporarily_unavailable", "too_many_requests"}
_FORM_HEADERS = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}


@dataclass(frozen=True)
class TokenSet:
    """A successful token response. ``expires_at`` is computed with the BFF's own clock."""

    access_token: str
    expires_at: float
    scope: str
    refresh_token: str | None
    id_token: str | None
    token_type: str = "Bearer"  # noqa: S105 - a scheme name

    @property
    def dpop_bound(self) -> bool:
        """Whether the IdP bound the tokens to the proof's key (``token_type`` ``DPoP``)."""
        return self.token_type.lower() == "dpop"


@dataclass(frozen=True)
class TokenFailure:
    """A token-endpoint call that did not produce tokens, classified for the caller."""

    kind: FailureKind
    error: str
    description: str
    status: int = 0
    retry_after: str | None = None


def _classify(status: int, error: str, description: str, retry_after: str | None) -> TokenFailure:
    kind: FailureKind
    if error == "invalid_grant":
        kind = "invalid_grant"
    elif error in _STEP_UP_ERRORS:
        kind = "step_up"
    elif error in _TRANSIENT_ERRORS or status == 429 or status == 503:
        kind = "unavailable"
    elif error == "server_error" or status >= 500:
        kind = "server_error"
    else:
        kind = "rejected"
    return TokenFailure(kind, error, description, status, retry_after)


def _never_sent(error: requests.ConnectionError) -> bool:
    """Whether the connection failed before any byte of the request left (so nothing was processed)."""
    pending: list[object] = [error]
    seen = 0
    while pending and seen < 16:
        cause = pending.pop()
        seen += 1
        if isinstance(cause, NewConnectionError | NameResolutionError | ConnectionRefusedError):
            return True
        if isinstance(cause, MaxRetryError):
            pending.append(cause.reason)
        if isinstance(cause, BaseException):
            pending.extend(arg for arg in cause.args if isinstance(arg, BaseException))
            pending.extend(c for c in (cause.__cause__, cause.__context__) if c is not None)
    return False


class TokenClient:
    """The BFF's only door to ``/oauth/token`` and ``/oauth/revoke``."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self.nonces = NonceMemory()

    def _session(self) -> OAuth2Session:
        # One authlib session per call: its token state is per-session and must not be shared
        # between threads refreshing different users.
        return OAuth2Session(
            self._settings.client_id,
            self._settings.client_secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
            revocation_endpoint_auth_method="client_secret_post",
            default_timeout=self._settings.token_timeout,
        )

    def exchange_code(
        self, endpoint: str, *, code: str, code_verifier: str, redirect_uri: str, dpop: DpopKey | None = None
    ) -> TokenSet | TokenFailure:
        """Authorization code + PKCE exchange; with ``dpop``, proved with (and bound to) that key."""
        with self._session() as session:
            return self._proved(
                endpoint,
                dpop,
                lambda headers: session.fetch_token(
                    endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    redirect_uri=redirect_uri,
                    timeout=self._settings.token_timeout,
                    headers=headers,
                ),
                session,
            )

    def refresh(
        self,
        endpoint: str,
        refresh_token: str,
        *,
        audience: str | None,
        scope: str | None,
        dpop: DpopKey | None = None,
    ) -> TokenSet | TokenFailure:
        """A refresh-token grant; with ``audience`` and ``scope`` it is an MRRT exchange; with ``dpop``,
        proved with the key the refresh token is bound to."""
        params: dict[str, str] = {}
        if audience:
            # Auth0 names the API ``audience``; standard providers take RFC 8707's ``resource``.
            params[self._settings.resource_parameter] = audience
        if scope:
            params["scope"] = scope
        with self._session() as session:
            return self._proved(
                endpoint,
                dpop,
                lambda headers: session.refresh_token(
                    endpoint,
                    refresh_token=refresh_token,
                    timeout=self._settings.token_timeout,
                    headers=headers,
                    **params,
                ),
                session,
            )

    def _proved(
        self,
        endpoint: str,
        dpop: DpopKey | None,
        call: t.Callable[[dict[str, str] | None], t.Any],
        session: OAuth2Session,
    ) -> TokenSet | TokenFailure:
        """One grant; with a key, a fresh proof each attempt and one retry for a nonce challenge.

        A ``use_dpop_nonce`` answer means the grant was not processed (the refresh token was not
        redeemed), so the retry is safe; a second challenge in a row is not retried again.
        """
        if dpop is None:
            return self._call(lambda: call(None), session, endpoint)
        result: TokenSet | TokenFailure | None = None
        for _attempt in range(2):
            nonce = self.nonces.get(endpoint)
            proof = dpop.proof("POST", endpoint, now=self._clock.now(), nonce=nonce)
            headers = {**_FORM_HEADERS, "DPoP": proof}
            result = self._call(functools.partial(call, headers), session, endpoint)
            if not (
                isinstance(result, TokenFailure)
                and result.error == "use_dpop_nonce"
                and self.nonces.get(endpoint) not in (None, nonce)
            ):
                break
        assert result is not None
        return result

    def revoke(self, endpoint: str, refresh_token: str) -> bool:
        """Revoke a refresh token (and, at Auth0, its family). Best effort; returns success."""
        with self._session() as session:
            try:
                response = session.revoke_token(
                    endpoint,
                    token=refresh_token,
                    token_type_hint="refresh_token",  # noqa: S106 - a hint name
                    timeout=self._settings.token_timeout,
                )
            except requests.RequestException as error:
                log.warning("refresh token revocation failed: %s", type(error).__name__)
                return False
            return bool(response.status_code == 200)

    def _call(self, call: t.Callable[[], t.Any], session: OAuth2Session, endpoint: str) -> TokenSet | TokenFailure:
        # authlib parses the response before returning; the hooks keep what classification needs.
        seen: list[requests.Response] = []

        def remember(response: requests.Response) -> requests.Response:
            seen.append(response)
            return response

        session.register_compliance_hook("access_token_response", remember)
        session.register_compliance_hook("refresh_token_response", remember)
        def status() -> int:
            return seen[-1].status_code if seen else 0

        try:
            token = call()
        except OAuthError as error:
            if seen:
                self.nonces.remember(endpoint, seen[-1].headers.get("DPoP-Nonce"))
            retry_after = seen[-1].headers.get("Retry-After") if seen else None
            return _classify(status(), str(error.error), str(error.description or ""), retry_after)
        except requests.ConnectTimeout:
            return TokenFailure("unavailable", "unreachable", "The token endpoint could not be reached.")
        except requests.Timeout:
            return TokenFailure("ambiguous", "timeout", "The token endpoint did not answer in time.")
        except requests.ConnectionError as error:
            if _never_sent(error):
                return TokenFailure("unavailable", "unreachable", "The token endpoint could not be reached.")
            return TokenFailure("ambiguous", "connection-broken", "The connection broke before the answer came.")
        except (requests.RequestException, json.JSONDecodeError, ValueError):
            code = status()
            if code == 0:
                return TokenFailure("unavailable", "unreachable", "The token endpoint could not be reached.")
            return _classify(code, "server_error", f"The token endpoint answered HTTP {code}.", None)
        code = status()
        if seen:
            self.nonces.remember(endpoint, seen[-1].headers.get("DPoP-Nonce"))
        if code >= 400:
            return _classify(code, "server_error", f"The token endpoint answered HTTP {code}.", None)
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            return TokenFailure("server_error", "invalid_response", "The token response had no access token.")
        try:
            expires_in = float(token.get("expires_in", 0))
        except (TypeError, ValueError):
            expires_in = 0.0
        return TokenSet(
            access_token=access_token,
            expires_at=self._clock.now() + max(expires_in, 0.0),
            scope=str(token.get("scope") or ""),
            refresh_token=token.get("refresh_token") or None,
            id_token=token.get("id_token") or None,
            token_type=str(token.get("token_type") or "Bearer"),
        )
