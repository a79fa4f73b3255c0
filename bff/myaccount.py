"""The one My Account API client: a token for the call's scope, the call, and one retry policy.

Used by the proxy and by the connected-accounts flow alike, so both behave the same way when the API
refuses a token the BFF believed good (revoked, clock skew, consent or policy changed since it was
minted): one fresh token and one retry, never two. A second 401 asks the user to log in again; a
second ``insufficient_scope`` asks for step-up.

With DPoP (a session whose record holds a key) every call carries ``Authorization: DPoP <token>`` and a
fresh proof (``htm``, ``htu``, ``ath``); a ``use_dpop_nonce`` challenge is answered once with the
nonce it carries, which is remembered so that the next calls need no challenge. That retry is not a
refusal of the token and does not count against the one token retry.

Failures come back as values (:data:`CallFailure`); :func:`call_problem` is the one place that turns
them, and token refusals, into problems with a login URL that returns the user to ``return_to``.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from urllib.parse import urlencode

from .clock import Clock
from .dpop import NonceMemory, SessionKeys
from .errors import Problem, ProblemKind
from .proxy.forward import Forwarder, UpstreamFailure, UpstreamResponse
from .session import LiveSession
from .tokens.manager import AccessToken, RefusalReason, TokenManager, TokenRefusal

__all__ = ["MFA_ACR", "CallFailure", "MyAccountClient", "RefusedTwice", "call_problem", "login_url"]

MFA_ACR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"


@dataclass(frozen=True)
class RefusedTwice:
    """The API refused a freshly minted token too: the user has to log in (again, or with step-up)."""

    insufficient_scope: bool
    scope: str


CallFailure = TokenRefusal | UpstreamFailure | RefusedTwice


def login_url(return_to: str, *, step_up: bool = False) -> str:
    """``/bff/login`` returning to ``return_to``; with ``step_up``, asking the IdP for MFA."""
    params = {"returnTo": return_to}
    if step_up:
        params["acr_values"] = MFA_ACR
    return "/bff/login?" + urlencode(params)


_REFUSALS: dict[RefusalReason, ProblemKind] = {
    RefusalReason.SESSION_ENDED: ProblemKind.LOGIN_REQUIRED,
    RefusalReason.STEP_UP_REQUIRED: ProblemKind.STEP_UP_REQUIRED,
    RefusalReason.IDP_UNAVAILABLE: ProblemKind.IDP_UNAVAILABLE,
    RefusalReason.IDP_ERROR: ProblemKind.IDP_ERROR,
    RefusalReason.IDP_REJECTED: ProblemKind.IDP_REJECTED,
    RefusalReason.AUDIENCE_MISMATCH: ProblemKind.TOKEN_AUDIENCE_MISMATCH,
    RefusalReason.SCOPE_MISMATCH: ProblemKind.TOKEN_SCOPE_MISMATCH,
    RefusalReason.BUSY: ProblemKind.TOKEN_BUSY,
    RefusalReason.REFRESH_INTERRUPTED: ProblemKind.REFRESH_INTERRUPTED,
    RefusalReason.STORE_UNAVAILABLE: ProblemKind.STORE_UNAVAILABLE,
}


def call_problem(failure: CallFailure, return_to: str) -> Problem:
    """The problem an API caller gets for ``failure``; login URLs come back to ``return_to``."""
    if isinstance(failure, TokenRefusal):
        kind = _REFUSALS[failure.reason]
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        url = None
        if kind in (ProblemKind.LOGIN_REQUIRED, ProblemKind.REFRESH_INTERRUPTED):
            url = login_url(return_to)
        elif kind is ProblemKind.STEP_UP_REQUIRED:
            url = login_url(return_to, step_up=True)
        return Problem(kind, failure.detail, headers=headers, login_url=url)
    if isinstance(failure, UpstreamFailure):
        kind = ProblemKind.UPSTREAM_TIMEOUT if failure.status == 504 else ProblemKind.UPSTREAM_UNAVAILABLE
        return Problem(kind, failure.detail)
    if failure.insufficient_scope:
        return Problem(
            ProblemKind.STEP_UP_REQUIRED,
            f"The My Account API requires {failure.scope}, which a new login may grant.",
            login_url=login_url(return_to, step_up=True),
            required_scope=failure.scope,
        )
    return Problem(
        ProblemKind.LOGIN_REQUIRED,
        "The My Account API rejected the session's tokens.",
        login_url=login_url(return_to),
    )


def _refused(upstream: UpstreamResponse | UpstreamFailure) -> bool:
    return isinstance(upstream, UpstreamResponse) and (upstream.status == 401 or upstream.insufficient_scope)


class MyAccountClient:
    """Calls the My Account API for a session; see the module docstring."""

    def __init__(self, tokens: TokenManager, forwarder: Forwarder, dpop_keys: SessionKeys, clock: Clock) -> None:
        self._tokens = tokens
        self._forwarder = forwarder
        self._dpop_keys = dpop_keys
        self._clock = clock
        self.nonces = NonceMemory()

    def credentials(self, session: LiveSession, token: AccessToken, method: str, path: str) -> dict[str, str]:
        """The headers that authorize one call with ``token``: Bearer, or DPoP with a fresh proof.

        Security: the values are secrets (a token, a proof); they go upstream only, never to the browser
        or a log line.
        """
        key = self._dpop_keys.open(session.sealed_dpop_key)
        if key is None:
            return {"authorization": "Bearer " + token.token}
        url = self._forwarder.url(path)
        proof = key.proof(method, url, now=self._clock.now(), nonce=self.nonces.get(url), access_token=token.token)
        return {"authorization": "DPoP " + token.token, "dpop": proof}

    def target(self, path: str, query: str) -> str:
        """The request target a call of ``path`` and ``query`` sends upstream (for an offloaded call)."""
        return self._forwarder.target(path, query)

    def call(
        self,
        session: LiveSession,
        scope: str,
        method: str,
        path: str,
        query: str,
        headers: t.Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse | CallFailure:
        """Send one call with a token covering ``scope``; refresh and retry once if the token is refused."""
        refused: AccessToken | None = None
        challenged = False
        while True:
            token = self._tokens.access_token(session, scope, refused=refused)
            if isinstance(token, TokenRefusal):
                return token
            upstream = self._forwarder.send(
                method, path, query, headers, body, self.credentials(session, token, method, path)
            )
            if isinstance(upstream, UpstreamResponse) and upstream.dpop_nonce:
                self.nonces.remember(self._forwarder.url(path), upstream.dpop_nonce)
                if upstream.nonce_challenge:
                    if challenged:
                        return UpstreamFailure(
                            502, "upstream-unavailable", "The My Account API refused its own DPoP nonce."
                        )
                    challenged = True
                    continue
            if not _refused(upstream):
                return upstream
            if refused is not None:
                break
            refused = token
        assert isinstance(upstream, UpstreamResponse)
        if upstream.status == 401:
            return RefusedTwice(insufficient_scope=False, scope=scope)
        return RefusedTwice(insufficient_scope=True, scope=scope)
