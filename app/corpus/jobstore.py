"""Persistence of corpus jobs in the one SQLite file: job records, per-text results, similarity sums.

Tables (our own, beside the dataset store's): `jobs` (one row per job: parameters, state, progress
counters), `job_texts` (one row per finished text, keyed by (job_id, text_index): its metric grids
and where each head does it most), `job_batches` (finished batches of the job's batch plan) and
`job_similarity` (running sums of the per-text similarity matrices and how many texts they hold).
A batch's texts, its similarity sums and the progress counters are written in ONE transaction, and a
text already stored makes the whole transaction fail: a batch is committed whole, never twice, and only
while its job is running (never after a cancel).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.corpus.records import TextResult
from app.corpus.sqlite import Database
from app.errors import NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    dataset      TEXT NOT NULL,
    analyses     TEXT NOT NULL,      -- JSON list
    importance   TEXT NOT NULL,
    max_tokens   INTEGER NOT NULL,
    seed         INTEGER NOT NULL,
    state        TEXT NOT NULL,
    error        TEXT,
    created      TEXT NOT NULL,
    started      TEXT,
    finished     TEXT,
    model        TEXT,
    shape        TEXT,               -- JSON [n_layers, n_heads, group_size] of the model that ran it
    total        INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    done         INTEGER NOT NULL DEFAULT 0,
    tokens       INTEGER NOT NULL DEFAULT 0,
    run_s        REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_texts (
    job_id     TEXT NOT NULL,
    text_index INTEGER NOT NULL,
    n_tokens   INTEGER NOT NULL,
    metrics    TEXT NOT NULL,        -- JSON list: the order of the grids below
    vals       BLOB NOT NULL,        -- float64 (n_metrics, n_layers, n_heads)
    cells      BLOB NOT NULL,        -- int64 (n_metrics, n_layers, n_heads, 2): query_pos, key_pos; -1 = none
    PRIMARY KEY (job_id, text_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_batches (
    job_id TEXT NOT NULL,
    batch  INTEGER NOT NULL,
    PRIMARY KEY (job_id, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_similarity (
    job_id  TEXT NOT NULL,
    metric  TEXT NOT NULL,
    n_texts INTEGER NOT NULL,
    total   BLOB NOT NULL,           -- float64 (n, n): the sum over n_texts texts
    PRIMARY KEY (job_id, metric)
) WITHOUT ROWID;
"""
ENDED = frozenset({"done", "failed", "cancelled", "interrupted"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    """One job as stored. `shape` is (n_layers, n_heads, group_size) once the job has started."""

    id: str
    dataset: str
    analyses: list[str]
    importance: str
    max_tokens: int
    seed: int
    state: str
    created: str
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    model: str | None = None
    shape: tuple[int, int, int] | None = None
    total: int = 0
    total_tokens: int = 0
    done: int = 0
    tokens: int = 0
    run_s: float = 0.0

    @property
    def ended(self) -> bool:
        return self.state in ENDED


COLUMNS = [f.name for f in fields(JobRecord)]


@dataclass
class StoredValues:
    """Every finished text of a job: dataset indices (n,), token counts (n,), metric -> (n, n_layers, n_heads)."""

    indices: np.ndarray
    n_tokens: np.ndarray
    values: dict[str, np.ndarray]


class JobStore:
    """Jobs and their results in {data_dir}/headscope.sqlite. Thread-safe: one connection behind a lock."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._db = Database(data_dir, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- job records -----------------------------------------------------------------------------

    def create(self, job: JobRecord) -> None:
        row = self._row(job)
        with self._db.transaction() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))

    def get(self, job_id: str) -> JobRecord:
        with self._db.reading() as db:
            found = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found is None:
            raise NotFound(f"no job {job_id!r}")
        return self._record(found)

    def all(self) -> list[JobRecord]:
        """Every job, newest first."""
        with self._db.reading() as db:
            rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created DESC, rowid DESC")
            return [self._record(r) for r in rows.fetchall()]

    def update(self, job_id: str, expect: frozenset[str] | None = None, **changes: Any) -> bool:
        """Set some columns; with `expect`, only while the job's state is one of them. True if it changed."""
        unknown = set(changes) - set(COLUMNS)
        assert not unknown, unknown
        sets = {
            k: json.dumps(list(v)) if k in ("shape", "analyses") and v is not None else v for k, v in changes.items()
        }
        where = "id = ?"
        args = [*sets.values(), job_id]
        if expect is not None:
            where += f" AND state IN ({', '.join('?' * len(expect))})"
            args += sorted(expect)
        with self._db.transaction() as db:
            cur = db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE {where}", args)
            return cur.rowcount == 1

    def interrupt_unfinished(self) -> list[str]:
        """At startup: jobs left queued or running by a previous process become `interrupted`."""
        with self._db.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")]
            db.execute("UPDATE jobs SET state = 'interrupted' WHERE state IN ('queued', 'running')")
        return ids

    # -- results ---------------------------------------------------------------------------------

    def commit(
        self,
        job_id: str,
        texts: list[TextResult],
        similarity: dict[str, np.ndarray],
        seconds: float,
        batch: int | None,
    ) -> bool:
        """Store a batch's texts, add its similarity sums, advance the progress, mark `batch` finished: all or nothing,
        and only while the job is running. False (nothing stored) once it has been cancelled, interrupted or failed.

        Raises sqlite3.IntegrityError (and stores nothing) when a text or the batch is already stored.
        """
        with self._db.transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if state is None or state[0] != "running":
                return False
            for t in texts:
                metrics = sorted(t.values)
                vals = np.stack([t.values[m] for m in metrics]).astype(np.float64)
                cells = np.stack([t.where[m] for m in metrics]).astype(np.int64)
                db.execute(
                    "INSERT INTO job_texts VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, t.index, t.n_tokens, json.dumps(metrics), vals.tobytes(), cells.tobytes()),
                )
            for metric, total in similarity.items():
                found = db.execute(
                    "SELECT n_texts, total FROM job_similarity WHERE job_id = ? AND metric = ?", (job_id, metric)
                ).fetchone()
                n, summed = len(texts), np.asarray(total, dtype=np.float64)
                if found is not None:
                    n += found[0]
                    summed = summed + np.frombuffer(found[1], dtype=np.float64).reshape(summed.shape)
                db.execute(
                    "INSERT OR REPLACE INTO job_similarity VALUES (?, ?, ?, ?)", (job_id, metric, n, summed.tobytes())
                )
            if batch is not None:
                db.execute("INSERT INTO job_batches VALUES (?, ?)", (job_id, batch))
            db.execute(
                "UPDATE jobs SET done = done + ?, tokens = tokens + ?, run_s = run_s + ? WHERE id = ?",
                (len(texts), sum(t.n_tokens for t in texts), seconds, job_id),
            )
        return True

    def finish_batch(self, job_id: str, batch: int) -> None:
        """Mark a batch finished whose texts were committed in pieces (after an out-of-memory retry)."""
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO job_batches VALUES (?, ?)", (job_id, batch))

    def finished_batches(self, job_id: str) -> set[int]:
        with self._db.reading() as db:
            rows = db.execute("SELECT batch FROM job_batches WHERE job_id = ?", (job_id,)).fetchall()
        return {r[0] for r in rows}

    def stored_texts(self, job_id: str) -> set[int]:
        with self._db.reading() as db:
            rows = db.execute("SELECT text_index FROM job_texts WHERE job_id = ?", (job_id,)).fetchall()
        return {r[0] for r in rows}

    def values(self, job_id: str, shape: tuple[int, int]) -> StoredValues:
        """Every stored text's metric grids, in dataset order."""
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT text_index, n_tokens, metrics, vals FROM job_texts WHERE job_id = ? ORDER BY text_index",
                (job_id,),
            ).fetchall()
        grids: dict[str, list[np.ndarray]] = {}
        for _, _, metrics, vals in rows:
            names = json.loads(metrics)
            stacked = np.frombuffer(vals, dtype=np.float64).reshape(len(names), *shape)
            for name, grid in zip(names, stacked, strict=True):
                grids.setdefault(name, []).append(grid)
        return StoredValues(
            indices=np.array([r[0] for r in rows], dtype=np.int64),
            n_tokens=np.array([r[1] for r in rows], dtype=np.int64),
            values={m: np.stack(g) for m, g in grids.items()},
        )

    def cells(self, job_id: str, text_index: int, metric: str, shape: tuple[int, int]) -> np.ndarray | None:
        """(n_layers, n_heads, 2) query/key positions of one text and metric, or None when not stored."""
        with self._db.reading() as db:
            found = db.execute(
                "SELECT metrics, cells FROM job_texts WHERE job_id = ? AND text_index = ?", (job_id, text_index)
            ).fetchone()
        if found is None or metric not in (names := json.loads(found[0])):
            return None
        stacked = np.frombuffer(found[1], dtype=np.int64).reshape(len(names), *shape, 2)
        cell: np.ndarray = stacked[names.index(metric)]
        return cell

    def similarity(self, job_id: str, metric: str) -> tuple[int, np.ndarray] | None:
        """(texts summed, the (n, n) sum) of a similarity metric, or None before any."""
        with self._db.reading() as db:
            found = db.execute(
                "SELECT n_texts, total FROM job_similarity WHERE job_id = ? AND metric = ?", (job_id, metric)
            ).fetchone()
        if found is None:
            return None
        flat = np.frombuffer(found[1], dtype=np.float64)
        side = round(flat.size**0.5)
        return int(found[0]), flat.reshape(side, side)

    # -- rows ------------------------------------------------------------------------------------

    @staticmethod
    def _row(job: JobRecord) -> dict[str, Any]:
        row = {name: getattr(job, name) for name in COLUMNS}
        row["analyses"] = json.dumps(job.analyses)
        row["shape"] = json.dumps(list(job.shape)) if job.shape is not None else None
        return row

    @staticmethod
    def _record(row: tuple[Any, ...]) -> JobRecord:
        values = dict(zip(COLUMNS, row, strict=True))
        values["analyses"] = json.loads(values["analyses"])
        values["shape"] = tuple(json.loads(values["shape"])) if values["shape"] else None
        return JobRecord(**values)
