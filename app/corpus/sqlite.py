"""The one SQLite file ({data_dir}/headscope.sqlite) that the dataset and job stores share.

Each store holds its own `Database`: one connection opened on first use (with the store's tables), one lock
that serialises the store's use of it, and write transactions that are all or nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_FILE = "headscope.sqlite"


def connect(data_dir: Path) -> sqlite3.Connection:
    """A connection to the one store file (created with its folder), in WAL mode, usable from any thread."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / DB_FILE, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, fast commits
    return conn


class Database:
    """One store's connection to the file, behind one lock; `schema` (CREATE ... IF NOT EXISTS) runs on opening.

    Opened on first use, so an app that never stores anything writes nothing. Thread-safe.
    """

    def __init__(self, data_dir: Path, schema: str) -> None:
        self.data_dir = data_dir
        self.schema = schema
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads, with the lock held until the block ends."""
        with self._lock:
            yield self._open()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The lock plus one write transaction: committed at the end, rolled back on any error."""
        with self._lock:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: other connections wait (busy timeout)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _open(self) -> sqlite3.Connection:
        """The connection, opened (and the tables created) on first use. Call with the lock held."""
        if self._conn is None:
            conn = connect(self.data_dir)
            conn.executescript(self.schema)
            self._conn = conn
        return self._conn
