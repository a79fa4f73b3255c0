"""The session record's format and every store key the session core uses.

A session is one record in the store, keyed by a random 256-bit id (the cookie's value), with one
field per concern, each written on its own so that concurrent requests never overwrite each other:

* ``doc``  — the session document (JSON: user claims, lifetimes, device), written once at start;
* ``rt``   — the sealed refresh token, replaced only by compare-and-set against the token redeemed;
* ``at:*`` — access tokens per scope set (format owned by the token manager), in the same write;
* ``ri``   — set while the refresh token is being presented to the IdP (when, as a timestamp), so an
  attempt whose outcome stayed unknown is recognised by whoever refreshes next;
* ``seen`` — last activity, written at most once per touch interval;
* ``dk``   — with DPoP, the session's private key, sealed (:mod:`bff.dpop`), written once at start.

Only this package spells these names; other modules go through :class:`LiveSession` and
:class:`~bff.session.core.SessionCore`.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass

__all__ = [
    "ACCESS_PREFIX",
    "DOC",
    "DPOP_KEY",
    "INTENT",
    "REFRESH",
    "SEEN",
    "LiveSession",
    "connect_key",
    "connect_slot",
    "decode_document",
    "encode_document",
    "idp_sid_index",
    "once_key",
    "refresh_lock",
    "sub_index",
]

DOC = "doc"
REFRESH = "rt"
ACCESS_PREFIX = "at:"
SEEN = "seen"
INTENT = "ri"
DPOP_KEY = "dk"


def sub_index(sub: str) -> str:
    """The index of a user's sessions (session list, back-channel logout by ``sub``)."""
    return f"sub:{sub}"


def idp_sid_index(idp_sid: str) -> str:
    """The index of the BFF sessions of one IdP session (back-channel logout by ``sid``)."""
    return f"idp-sid:{idp_sid}"


def refresh_lock(sid: str) -> str:
    """The lock that serialises every use of a session's refresh token, across processes and hosts.

    The session id is the key's hash tag (in braces), as in the record's own key: on a Redis Cluster
    the lock lives in the record's slot, so one shard holds everything a refresh touches.
    """
    return f"refresh:{{{sid}}}"


def connect_key(state: str) -> str:
    return f"connect:{state}"


def connect_slot(sid: str, slot: int) -> str:
    """One of the few slots a session's connect flows in progress may hold (hash-tagged by the session id)."""
    return f"connect-slot:{{{sid}}}:{slot}"


def once_key(namespace: str, digest: str) -> str:
    return f"{namespace}:{digest}"


def encode_document(document: t.Mapping[str, t.Any]) -> bytes:
    return json.dumps(dict(document), separators=(",", ":")).encode()


def decode_document(raw: bytes | None) -> dict[str, t.Any] | None:
    """A stored session document; ``None`` when absent or unreadable (JSON only: never pickle)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("sub") else None


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session as loaded in one round trip: its id, decoded document and raw fields."""

    sid: str
    document: t.Mapping[str, t.Any]
    fields: t.Mapping[str, bytes]

    @property
    def sub(self) -> str:
        return str(self.document["sub"])

    @property
    def idp_sid(self) -> str | None:
        value = self.document.get("idp_sid")
        return str(value) if value else None

    @property
    def created_at(self) -> float:
        return float(self.document.get("created_at") or 0.0)

    @property
    def expires_at(self) -> float:
        return float(self.document.get("expires_at") or 0.0)

    @property
    def seen(self) -> float:
        """Last activity (the start, if the session was never touched since)."""
        raw = self.fields.get(SEEN)
        return float(raw) if raw else self.created_at

    @property
    def sealed_refresh_token(self) -> bytes | None:
        return self.fields.get(REFRESH)

    @property
    def sealed_dpop_key(self) -> bytes | None:
        """The session's sealed DPoP key; ``None`` for a session whose tokens are Bearer tokens."""
        return self.fields.get(DPOP_KEY)

    @property
    def refresh_started_at(self) -> float | None:
        """When the current refresh token was last presented without a known outcome, if it was."""
        raw = self.fields.get(INTENT)
        return float(raw) if raw else None

    def access(self, set_key: str) -> bytes | None:
        """The stored access-token entry of a scope set (the token manager's format)."""
        return self.fields.get(ACCESS_PREFIX + set_key)

    @classmethod
    def from_fields(cls, sid: str, fields: t.Mapping[str, bytes]) -> LiveSession | None:
        document = decode_document(fields.get(DOC))
        return None if document is None else cls(sid, document, fields)
