"""Session records written straight into a store, and what they cost in Redis memory.

The benchmark compares the BFF against a store that holds 100 sessions with one that holds 100,000.
Logging 100,000 users in over HTTP would take far too long, so the records are written directly, in
the BFF's own format: the key layout of :mod:`bff.store.redis_store` (``<prefix>s:{<sid>}`` for the
record, ``<prefix>i:sub:<sub>`` and ``<prefix>i:idp-sid:<sid>`` for the indexes) and the fields of
:mod:`bff.session.record`. Each synthetic session is a copy of a real logged-in one (its document,
its sealed My Account token, its activity stamp), with its own random id, user, IdP session and a
refresh token of its own sealed under the BFF's key, and the same TTLs as the BFF gives them.
"""

from __future__ import annotations

import secrets
import time
import typing as t
from dataclasses import dataclass

import redis

from bff.security import SecretBox
from bff.session import SessionCore
from bff.session.record import DOC, REFRESH, SEEN, decode_document, encode_document, idp_sid_index, sub_index
from bff.store.redis_store import RedisStore

__all__ = ["SessionKeys", "copy_session", "memory_usage", "session_keys", "used_memory", "write_sessions"]

#: Commands per pipeline when writing many records.
_BATCH = 500


@dataclass(frozen=True)
class SessionKeys:
    """The store keys of one BFF session: its record and its two index entries."""

    record: str
    sub_index: str
    idp_sid_index: str | None


def session_keys(client: redis.Redis, sid: str, *, prefix: str = "bff:") -> SessionKeys:
    """The keys of session ``sid`` as the BFF names them (read from its record's document)."""
    layout = RedisStore(client, prefix=prefix)
    record = layout._s(sid)
    document = decode_document(t.cast("bytes | None", client.hget(record, DOC)))
    if document is None:
        raise RuntimeError("no session record for that id")
    idp_sid = document.get("idp_sid")
    return SessionKeys(
        record=record,
        sub_index=layout._i(sub_index(str(document["sub"]))),
        idp_sid_index=layout._i(idp_sid_index(str(idp_sid))) if idp_sid else None,
    )


def copy_session(source: redis.Redis, target: redis.Redis, sid: str, *, prefix: str = "bff:") -> None:
    """Copy session ``sid`` (record and index entries, with their TTLs) from one store to another."""
    keys = session_keys(source, sid, prefix=prefix)
    for key in (keys.record, keys.sub_index, keys.idp_sid_index):
        if key is None:
            continue
        dumped = t.cast("bytes | None", source.dump(key))
        ttl = int(t.cast(int, source.pttl(key)))
        if dumped is not None:
            target.restore(key, max(ttl, 0), dumped, replace=True)


def write_sessions(
    client: redis.Redis,
    count: int,
    template: t.Mapping[bytes, bytes],
    box: SecretBox,
    *,
    idle_timeout: float,
    lifetime: float,
    prefix: str = "bff:",
) -> list[str]:
    """Write ``count`` sessions shaped like ``template`` (a record's fields); returns their ids.

    Record, ``sub`` index and IdP-session index per session, with the TTLs the BFF sets: the record
    lives for the idle timeout plus the BFF's five-minute grace, the indexes for the session lifetime.
    """
    layout = RedisStore(client, prefix=prefix)
    document = decode_document(template.get(DOC.encode()))
    if document is None:
        raise ValueError("the template has no session document")
    others: dict[bytes | str, bytes] = {
        name: value for name, value in template.items() if name.decode() not in (DOC, REFRESH, SEEN)
    }
    record_ttl = int((idle_timeout + 300.0) * 1000)
    index_ttl = int(lifetime * 1000)
    now = time.time()
    sids: list[str] = []
    pipe = client.pipeline(transaction=False)
    for number in range(count):
        sid = SessionCore.new_sid()
        sub = f"auth0|bench{number:07d}{secrets.token_hex(4)}"
        idp_sid = secrets.token_urlsafe(24)
        claims = {**document.get("claims", {}), "sub": sub, "email": f"user{number}@example.com",
                  "name": f"User {number}", "nickname": f"user{number}"}
        fields: dict[bytes | str, bytes] = {
            DOC: encode_document({**document, "sub": sub, "idp_sid": idp_sid, "claims": claims,
                                  "created_at": now, "expires_at": now + lifetime}),
            # A refresh token of the emulator's shape and length, sealed like the BFF seals it.
            REFRESH: box.seal(secrets.token_urlsafe(48).encode()),
            SEEN: f"{now:.3f}".encode(),
            **others,
        }
        record = layout._s(sid)
        pipe.hset(record, mapping=fields)
        pipe.pexpire(record, record_ttl)
        for index in (layout._i(sub_index(sub)), layout._i(idp_sid_index(idp_sid))):
            pipe.sadd(index, sid)
            pipe.pexpire(index, index_ttl)
        sids.append(sid)
        if len(pipe) >= _BATCH:
            pipe.execute()
    if len(pipe):
        pipe.execute()
    pipe.reset()
    return sids


def used_memory(client: redis.Redis) -> int:
    """Redis ``used_memory`` (bytes the allocator holds for data, buffers and overhead)."""
    return int(t.cast("dict[str, t.Any]", client.info("memory"))["used_memory"])


def memory_usage(client: redis.Redis, key: str) -> int:
    """``MEMORY USAGE`` of one key, every element sampled (0 when the key is missing)."""
    return int(t.cast("int | None", client.memory_usage(key, samples=0)) or 0)
