"""Dataset-level statistics against their definitions: bootstrap CI done the slow way, Spearman by scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from app.corpus import stats


def sample(n_texts: int = 40, seed: int = 1) -> np.ndarray:
    """(n_texts, 2, 3) values with NaN patterns: some missing, one head with one text, one with none."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_texts, 2, 3)) + np.arange(6).reshape(2, 3)
    values[rng.random(n_texts) < 0.3, 0, 1] = np.nan
    values[1:, 1, 1] = np.nan  # n = 1
    values[:, 1, 2] = np.nan  # n = 0
    return values


def slow_bootstrap(values: np.ndarray, seed: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """The obvious way: per resample draw texts, per head average the drawn texts that count, then percentiles."""
    n_texts = values.shape[0]
    rng = np.random.default_rng(seed)
    means = np.full((n_boot, *values.shape[1:]), np.nan)
    for b in range(n_boot):
        counts = rng.multinomial(n_texts, [1 / n_texts] * n_texts)
        drawn = values[np.repeat(np.arange(n_texts), counts)]  # n_texts texts, with replacement
        for layer in range(values.shape[1]):
            for head in range(values.shape[2]):
                kept = drawn[:, layer, head][~np.isnan(drawn[:, layer, head])]
                if kept.size:
                    means[b, layer, head] = kept.mean()
    low = np.full(values.shape[1:], np.nan)
    high = np.full(values.shape[1:], np.nan)
    for layer in range(values.shape[1]):
        for head in range(values.shape[2]):
            column = means[:, layer, head][~np.isnan(means[:, layer, head])]
            if column.size:
                low[layer, head], high[layer, head] = np.percentile(column, [2.5, 97.5])
    return low, high


@pytest.mark.parametrize("chunk_cells", [1 << 20, 97])  # one chunk, or many uneven ones: same draws
def test_bootstrap_ci_equals_the_slow_definition(chunk_cells: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "BOOT_CHUNK_CELLS", chunk_cells)
    values = sample()
    got = stats.summarise(values, seed=7, n_boot=1000)
    low, high = slow_bootstrap(values, seed=7, n_boot=1000)
    np.testing.assert_allclose(got.ci_low, low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.ci_high, high, rtol=0, atol=1e-12)
    assert np.isnan(got.ci_low[1, 2]) and np.isnan(got.ci_high[1, 2])  # no text counts
    assert got.ci_low[1, 1] == got.ci_high[1, 1] == values[0, 1, 1]  # one text: every resample is it


def test_mean_std_n_follow_numpy_with_nan() -> None:
    values = sample()
    got = stats.summarise(values, seed=0)
    n = (~np.isnan(values)).sum(0)
    np.testing.assert_array_equal(got.n, n)
    assert got.n.dtype == np.int64
    ok = n > 0
    np.testing.assert_allclose(got.mean[ok], np.nanmean(values[:, ok], axis=0), rtol=0, atol=1e-12)
    many = n > 1
    np.testing.assert_allclose(got.std[many], np.nanstd(values[:, many], axis=0, ddof=1), rtol=0, atol=1e-12)
    assert got.std[1, 1] == 0.0 and got.std[1, 2] == 0.0  # ddof=1 undefined for n < 2: 0
    assert np.isnan(got.mean[1, 2])
    assert np.all(got.ci_low[ok] <= got.mean[ok]) and np.all(got.mean[ok] <= got.ci_high[ok])


def test_ci_is_seeded_and_near_the_normal_interval() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(loc=2.0, scale=1.5, size=(400, 3, 4))
    a, b, c = (stats.summarise(values, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.ci_low, b.ci_low)
    assert not np.array_equal(a.ci_low, c.ci_low)
    half = 1.96 * a.std / math.sqrt(400)  # the bootstrap percentile CI of a mean approaches this
    np.testing.assert_allclose(a.ci_high - a.ci_low, 2 * half, rtol=0.15)
    np.testing.assert_allclose((a.ci_high + a.ci_low) / 2, a.mean, atol=0.2 * half.max())


def test_bootstrap_is_vectorised_over_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resample draws and products are per chunk of resamples, never per head: counts do not grow with heads."""
    calls: list[tuple[int, int]] = []
    real = stats.resample_counts

    def counting(rng: np.random.Generator, n_texts: int, n_rows: int) -> np.ndarray:
        calls.append((n_texts, n_rows))
        return real(rng, n_texts, n_rows)

    monkeypatch.setattr(stats, "resample_counts", counting)
    values = np.random.default_rng(0).random((300, 30, 9))  # the default model's 270 heads
    stats.summarise(values, seed=0, n_boot=1000)
    chunk = stats.BOOT_CHUNK_CELLS // 300
    assert len(calls) == math.ceil(1000 / chunk) and sum(rows for _, rows in calls) == 1000


def test_nan_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(57, 11))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 3] = np.nan
    x[1:, 4] = np.nan
    for q in (0.0, 2.5, 50.0, 97.5, 100.0):
        with pytest.warns(RuntimeWarning):  # numpy warns about the all-NaN column
            expected = np.nanpercentile(x, q, axis=0)
        np.testing.assert_allclose(stats.nan_percentile(x, q), expected, rtol=0, atol=1e-12)


def test_split_half_is_spearman_of_the_half_means() -> None:
    values = sample(n_texts=31, seed=4)
    got = stats.split_half(values, seed=9)
    order = np.random.default_rng(9).permutation(31)
    with pytest.warns(RuntimeWarning):  # the head no text counts for: no mean, left out
        a = np.nanmean(values[order[:15]].reshape(15, -1), axis=0)
        b = np.nanmean(values[order[15:]].reshape(16, -1), axis=0)
    both = np.isfinite(a) & np.isfinite(b)
    expected = spearmanr(a[both], b[both]).statistic
    assert got is not None and abs(got - expected) < 1e-12
    assert stats.split_half(values, seed=9) == got  # seeded


def test_split_half_with_ties_and_too_few() -> None:
    values = np.random.default_rng(0).integers(0, 3, size=(20, 2, 4)).astype(float)  # many tied means
    got = stats.split_half(values, seed=1)
    order = np.random.default_rng(1).permutation(20)
    a, b = (values[part].reshape(10, -1).mean(0) for part in (order[:10], order[10:]))
    assert got is not None and abs(got - spearmanr(a, b).statistic) < 1e-12
    assert stats.split_half(values[:3], seed=0) is None  # fewer than two texts per half
    assert stats.split_half(np.ones((10, 2, 4)), seed=0) is None  # every head the same: no ranking
    only_two = np.full((10, 2, 4), np.nan)
    only_two[:, 0, :2] = np.random.default_rng(0).random((10, 2))
    assert stats.split_half(only_two, seed=0) is None  # two heads are not a ranking


def test_top_examples_order_nan_and_ties() -> None:
    values = np.full((6, 1, 2), np.nan)
    values[:, 0, 0] = [0.5, np.nan, 0.9, 0.5, 0.1, 0.9]
    assert stats.top_examples(values, 0, 0, 3) == [(2, 0.9), (5, 0.9), (0, 0.5)]
    assert stats.top_examples(values, 0, 0, 10) == [(2, 0.9), (5, 0.9), (0, 0.5), (3, 0.5), (4, 0.1)]
    assert stats.top_examples(values, 0, 1, 3) == []
