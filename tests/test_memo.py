"""A run's memo counts every byte it keeps, and the run cache enforces its limit when a run grows."""

from __future__ import annotations

import dataclasses

import torch

from app.inspect.engine import runs
from app.inspect.engine.memo import Key, Memo, nbytes
from app.inspect.engine.runs import RunCache
from tests.support.models import tiny_loaded

BIG = Key[torch.Tensor]("big")


@dataclasses.dataclass
class _Pair:
    a: torch.Tensor
    b: list[tuple[torch.Tensor, float]]


def test_nbytes_counts_the_tensors_in_nested_values() -> None:
    value = _Pair(torch.zeros(3, 4), [(torch.zeros(5, dtype=torch.float64), 1.0)])
    assert nbytes(value) == 3 * 4 * 4 + 5 * 8
    memo = Memo()
    memo.put(Key[_Pair]("pair"), value)
    memo.put(BIG, torch.zeros(10))
    assert memo.nbytes == 48 + 40 + 40
    assert memo.pop(BIG) is not None and memo.nbytes == 88 and BIG not in memo


def test_the_cache_evicts_as_soon_as_a_run_grows_past_its_limit() -> None:
    loaded = tiny_loaded("llama")
    first, second = runs.analyse(loaded, "one two three"), runs.analyse(loaded, "four five six")
    cache = RunCache(max_entries=8, max_bytes=first.nbytes + second.nbytes + 1000)
    cache.put(first)
    cache.put(second)
    assert len(cache) == 2
    second.memo.put(BIG, torch.zeros(1000))  # 4,000 bytes more: the two no longer fit
    assert len(cache) == 1 and cache.get(loaded.name, "four five six") is second
    assert first.memo.on_grow is None  # an evicted run no longer reports to the cache
    runs.baseline(loaded.adapter.lm_head(), second)  # a baseline is counted too
    assert second.memo.nbytes > 4000 and runs.BASELINE in second.memo
