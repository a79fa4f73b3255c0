"""Starting and ending BFF sessions, and the indexes that find them again.

A session is indexed by the user's ``sub`` and by the IdP's session id (``sid`` claim), so a
back-channel logout or "end my other sessions" finds every matching session directly instead
of scanning the store.
"""

from __future__ import annotations

import logging
import typing as t

from ..services import Services
from ..session import ACCESS_PREFIX, DOC, REFRESH, SEEN, BffSession, JsonSerializer
from ..tokens.endpoint import TokenSet
from ..tokens.manager import LOGIN_SET, encode_access, jwt_audiences

__all__ = [
    "end_record",
    "end_session",
    "idp_sid_index",
    "load_document",
    "load_session",
    "public_claims",
    "start_session",
    "sub_index",
]

log = logging.getLogger(__name__)


def sub_index(sub: str) -> str:
    return f"sub:{sub}"


def idp_sid_index(idp_sid: str) -> str:
    return f"idp-sid:{idp_sid}"


def start_session(
    svc: Services, session: BffSession, claims: dict[str, t.Any], tokens: TokenSet, device: str
) -> None:
    """Turn ``session`` into a fresh logged-in session with a new id (no fixation).

    The token fields are written here; flask-session adds the document when the response is
    saved (it sees the session modified and sets the cookie for the new id).
    """
    now = svc.clock.now()
    old_sid = session.sid if session.authenticated else None
    old_doc = dict(session) if old_sid else None
    session.clear()
    session.sid = svc.sessions.new_sid()
    id_token = tokens.id_token or ""
    session.update(
        {
            "v": 1,
            "sub": claims["sub"],
            "idp_sid": claims.get("sid"),
            "claims": public_claims(claims),
            "acr": claims.get("acr"),
            "amr": claims.get("amr"),
            "auth_time": claims.get("auth_time"),
            "created_at": now,
            "expires_at": now + svc.settings.session_lifetime,
            "device": device[:200],
            "id_token": svc.box.seal(id_token.encode()).decode(),
        }
    )
    assert tokens.refresh_token is not None
    fields: dict[str, bytes] = {
        REFRESH: svc.box.seal(tokens.refresh_token.encode()),
        SEEN: f"{now:.3f}".encode(),
    }
    audiences = jwt_audiences(tokens.access_token) or []
    if svc.settings.login_audience_is_my_account and svc.settings.my_account_audience in audiences:
        # The login token already is a My Account token: use it instead of an extra exchange.
        fields[ACCESS_PREFIX + LOGIN_SET] = encode_access(svc.box, tokens, now)
    ttl = svc.sessions.record_ttl(session)
    svc.store.write(session.sid, fields, ttl)
    lifetime = float(svc.settings.session_lifetime)
    svc.store.index_add(sub_index(claims["sub"]), session.sid, lifetime)
    if claims.get("sid"):
        svc.store.index_add(idp_sid_index(str(claims["sid"])), session.sid, lifetime)
    if old_sid and old_doc is not None:
        # Re-login (step-up, account switch): the previous session ends, its refresh token too.
        end_record(svc, old_sid, old_doc, revoke=True)


_PRIVATE_CLAIMS = {"nonce", "at_hash", "c_hash", "sid", "aud", "iss", "iat", "exp", "azp", "auth_time", "acr",
                   "amr"}


def public_claims(claims: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The ID-token claims the SPA may see: the profile, not the protocol plumbing."""
    return {key: value for key, value in claims.items() if key not in _PRIVATE_CLAIMS}


def end_record(svc: Services, sid: str, doc: t.Mapping[str, t.Any], *, revoke: bool) -> None:
    """Delete a session's record and index entries; revoke its refresh token first if asked."""
    if revoke:
        record = svc.store.load(sid)
        sealed = record.fields.get(REFRESH) if record else None
        refresh_token = svc.box.open(sealed) if sealed else None
        if refresh_token:
            try:
                endpoint = svc.provider.endpoint("revocation_endpoint")
            except Exception:
                endpoint = svc.settings.issuer_url + "oauth/revoke"
            if not svc.token_client.revoke(endpoint, refresh_token.decode()):
                log.warning("refresh token could not be revoked at logout")
    svc.store.delete(sid)
    sub = doc.get("sub")
    if sub:
        svc.store.index_remove(sub_index(str(sub)), sid)
    if doc.get("idp_sid"):
        svc.store.index_remove(idp_sid_index(str(doc["idp_sid"])), sid)


def end_session(svc: Services, session: BffSession, *, revoke: bool) -> str | None:
    """End the current session; returns its sealed-then-opened ID token for the IdP logout hint."""
    if not session.authenticated:
        return None
    opened = svc.box.open(str(session.get("id_token", "")).encode())
    end_record(svc, session.sid, dict(session), revoke=revoke)
    session.clear()
    return opened.decode() if opened else None


def load_session(svc: Services, sid: str) -> BffSession | None:
    """The logged-in session ``sid`` as the session interface would open it, or ``None``.

    For requests that reach a session without its cookie (the connect callback after a cross-site
    redirect, session management): the same checks apply, so an ended or expired session is never
    revived here.
    """
    record = svc.store.load(sid)
    document = load_document(record.fields.get(DOC)) if record is not None else None
    if record is None or document is None or not document.get("sub"):
        return None
    if float(document.get("expires_at", 0)) <= svc.clock.now():
        return None
    session = BffSession(document, sid=sid)
    session.record = record
    return session


def load_document(raw: bytes | None) -> dict[str, t.Any] | None:
    """A stored session document, decoded as the session interface writes it; ``None`` if unreadable."""
    if raw is None:
        return None
    try:
        return JsonSerializer().decode(raw)
    except ValueError:
        return None
