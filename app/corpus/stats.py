"""Dataset-level statistics of per-text head scores: mean, std, n, bootstrap CI, split-half reliability.

Every function takes values (n_texts, n_layers, n_heads) with NaN where a text does not count for a
head (e.g. induction on a text without a repeated token) and reduces over texts, all heads at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

CI_LEVEL = 0.95
BOOT_CHUNK_CELLS = 1 << 20  # resamples × texts per step: bounds the resample-count matrix at 8 MB
MIN_SPLIT_TEXTS = 4  # split-half needs at least two texts per half
MIN_SPLIT_HEADS = 3  # and a ranking of at least three heads


@dataclass
class Summary:
    """Per head, each (n_layers, n_heads): mean, std (ddof=1), n texts that count, 95% percentile CI."""

    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray  # int64
    ci_low: np.ndarray
    ci_high: np.ndarray


def summarise(values: np.ndarray, seed: int, n_boot: int = 1000) -> Summary:
    """Mean, std, n and a seeded percentile-bootstrap 95% CI of the mean, per head, over texts.

    A bootstrap resample draws n_texts texts with replacement; a head's resample mean is over the
    drawn texts that count for it (non-NaN). Resamples are drawn as multinomial counts per text,
    (n_boot, n_texts), so every head's resample means are one matrix product, a chunk of resamples
    at a time. A head with n = 0 has NaN mean and CI; std is 0 when n < 2.

    Args:
        values: (n_texts, n_layers, n_heads) float, NaN = does not count.
        seed: seeds the resamples (same seed, same CI).
        n_boot: number of resamples.
    """
    n_texts, shape = values.shape[0], values.shape[1:]
    flat = values.reshape(n_texts, -1).astype(np.float64)  # (N, K)
    valid = ~np.isnan(flat)
    filled = np.where(valid, flat, 0.0)
    n = valid.sum(0)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / n
        sq = np.where(valid, flat - mean, 0.0) ** 2
        std = np.where(n > 1, np.sqrt(sq.sum(0) / np.maximum(n - 1, 1)), 0.0)
    low, high = bootstrap_ci(filled, valid.astype(np.float64), seed, n_boot)
    return Summary(
        mean=mean.reshape(shape),
        std=std.reshape(shape),
        n=n.astype(np.int64).reshape(shape),
        ci_low=low.reshape(shape),
        ci_high=high.reshape(shape),
    )


def resample_counts(rng: np.random.Generator, n_texts: int, n_rows: int) -> np.ndarray:
    """(n_rows, n_texts) float: how often each text is drawn in each of n_rows bootstrap resamples."""
    return rng.multinomial(n_texts, np.full(n_texts, 1.0 / n_texts), size=n_rows).astype(np.float64)


def bootstrap_ci(filled: np.ndarray, valid: np.ndarray, seed: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the mean per column from (N, K) values (0 where invalid) and a (N, K) 0/1 mask."""
    n_texts, k = filled.shape
    if n_texts == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, k))
    chunk = max(1, BOOT_CHUNK_CELLS // n_texts)
    for start in range(0, n_boot, chunk):  # a few chunks: the resample counts stay small in memory
        counts = resample_counts(rng, n_texts, min(chunk, n_boot - start))  # (c, N)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + counts.shape[0]] = (counts @ filled) / (counts @ valid)  # (c, K)
    tail = 100 * (1 - CI_LEVEL) / 2
    return nan_percentile(means, tail), nan_percentile(means, 100 - tail)


def nan_percentile(x: np.ndarray, q: float) -> np.ndarray:
    """np.nanpercentile(x, q, axis=0) (linear interpolation), vectorised over columns: (R, K) → (K,)."""
    ordered = np.sort(x, axis=0)  # NaN sort last
    m = (~np.isnan(x)).sum(0)  # (K,)
    pos = q / 100 * np.maximum(m - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
    cols = np.arange(x.shape[1])
    below, above = ordered[lo, cols], ordered[hi, cols]
    out = below + (above - below) * (pos - lo)
    return np.where(m > 0, out, np.nan)


def split_half(values: np.ndarray, seed: int) -> float | None:
    """Spearman correlation of head means between two random halves of the texts (seeded).

    High values mean the dataset is large enough for the head ranking to be stable. None when there
    are too few texts or heads with a mean in both halves, or a half ranks every head the same.
    """
    n_texts = values.shape[0]
    if n_texts < MIN_SPLIT_TEXTS:
        return None
    order = np.random.default_rng(seed).permutation(n_texts)
    flat = values.reshape(n_texts, -1)
    halves = []
    for part in (order[: n_texts // 2], order[n_texts // 2 :]):
        chosen = flat[part]
        valid = ~np.isnan(chosen)
        with np.errstate(invalid="ignore", divide="ignore"):
            halves.append(np.where(valid, chosen, 0.0).sum(0) / valid.sum(0))
    a, b = halves
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < MIN_SPLIT_HEADS:
        return None
    ra, rb = rankdata(a[both]), rankdata(b[both])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def top_examples(values: np.ndarray, layer: int, head: int, k: int) -> list[tuple[int, float]]:
    """The k texts (row index, score) where the head scores highest; NaN never, ties by lower index."""
    scores = values[:, layer, head]
    rows = np.flatnonzero(~np.isnan(scores))
    ranked = rows[np.lexsort((rows, -scores[rows]))][:k]
    return [(int(i), float(scores[i])) for i in ranked]
