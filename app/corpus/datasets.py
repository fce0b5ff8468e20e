"""The dataset store: named lists of texts in SQLite (app.corpus.sqlite), plus read-only built-ins.

What crosses the boundary: DatasetInfo records and lists of texts. Uploaded sets live in two tables of
their own (datasets, dataset_texts); built-in sets (ids "builtin:...") are generated at run time by
app.corpus.builtin and never written. Every method is thread-safe; a create is all or nothing.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from app.corpus import builtin
from app.corpus.sqlite import Database
from app.errors import Conflict, InvalidInput, NotFound

Texts = list[str]  # a name for annotations inside DatasetStore, whose method `list` shadows the builtin
MAX_NAME_CHARS = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id       TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    n_texts  INTEGER NOT NULL,
    n_tokens INTEGER,
    created  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_texts (
    dataset_id TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    text       TEXT NOT NULL,
    PRIMARY KEY (dataset_id, idx)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as the API shows it. n_tokens is None for a built-in until it has been counted."""

    id: str
    name: str
    n_texts: int
    n_tokens: int | None
    builtin: bool
    created: str  # ISO 8601, UTC


def new_id() -> str:
    return "ds_" + secrets.token_hex(6)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checked(name: str, texts: list[str], max_texts: int) -> None:
    """Raise InvalidInput (422) unless name and texts make a dataset this store accepts."""
    if not name.strip():
        raise InvalidInput("name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"name is {len(name)} characters; at most {MAX_NAME_CHARS}")
    if not texts:
        raise InvalidInput("the dataset has no texts")
    if len(texts) > max_texts:
        raise InvalidInput(f"{len(texts)} texts; a dataset holds at most {max_texts} (HEADSCOPE_MAX_DATASET_TEXTS)")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {index} is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            raise InvalidInput(f"text {index} is not valid Unicode (it holds a lone surrogate)") from None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("name is not valid Unicode (it holds a lone surrogate)") from None


class DatasetStore:
    """Uploaded datasets in SQLite and the built-in sets."""

    def __init__(self, data_dir: Path, max_texts: int) -> None:
        self.data_dir = data_dir
        self.max_texts = max_texts
        self._db = Database(data_dir, SCHEMA)
        self._opened = now_iso()
        self._builtin_tokens: dict[str, int] = {}
        self._tokens_lock = threading.Lock()  # guards _builtin_tokens

    def close(self) -> None:
        self._db.close()

    # -- reading -----------------------------------------------------------------------------------

    def list(self) -> list[DatasetInfo]:
        """Built-ins first (in their fixed order), then uploads, oldest first."""
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT id, name, n_texts, n_tokens, created FROM datasets ORDER BY created, rowid"
            ).fetchall()
        return [self._builtin_info(i) for i in builtin.IDS] + [_info(row) for row in rows]

    def get(self, dataset_id: str) -> DatasetInfo:
        """One dataset's record; NotFound (404) for an unknown id."""
        if dataset_id in builtin.IDS:
            return self._builtin_info(dataset_id)
        with self._db.reading() as db:
            row = db.execute(
                "SELECT id, name, n_texts, n_tokens, created FROM datasets WHERE id = ?", (dataset_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no dataset {dataset_id!r}")
        return _info(row)

    def texts(self, dataset_id: str) -> Texts:
        """Every text of a dataset, in order; NotFound for an unknown id. Built-ins are generated once, cached."""
        return self.page(dataset_id, 0, None)[1]

    def page(self, dataset_id: str, offset: int, limit: int | None) -> tuple[int, Texts]:
        """(total, texts[offset : offset + limit]) without reading the rest of a stored dataset."""
        if dataset_id in builtin.IDS:
            all_texts = builtin.texts(dataset_id)
            end = None if limit is None else offset + limit
            return len(all_texts), list(all_texts[offset:end])
        info = self.get(dataset_id)
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT text FROM dataset_texts WHERE dataset_id = ? AND idx >= ? ORDER BY idx LIMIT ?",
                (dataset_id, offset, -1 if limit is None else limit),
            ).fetchall()
        return info.n_texts, [row[0] for row in rows]

    # -- writing -----------------------------------------------------------------------------------

    def create(self, name: str, texts: Texts, n_tokens: int) -> DatasetInfo:
        """Store a new dataset in one transaction (all or nothing); InvalidInput (422) for bad input."""
        checked(name, texts, self.max_texts)
        info = DatasetInfo(new_id(), name, len(texts), n_tokens, builtin=False, created=now_iso())
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO datasets (id, name, n_texts, n_tokens, created) VALUES (?, ?, ?, ?, ?)",
                (info.id, info.name, info.n_texts, info.n_tokens, info.created),
            )
            db.executemany(
                "INSERT INTO dataset_texts (dataset_id, idx, text) VALUES (?, ?, ?)",
                ((info.id, index, text) for index, text in enumerate(texts)),
            )
        return info

    def delete(self, dataset_id: str) -> None:
        """Remove an uploaded dataset and its texts; Conflict (409) for a built-in, NotFound for an unknown id."""
        if dataset_id in builtin.IDS:
            raise Conflict(f"{dataset_id} is built in and cannot be deleted")
        with self._db.transaction() as db:
            gone = db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,)).rowcount
            db.execute("DELETE FROM dataset_texts WHERE dataset_id = ?", (dataset_id,))
        if not gone:
            raise NotFound(f"no dataset {dataset_id!r}")

    def set_builtin_tokens(self, dataset_id: str, n_tokens: int) -> None:
        """Remember a built-in's token count under the served model (kept in memory: the model may change)."""
        if dataset_id not in builtin.IDS:
            raise NotFound(f"no built-in dataset {dataset_id!r}")
        with self._tokens_lock:
            self._builtin_tokens[dataset_id] = n_tokens

    def _builtin_info(self, dataset_id: str) -> DatasetInfo:
        info = DatasetInfo(
            id=dataset_id,
            name=builtin.TITLES[dataset_id],
            n_texts=len(builtin.texts(dataset_id)),
            n_tokens=None,
            builtin=True,
            created=self._opened,
        )
        with self._tokens_lock:
            return replace(info, n_tokens=self._builtin_tokens.get(dataset_id))


def _info(row: tuple[str, str, int, int | None, str]) -> DatasetInfo:
    dataset_id, name, n_texts, n_tokens, created = row
    return DatasetInfo(dataset_id, name, n_texts, n_tokens, builtin=False, created=created)
