"""bench.flops: the work floors quoted beside the sweep, patching and lens rows, against hand counts."""

from __future__ import annotations

import pytest

from bench import flops
from tests.support.models import tiny_loaded


def test_block_and_head_counts_equal_the_config() -> None:
    loaded = tiny_loaded("llama")
    cfg, layout = loaded.model.config, loaded.adapter.layout
    d, inner, kv = cfg.hidden_size, cfg.intermediate_size, layout.n_kv_heads * layout.head_dim
    linear = d * d + 2 * d * kv + d * d + 3 * d * inner  # q, k, v, o; gate, up, down
    t = 10
    assert flops.block_macs(loaded, t) == linear + 2 * layout.n_heads * layout.head_dim * (t + 1) / 2
    assert flops.head_macs(loaded) == cfg.vocab_size * d


@pytest.mark.parametrize("lm_head", [True, False])
def test_every_head_floor_sums_each_heads_run(lm_head: bool) -> None:
    loaded = tiny_loaded("llama")
    layout, t = loaded.adapter.layout, 12
    per_head = [
        t * ((layout.n_layers - layer) * flops.block_macs(loaded, t) + (flops.head_macs(loaded) if lm_head else 0))
        for layer in range(layout.n_layers)
        for _ in range(layout.n_heads)
    ]
    expected = sum(per_head) / (len(per_head) * flops.forward_macs(loaded, t))
    assert flops.every_head_from_its_block(loaded, t, lm_head) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 1
