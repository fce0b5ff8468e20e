"""What a job's stored per-text rows say: per-head statistics, top examples, averaged similarity, export rows.

Everything is computed from the rows in the JobStore (so a partial job answers from its finished
batches, and a restart changes nothing) with app.corpus.stats. Plain Python values out (NaN → None).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.corpus import sampling, stats
from app.corpus.jobstore import JobRecord, JobStore, StoredValues
from app.errors import Conflict, InvalidInput
from app.inspect.observe import registry

STAT_FIELDS = ("mean", "std", "n", "ci_low", "ci_high")
# the corpus contract's first name for prefix matching on a text; jobs stored before the registry use it
RENAMED = {"induction": "text_induction"}
FIRST_NAME = {new: old for old, new in RENAMED.items()}


def _current(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A job's stored grids under today's metric names."""
    return {RENAMED.get(name, name): grid for name, grid in values.items()}


CACHED_TABLES = 8


@dataclass
class HeadTable:
    """Every head's statistics of every computed metric. heads: [{layer, head, kv_group, metric: {...}}]."""

    n_texts: int
    partial: bool
    metrics: list[str]
    reliability: dict[str, float | None]
    heads: list[dict[str, Any]]


def _number(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _shape(job: JobRecord) -> tuple[int, int, int]:
    if job.shape is None or job.done == 0:
        raise Conflict(f"job {job.id} has no finished batch yet ({job.state})")
    return job.shape


class Results:
    """Read side of jobs. Head tables are cached per (job, texts done): polling a running job is cheap."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._tables: OrderedDict[tuple[str, int, bool], HeadTable] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def shape(job: JobRecord) -> tuple[int, int, int]:
        """(n_layers, n_heads, group_size) of the job's model; 409 before its first finished batch."""
        return _shape(job)

    def heads(self, job: JobRecord) -> HeadTable:
        n_layers, n_heads, group_size = _shape(job)
        key = (job.id, job.done, job.state == "done")
        with self._lock:
            if key in self._tables:
                return self._tables[key]
        stored = self.store.values(job.id, (n_layers, n_heads))
        values = _current(stored.values)
        metrics = [m for m in (*(m.name for m in registry.text_metrics()), "importance") if m in values]
        summaries = {m: stats.summarise(values[m], job.seed) for m in metrics}
        heads: list[dict[str, Any]] = []
        for layer in range(n_layers):
            for head in range(n_heads):
                row: dict[str, Any] = {"layer": layer, "head": head, "kv_group": head // group_size}
                for m, s in summaries.items():
                    row[m] = {f: _cell(getattr(s, f), layer, head, f) for f in STAT_FIELDS}
                heads.append(row)
        table = HeadTable(
            n_texts=len(stored.indices),
            partial=job.state != "done",
            metrics=metrics,
            reliability={m: stats.split_half(values[m], job.seed) for m in metrics},
            heads=heads,
        )
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > CACHED_TABLES:
                self._tables.popitem(last=False)
        return table

    def examples(
        self, job: JobRecord, metric: str, layer: int, head: int, k: int
    ) -> list[tuple[int, float, tuple[int, int] | None]]:
        """The k texts where the head scores highest: (text_index, score, (query_pos, key_pos) or None)."""
        stored, metric = self._scores(job, metric, layer, head)
        return [
            (int(stored.indices[row]), float(score), self._where(job, int(stored.indices[row]), metric, layer, head))
            for row, score in stats.top_examples(stored.values[metric], layer, head, k)
        ]

    def decile_examples(
        self, job: JobRecord, metric: str, layer: int, head: int, k: int, seed: int
    ) -> tuple[list[float], list[tuple[int, int, float, tuple[int, int] | None]]]:
        """Up to k texts drawn (seeded) from each decile of the head's per-text scores, top decile first.

        Returns the 11 decile edges and (text_index, decile, score, (query_pos, key_pos) or None) per text.
        """
        stored, metric = self._scores(job, metric, layer, head)
        drawn = sampling.deciles(stored.values[metric][:, layer, head], k, seed)
        out = []
        for row, decile, score in drawn.rows:
            text_index = int(stored.indices[row])
            out.append((text_index, decile, score, self._where(job, text_index, metric, layer, head)))
        return [float(b) for b in drawn.bounds], out

    def _scores(self, job: JobRecord, metric: str, layer: int, head: int) -> tuple[StoredValues, str]:
        """The job's stored values under today's names, checked to hold `metric` and head (layer, head)."""
        n_layers, n_heads, _ = _shape(job)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InvalidInput(f"head L{layer}H{head} out of range; the job's model has {n_layers}×{n_heads} heads")
        stored = self.store.values(job.id, (n_layers, n_heads))
        stored = StoredValues(stored.indices, stored.n_tokens, _current(stored.values))
        metric = RENAMED.get(metric, metric)
        if metric not in stored.values:
            raise InvalidInput(f"metric {metric!r} was not computed by this job; it has {sorted(stored.values)}")
        return stored, metric

    def _where(self, job: JobRecord, text_index: int, metric: str, layer: int, head: int) -> tuple[int, int] | None:
        """Where in the text the head does it most for `metric`: (query_pos, key_pos), or None (no such cell)."""
        n_layers, n_heads, _ = _shape(job)
        cells = self.store.cells(job.id, text_index, metric, (n_layers, n_heads))
        if cells is None and metric in FIRST_NAME:
            cells = self.store.cells(job.id, text_index, FIRST_NAME[metric], (n_layers, n_heads))
        if cells is None or int(cells[layer, head, 0]) < 0:
            return None
        return int(cells[layer, head, 0]), int(cells[layer, head, 1])

    def similarity(self, job: JobRecord, metric: str) -> tuple[int, list[dict[str, int]], np.ndarray]:
        """(texts averaged, heads in layer order, the (n, n) mean similarity matrix)."""
        n_layers, n_heads, _ = _shape(job)
        if "similarity" not in job.analyses:
            raise Conflict(f"job {job.id} did not compute similarity (analyses: {job.analyses})")
        found = self.store.similarity(job.id, metric)
        if found is None:
            raise Conflict(f"job {job.id} has no similarity yet")
        n, total = found
        heads = [{"layer": ly, "head": h} for ly in range(n_layers) for h in range(n_heads)]
        return n, heads, total / max(n, 1)


def _cell(grid: np.ndarray, layer: int, head: int, field: str) -> float | int | None:
    value = grid[layer, head]
    return int(value) if field == "n" else _number(float(value))


def export_rows(table: HeadTable) -> list[dict[str, Any]]:
    """One row per head × metric: layer, head, kv_group, metric, mean, std, n, ci_low, ci_high."""
    rows = []
    for metric in table.metrics:
        for h in table.heads:
            rows.append(
                {"layer": h["layer"], "head": h["head"], "kv_group": h["kv_group"], "metric": metric, **h[metric]}
            )
    return rows
