"""`sqlite:///path/state.db`: the default state store, one file that survives restarts.

Every call runs in a worker thread (`asyncio.to_thread`) so the event loop never waits
on the disk. WAL mode lets readers run beside the one writer, and each write is one
`BEGIN IMMEDIATE` transaction, so two gateway processes on one machine may share the
file. The schema carries its version (table `schema_version`): an older file is
migrated in place, a newer one is refused with a message saying so, and a file that is
not a database (or fails `PRAGMA quick_check`) is reported with its path and left
exactly as it is: stateful requests answer 503 until an operator moves it away.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from gateway.state.base import StateUnavailable, Store, decoded, version_of, versioned

log = logging.getLogger("nexa.state")

SCHEMA_VERSION = 1
# version -> the statements that bring a file of the previous version to it (1: a new file).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE objects (seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, kind TEXT NOT NULL, "
        "key TEXT NOT NULL, value BLOB NOT NULL, bytes INTEGER NOT NULL, expires REAL NOT NULL, "
        "UNIQUE (owner, kind, key))",
        "CREATE INDEX objects_expires ON objects (expires)",
        "CREATE INDEX objects_kind ON objects (kind, seq)",
        # The sum of objects.bytes, kept by every write: summing the column reads every row's page.
        "CREATE TABLE totals (bytes INTEGER NOT NULL)",
        "INSERT INTO totals VALUES (0)",
    ],
}
RETRY_S = 5.0  # a store that failed to open is tried again at most this often
BUSY_TIMEOUT_MS = 5000  # another process's write transaction: wait this long, then 503


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (no upgrade from a read lock that could deadlock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _freed(cursor: sqlite3.Cursor) -> int:
    """The bytes of the rows a `DELETE ... RETURNING bytes` removed."""
    return sum(row[0] for row in cursor.fetchall())


class SqliteStore(Store):
    scheme = "sqlite"

    def __init__(self, url: str, *args: Any, path: Path, **kwargs: Any):
        super().__init__(url, *args, **kwargs)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._failure: tuple[float, str] | None = None
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._run(lambda db: None)

    async def ping(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        now = self.clock()
        if self._failure is not None and now - self._failure[0] < RETRY_S:
            raise StateUnavailable(self._failure[1])
        try:
            self._db = self._connect()
            self._failure = None
            return self._db
        except StateUnavailable as exc:
            self._failure = (now, exc.message)
            log.error("%s", exc.message, extra={"event": "state_unavailable", "store": self.url})
            raise

    def _connect(self) -> sqlite3.Connection:
        where = f"The state file {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateUnavailable(f"{where} cannot be opened: {exc}.") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except StateUnavailable:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StateUnavailable(f"{where} is corrupt or not a nexa state database ({exc}); it was left "
                                   "untouched: move it away (or restore a backup) and the gateway starts a new "
                                   "one, or point server.state elsewhere.") from None
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        with transaction(db):
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" not in tables:
                if tables - {"sqlite_sequence"}:
                    raise StateUnavailable(f"The state file {self.path} is an SQLite database but not nexa's (no "
                                           "schema_version table); it was left untouched: point server.state at "
                                           "another file.")
                db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                db.execute("INSERT INTO schema_version VALUES (0)")
            version = db.execute("SELECT version FROM schema_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateUnavailable(f"The state file {self.path} has schema version {version}, written by a newer "
                                       f"nexa; this one reads up to version {SCHEMA_VERSION}. Upgrade nexa, or point "
                                       "server.state at another file (the file was left untouched).")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (step,))
                log.info("state file %s migrated to schema version %d", self.path, step,
                         extra={"event": "state_migrated", "version": step})

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            db = self._open()
            try:
                return work(db)
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full, read-only...
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StateUnavailable(f"The state file {self.path} cannot be used now: {exc}.") from None
            except sqlite3.DatabaseError as exc:  # corrupted while open: close, report, never replace
                db.close()
                self._db = None
                self._failure = (self.clock(), f"The state file {self.path} is corrupt ({exc}); it was left "
                                               "untouched: move it away (or restore a backup).")
                raise StateUnavailable(self._failure[1]) from None

    # -- the contract -----------------------------------------------------------------------

    async def get(self, owner: str, kind: str, key: str) -> dict[str, Any] | None:
        data = await self._run(lambda db: self._value(db, owner, kind, key))
        return await decoded(data) if data is not None else None

    async def put(self, owner: str, kind: str, key: str, value: dict[str, Any]) -> None:
        def write(db: sqlite3.Connection) -> None:
            data = self.sized(value)  # here, on the worker thread: a large object's JSON takes a while
            with transaction(db):
                self._write(db, owner, kind, key, data)

        await self._run(write)

    async def read(self, owner: str, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        data = await self._run(lambda db: self._value(db, owner, kind, key))
        return await versioned(data) if data is not None else None

    async def replace(self, owner: str, kind: str, key: str, value: dict[str, Any], version: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            data = self.sized(value)
            with transaction(db):  # the comparison and the write hold one write lock: no writer between
                seen = self._value(db, owner, kind, key)
                if seen is None or version_of(seen) != version:
                    return False
                self._write(db, owner, kind, key, data)
                return True

        return await self._run(write)

    def _value(self, db: sqlite3.Connection, owner: str, kind: str, key: str) -> bytes | None:
        row = db.execute("SELECT value FROM objects WHERE owner = ? AND kind = ? AND key = ? AND expires > ?",
                         (owner, kind, key, self.clock())).fetchone()
        return row[0] if row else None

    def _write(self, db: sqlite3.Connection, owner: str, kind: str, key: str, data: bytes) -> None:
        """Inside a write transaction: store the object, then drop what the bounds no longer allow."""
        limits, now = self.limits, self.clock()
        freed = _freed(db.execute("DELETE FROM objects WHERE (owner = ? AND kind = ? AND key = ?) OR expires <= ? "
                                  "RETURNING bytes", (owner, kind, key, now)))
        db.execute("INSERT INTO objects (owner, kind, key, value, bytes, expires) VALUES (?, ?, ?, ?, ?, ?)",
                   (owner, kind, key, data, len(data), now + limits.ttl_s))
        limit = limits.max_count.get(kind)
        if limit is not None:
            freed += _freed(db.execute("DELETE FROM objects WHERE seq IN (SELECT seq FROM objects WHERE kind = ? "
                                       "ORDER BY seq DESC LIMIT -1 OFFSET ?) RETURNING bytes", (kind, limit)))
        total = db.execute("SELECT bytes FROM totals").fetchone()[0] - freed + len(data)
        while total > limits.max_bytes:
            total -= _freed(db.execute("DELETE FROM objects WHERE seq = (SELECT MIN(seq) FROM objects) "
                                       "RETURNING bytes"))
        db.execute("UPDATE totals SET bytes = ?", (total,))

    async def delete(self, owner: str, kind: str, key: str) -> bool:
        now = self.clock()
        def remove(db: sqlite3.Connection) -> bool:
            with transaction(db):
                rows = db.execute("DELETE FROM objects WHERE owner = ? AND kind = ? AND key = ? RETURNING bytes, "
                                  "expires > ?", (owner, kind, key, now)).fetchall()
                if rows:
                    db.execute("UPDATE totals SET bytes = bytes - ?", (rows[0][0],))
                return bool(rows) and rows[0][1] == 1

        return await self._run(remove)

    async def list(self, owner: str, kind: str) -> list[str]:
        now = self.clock()
        rows = await self._run(lambda db: db.execute(
            "SELECT key FROM objects WHERE owner = ? AND kind = ? AND expires > ? ORDER BY seq",
            (owner, kind, now)).fetchall())
        return [row[0] for row in rows]

    async def stats(self) -> dict[str, int]:
        now = self.clock()
        count, size = await self._run(lambda db: db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM objects WHERE expires > ?", (now,)).fetchone())
        return {"objects": count, "bytes": size}
