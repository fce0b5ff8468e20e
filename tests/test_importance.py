"""Gradient importance against finite differences; the batched sweep against one-at-a-time ablation."""

from __future__ import annotations

import pytest
import torch

from app.inspect.engine import runs
from app.inspect.engine.gates import head_gates
from app.inspect.intervene.ablation import ablate
from app.inspect.intervene.importance import ablation_sweep, gradient_importance, normalise_per_layer
from tests.support.models import ARCHS, tiny_loaded

TEXT = "In the beginning the heads attended to nothing, and then to everything at once."


def _loss_at(loaded, ids: list[int], gates: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    x = torch.tensor([ids])
    with torch.no_grad(), head_gates(loaded.adapter, gates, "zero", layers=list(range(gates.shape[1]))):
        logits = loaded.model(x).logits.double()
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_matches_finite_differences(arch: str) -> None:
    loaded = tiny_loaded(arch, seed=3)
    ids = runs.encode(loaded.tokenizer, TEXT)
    scores = gradient_importance(loaded, ids)
    layout = loaded.adapter.layout
    assert scores.shape == (layout.n_layers, layout.n_heads)
    assert (scores >= 0).all()
    eps = 1e-2
    for layer, head in [(0, 0), (0, 3), (1, 1), (1, 2)]:
        up = torch.ones(1, layout.n_layers, layout.n_heads)
        down = up.clone()
        up[0, layer, head] += eps
        down[0, layer, head] -= eps
        fd = (_loss_at(loaded, ids, up) - _loss_at(loaded, ids, down)) / (2 * eps)
        assert float(scores[layer, head]) == pytest.approx(abs(fd), rel=2e-2, abs=2e-5)


def test_sweep_equals_one_at_a_time_ablation() -> None:
    loaded = tiny_loaded("llama", seed=4)
    run = runs.analyse(loaded, TEXT)
    layout = loaded.adapter.layout
    sweep = ablation_sweep(loaded, run, batch_size=3)  # 4 heads a layer: batches of 3 and 1 (never across layers)
    for layer in range(layout.n_layers):
        for head in range(layout.n_heads):
            one = ablate(loaded, run, [(layer, head)], "zero", 1)
            assert float(sweep.delta_loss[layer, head]) == pytest.approx(one.delta_loss, abs=1e-5)
            assert float(sweep.kl_last[layer, head]) == pytest.approx(one.kl_last, abs=1e-5)
    assert sweep.kl_last.max() > 0


def test_per_layer_normalisation_has_unit_norm() -> None:
    scores = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    norm = normalise_per_layer(scores)
    torch.testing.assert_close(norm[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(norm[1], torch.zeros(2))
