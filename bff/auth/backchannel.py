"""``POST /bff/backchannel-logout``: the IdP ends BFF sessions server to server.

OpenID Connect Back-Channel Logout 1.0 as Auth0 sends it (back-channel-logout.md): a form post
with a ``logout_token`` JWT naming the IdP session (``sid``) and/or the user (``sub``).

Security: this endpoint is reachable by anyone and carries no cookie and no CSRF header, so the
token's signature is the only defence. Everything is checked before anything is ended: the RS256
signature against the IdP's JWKS, ``iss``, ``aud`` (this client), ``iat`` (not in the future, not
older than :data:`MAX_TOKEN_AGE`), ``exp``, the back-channel logout ``events`` member, ``sid``
and/or ``sub``, the absence of ``nonce`` (which would make an ID token pass as a logout token),
and a ``jti`` never seen before (a captured token cannot be replayed). Matching sessions are found
through the ``idp-sid:`` and ``sub:`` indexes, never by scanning the store, and each is ended as
at logout: refresh token revoked, record and index entries deleted.

Answers: 200 (also when no session matched: the IdP must not learn which sessions exist), 400
problem for an invalid token, always ``Cache-Control: no-store``.
"""

from __future__ import annotations

import logging
import typing as t

from flask import Blueprint, Response, request
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

from ..errors import Problem, ProblemKind
from ..services import Services, services
from ..session import EndReason, LiveSession

__all__ = ["BACKCHANNEL_LOGOUT_EVENT", "MAX_TOKEN_AGE", "blueprint", "validate_logout_token"]

log = logging.getLogger(__name__)

blueprint = Blueprint("backchannel", __name__, url_prefix="/bff")

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: Auth0's logout tokens live two minutes; an older ``iat`` is refused, which also bounds how long
#: a ``jti`` must be remembered.
MAX_TOKEN_AGE = 600
_CLOCK_SKEW = 60
_MAX_TOKEN_LENGTH = 8192
_MAX_CLAIM_LENGTH = 512


def _invalid(detail: str) -> Problem:
    # Not the detail: it may quote the token's claims.
    log.warning("back-channel logout refused: invalid logout token",
                extra={"event": "backchannel_logout", "result": "invalid"})
    return Problem(ProblemKind.INVALID_LOGOUT_TOKEN, detail)


def validate_logout_token(svc: Services, token: str) -> dict[str, t.Any]:
    """The claims of a valid logout token, or a 400 problem naming the first failed check.

    Does not record the ``jti``: the caller does that once, after validation, so an invalid
    token can never use up the identifier of a valid one.
    """
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        raise _invalid("The request has no logout_token, or it is too long.")
    try:
        claims = svc.provider.verified_claims(token)
    except (JoseError, ValueError) as error:
        raise _invalid(f"The signature is not the identity provider's ({type(error).__name__}).") from error
    now = svc.clock.now()
    registry = JWTClaimsRegistry(
        now=lambda: int(now),
        leeway=_CLOCK_SKEW,
        iss={"essential": True, "value": svc.provider.issuer()},
        aud={"essential": True, "value": svc.settings.client_id},
        iat={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as error:
        raise _invalid(f"A registered claim is missing or wrong ({error}).") from error
    if now - float(claims["iat"]) > MAX_TOKEN_AGE + _CLOCK_SKEW:
        raise _invalid("The token was issued too long ago.")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise _invalid(f"The events claim must contain {BACKCHANNEL_LOGOUT_EVENT}.")
    if "nonce" in claims:
        raise _invalid("A logout token must not contain a nonce.")
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is None and sub is None:
        raise _invalid("The token names neither a session (sid) nor a user (sub).")
    for name, value in (("sid", sid), ("sub", sub), ("jti", claims["jti"])):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= _MAX_CLAIM_LENGTH):
            raise _invalid(f"The {name} claim is malformed.")
    return claims


def _matching_sessions(svc: Services, sid: str | None, sub: str | None) -> list[LiveSession]:
    """The live BFF sessions of the IdP session ``sid`` (or, without one, every session of ``sub``)."""
    if sid is not None:
        return svc.sessions.sessions_of_idp_session(sid)
    assert sub is not None
    return svc.sessions.list_for_user(sub)


def end_matching_sessions(svc: Services, sid: str | None, sub: str | None) -> int:
    """End every live session the token names; returns how many were ended."""
    ended = 0
    for session in _matching_sessions(svc, sid, sub):
        if sub is not None and session.sub != sub:
            # The IdP session belongs to someone else than the token's user: end nothing of theirs.
            log.warning("back-channel logout: sid and sub name different users; session kept")
            continue
        svc.sessions.end(session, EndReason.BACKCHANNEL_LOGOUT)
        ended += 1
    return ended


@blueprint.post("/backchannel-logout")
def backchannel_logout() -> Response:
    svc = services()
    claims = validate_logout_token(svc, request.form.get("logout_token", ""))
    # One use per token: a replay within the acceptance window is refused, not silently accepted.
    if not svc.sessions.claim_once("logout-jti", f"{claims['iss']}|{claims['jti']}", MAX_TOKEN_AGE + 2 * _CLOCK_SKEW):
        raise _invalid("This logout token was already used.")
    ended = end_matching_sessions(svc, claims.get("sid"), claims.get("sub"))
    log.info("back-channel logout ended %d session(s)", ended,
             extra={"event": "backchannel_logout", "result": "ok", "sessions_ended": ended})
    response = Response(status=200)
    response.headers["Cache-Control"] = "no-store"
    return response
