"""Embedded SQLite backend for a single host (``sqlite:///path``).

Several worker processes on one host share the file; WAL mode lets readers run beside the one
writer, and every conditional write runs in a ``BEGIN IMMEDIATE`` transaction so checks and
writes are atomic across processes. Expired rows are ignored on read and purged from time to
time. Values are bytes written as BLOBs: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import typing as t

from .base import Record, SessionStore, StoreUnavailable

__all__ = ["SqliteStore"]

P = t.ParamSpec("P")
R = t.TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (sid TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    sid TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (sid, name));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idx (
    name TEXT NOT NULL, member TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (name, member));
"""
_PURGE_EVERY = 500


def _guard(method: t.Callable[P, R]) -> t.Callable[P, R]:
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = t.cast(SqliteStore, args[0])
        store.round_trips += 1
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as error:
            raise StoreUnavailable() from error

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class SqliteStore(SessionStore):
    """A :class:`SessionStore` in one SQLite file shared by the processes of one host."""

    def __init__(self, path: str, *, clock: t.Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._local = threading.local()
        self._writes = 0
        self.round_trips = 0
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # executescript manages its own transaction.
        self._db().executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str, *, clock: t.Callable[[], float] = time.time) -> SqliteStore:
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ValueError("sqlite:// URL needs an absolute path: sqlite:///var/lib/bff/sessions.db")
        return cls(path, clock=clock)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self) -> t.Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            self._purge()

    def _purge(self) -> None:
        now = self._clock()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM fields WHERE sid IN (SELECT sid FROM records WHERE expires_at <= ?)", (now,))
        db.execute("DELETE FROM records WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM locks WHERE expires_at <= ?", (now,))
        db.execute("DELETE FROM idx WHERE expires_at <= ?", (now,))
        db.execute("COMMIT")

    def _alive(self, db: sqlite3.Connection, sid: str) -> bool:
        row = db.execute("SELECT expires_at FROM records WHERE sid = ?", (sid,)).fetchone()
        return row is not None and row[0] > self._clock()

    def _set_fields(self, db: sqlite3.Connection, sid: str, fields: t.Mapping[str, bytes]) -> None:
        db.executemany(
            "INSERT INTO fields (sid, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT (sid, name) DO UPDATE SET value = excluded.value",
            [(sid, name, value) for name, value in fields.items()],
        )

    @_guard
    def load(self, sid: str) -> Record | None:
        db = self._db()
        row = db.execute("SELECT expires_at FROM records WHERE sid = ?", (sid,)).fetchone()
        now = self._clock()
        if row is None or row[0] <= now:
            return None
        rows = db.execute("SELECT name, value FROM fields WHERE sid = ?", (sid,)).fetchall()
        if not rows:
            return None
        return Record(fields={name: bytes(value) for name, value in rows})

    @_guard
    def write(self, sid: str, fields: t.Mapping[str, bytes], ttl: float) -> None:
        with self._tx() as db:
            if not self._alive(db, sid):
                db.execute("DELETE FROM fields WHERE sid = ?", (sid,))
            db.execute(
                "INSERT INTO records (sid, expires_at) VALUES (?, ?) "
                "ON CONFLICT (sid) DO UPDATE SET expires_at = excluded.expires_at",
                (sid, self._clock() + ttl),
            )
            self._set_fields(db, sid, fields)

    @_guard
    def update(self, sid: str, fields: t.Mapping[str, bytes], *, ttl: float | None = None) -> bool:
        with self._tx() as db:
            if not self._alive(db, sid):
                return False
            self._set_fields(db, sid, fields)
            if ttl is not None:
                db.execute("UPDATE records SET expires_at = ? WHERE sid = ?", (self._clock() + ttl, sid))
            return True

    @_guard
    def update_cas(
        self,
        sid: str,
        fields: t.Mapping[str, bytes],
        *,
        guard: str,
        expected: bytes,
        remove: t.Sequence[str] = (),
    ) -> bool:
        with self._tx() as db:
            if not self._alive(db, sid):
                return False
            row = db.execute("SELECT value FROM fields WHERE sid = ? AND name = ?", (sid, guard)).fetchone()
            if row is None:
                return False
            current = bytes(row[0])
            if guard in fields and current == fields[guard]:
                return True
            if current != expected:
                return False
            db.executemany("DELETE FROM fields WHERE sid = ? AND name = ?", [(sid, name) for name in remove])
            self._set_fields(db, sid, fields)
            return True

    @_guard
    def delete(self, sid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM fields WHERE sid = ?", (sid,))
            db.execute("DELETE FROM records WHERE sid = ?", (sid,))

    @_guard
    def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False) -> bool:
        with self._tx() as db:
            now = self._clock()
            if only_new:
                row = db.execute("SELECT expires_at FROM kv WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] > now:
                    return False
            db.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (key, value, now + ttl),
            )
            return True

    @_guard
    def get(self, key: str) -> bytes | None:
        row = self._db().execute(
            "SELECT value FROM kv WHERE key = ? AND expires_at > ?", (key, self._clock())
        ).fetchone()
        return None if row is None else bytes(row[0])

    @_guard
    def take(self, key: str) -> bytes | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT value FROM kv WHERE key = ? AND expires_at > ?", (key, self._clock())
            ).fetchone()
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            return None if row is None else bytes(row[0])

    @_guard
    def acquire(self, lock: str, owner: str, lease: float) -> bool:
        with self._tx() as db:
            now = self._clock()
            row = db.execute("SELECT expires_at FROM locks WHERE name = ?", (lock,)).fetchone()
            if row is not None and row[0] > now:
                return False
            db.execute(
                "INSERT INTO locks (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                (lock, owner, now + lease),
            )
            return True

    @_guard
    def extend(self, lock: str, owner: str, lease: float) -> bool:
        with self._tx() as db:
            now = self._clock()
            cursor = db.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?",
                (now + lease, lock, owner, now),
            )
            return cursor.rowcount == 1

    @_guard
    def lock_owner(self, lock: str) -> str | None:
        row = self._db().execute(
            "SELECT owner FROM locks WHERE name = ? AND expires_at > ?", (lock, self._clock())
        ).fetchone()
        return None if row is None else str(row[0])

    @_guard
    def release(self, lock: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (lock, owner))

    @_guard
    def index_add(self, index: str, member: str, ttl: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO idx (name, member, expires_at) VALUES (?, ?, ?) ON CONFLICT (name, member) "
                "DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                (index, member, self._clock() + ttl),
            )

    @_guard
    def index_members(self, index: str) -> set[str]:
        rows = self._db().execute(
            "SELECT member FROM idx WHERE name = ? AND expires_at > ?", (index, self._clock())
        ).fetchall()
        return {row[0] for row in rows}

    @_guard
    def index_remove(self, index: str, member: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM idx WHERE name = ? AND member = ?", (index, member))

    @_guard
    def incr(self, key: str, amount: int, window: float) -> int:
        with self._tx() as db:
            now = self._clock()
            row = db.execute("SELECT value, expires_at FROM kv WHERE key = ?", ("c:" + key,)).fetchone()
            if row is None or row[1] <= now:
                count, expires_at = amount, now + window
            else:
                count, expires_at = int(bytes(row[0])) + amount, row[1]
            db.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                ("c:" + key, str(count).encode(), expires_at),
            )
            return count

    @_guard
    def counter(self, key: str) -> tuple[int, float]:
        now = self._clock()
        row = self._db().execute(
            "SELECT value, expires_at FROM kv WHERE key = ? AND expires_at > ?", ("c:" + key, now)
        ).fetchone()
        return (int(bytes(row[0])), row[1] - now) if row is not None else (0, 0.0)

    @_guard
    def ping(self) -> None:
        with self._tx() as db:
            db.execute("SELECT 1")

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
