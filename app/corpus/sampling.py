"""Seeded samples of a job's texts and positions: examples from each decile of a head's scores, and a reservoir
of (text, position) pairs whose size does not grow with the corpus.

Both are deterministic under a seed and independent of how the texts were batched: a decile's draw depends only
on the scores, and a position's priority in the reservoir only on (seed, text index, position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_DECILES = 10


@dataclass(frozen=True)
class DecileSample:
    """Rows drawn from each decile of one head's per-text scores."""

    bounds: np.ndarray  # (11,) the deciles' edges: np.quantile(scores, [0, 0.1, …, 1]) over the texts that count
    rows: list[tuple[int, int, float]]  # (row of the values, decile 0–9, score): decile 9 first, by score within


def deciles(scores: np.ndarray, k: int, seed: int) -> DecileSample:
    """Up to k rows drawn without replacement from each decile of `scores` (NaN rows never).

    A score s is in decile d when bounds[d] ≤ s < bounds[d + 1] (the top decile also holds its upper edge), so
    every drawn score lies within its decile's bounds. Deciles that hold no score (few texts, many ties) are empty.

    Args:
        scores: (n_texts,) float, NaN = the text does not count for this head.
        k: rows per decile.
        seed: seeds the draw (same seed and scores, same rows).
    """
    rows = np.flatnonzero(~np.isnan(scores))
    if rows.size == 0:
        return DecileSample(np.full(N_DECILES + 1, np.nan), [])
    found = scores[rows]
    bounds = np.quantile(found, np.linspace(0.0, 1.0, N_DECILES + 1))
    decile = np.clip(np.searchsorted(bounds[1:-1], found, side="right"), 0, N_DECILES - 1)
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int, float]] = []
    for d in range(N_DECILES - 1, -1, -1):
        members = rows[decile == d]
        drawn = members if members.size <= k else rng.choice(members, size=k, replace=False)
        ranked = drawn[np.lexsort((drawn, -scores[drawn]))]
        out += [(int(r), d, float(scores[r])) for r in ranked]
    return DecileSample(bounds, out)


class Reservoir:
    """A seeded uniform sample of at most `cap` (text, position) items from a stream, with a payload per item.

    Each item gets a priority drawn from a generator seeded by (seed, text index); the reservoir keeps the `cap`
    items of lowest priority seen so far (bottom-k sampling: a uniform sample without replacement). Its arrays are
    allocated once at `cap` rows and a newcomer takes an evicted item's row, so memory is `cap` items whatever the
    corpus size, and the sample does not depend on the order or batching of the texts.
    """

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.seed = seed
        self.seen = 0
        self._size = 0
        self._priority = np.empty(cap)
        self._text = np.empty(cap, dtype=np.int64)
        self._position = np.empty(cap, dtype=np.int64)
        self._payload: dict[str, np.ndarray] = {}

    def priorities(self, text_index: int, n_positions: int) -> np.ndarray:
        """(n_positions,) the priorities of one text's positions: the same whenever that text is seen."""
        return np.random.default_rng([self.seed, text_index]).random(n_positions)

    def offer(self, text_index: int, positions: np.ndarray, payload: dict[str, np.ndarray]) -> None:
        """Offer positions of one text (all of its positions, in order), each with its payload rows (first axis)."""
        n = positions.size
        self.seen += n
        prio = self.priorities(text_index, n)
        for name, rows in payload.items():  # allocated at the first offer, from its rows' shape and type
            if name not in self._payload:
                self._payload[name] = np.empty((self.cap, *rows.shape[1:]), dtype=rows.dtype)
        size = self._size
        if size + n <= self.cap:  # still filling up
            new, slots = np.arange(n), np.arange(size, size + n)
        else:
            kept = np.argpartition(np.concatenate([self._priority[:size], prio]), self.cap - 1)[: self.cap]
            new = np.sort(kept[kept >= size]) - size  # newcomers that get in
            staying = np.zeros(size, dtype=bool)
            staying[kept[kept < size]] = True
            slots = np.concatenate([np.flatnonzero(~staying), np.arange(size, self.cap)])[: new.size]
        self._priority[slots] = prio[new]
        self._text[slots] = text_index
        self._position[slots] = positions[new]
        for name, rows in payload.items():
            self._payload[name][slots] = rows[new]
        self._size = min(self.cap, size + n)

    def sorted(self) -> None:
        """Order the kept items by (text index, position), for output that reads in text order."""
        order = np.lexsort((self.position, self.text_index))
        self._priority[: self._size] = self._priority[order]
        self._text[: self._size] = self._text[order]
        self._position[: self._size] = self._position[order]
        for rows in self._payload.values():
            rows[: self._size] = rows[order]

    @property
    def text_index(self) -> np.ndarray:
        """(m,) the dataset index of each kept item."""
        return self._text[: self._size]

    @property
    def position(self) -> np.ndarray:
        """(m,) each kept item's position in its text."""
        return self._position[: self._size]

    @property
    def payload(self) -> dict[str, np.ndarray]:
        """Each payload's rows of the kept items, (m, ...)."""
        return {name: rows[: self._size] for name, rows in self._payload.items()}

    def __len__(self) -> int:
        return self._size
