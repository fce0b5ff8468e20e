"""Head gates: properties of zero and mean ablation on tiny models."""

from __future__ import annotations

import pytest
import torch

from app.inspect.engine import runs
from app.inspect.engine.gates import gate_tensor, head_gates
from app.inspect.engine.memo import Memo
from app.inspect.intervene.ablation import ablate
from app.inspect.model import capture
from tests.support.checks import hook_count
from tests.support.models import ARCHS, tiny_loaded

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps."


def _hidden(loaded, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return loaded.adapter.backbone()(input_ids=ids, use_cache=False).last_hidden_state


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_mask_is_bit_identical_to_no_hooks(arch: str) -> None:
    loaded = tiny_loaded(arch)
    ids = torch.tensor([runs.encode(loaded.tokenizer, TEXT)])
    plain = loaded.model(ids).logits
    layout = loaded.adapter.layout
    gates = gate_tensor(1, layout.n_layers, layout.n_heads, [[]])
    for layers in (None, list(range(layout.n_layers))):  # also with a hook on every layer
        with head_gates(loaded.adapter, gates, "zero", layers=layers):
            gated = loaded.model(ids).logits
        assert torch.equal(gated, plain)
    assert hook_count(loaded.model) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_every_head_of_a_layer_leaves_only_the_projection_bias(arch: str) -> None:
    loaded = tiny_loaded(arch)
    layout = loaded.adapter.layout
    ids = torch.tensor([runs.encode(loaded.tokenizer, TEXT)])
    out_proj = loaded.adapter.out_proj(1)
    seen: list[torch.Tensor] = []
    handle = out_proj.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        gates = gate_tensor(1, layout.n_layers, layout.n_heads, [[(1, h) for h in range(layout.n_heads)]])
        with head_gates(loaded.adapter, gates, "zero"):
            _hidden(loaded, ids)
    finally:
        handle.remove()
    bias = loaded.adapter.out_proj_bias(1)
    expected = torch.zeros_like(seen[0]) if bias is None else bias.expand_as(seen[0])
    assert (bias is not None) == (arch in ("gpt2", "gpt_neox"))
    torch.testing.assert_close(seen[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_a_head_leaves_earlier_layers_bit_identical(arch: str) -> None:
    loaded = tiny_loaded(arch)
    run = runs.analyse(loaded, TEXT)
    layout = loaded.adapter.layout
    cmp = ablate(loaded, run, [(1, 2)], "zero", 5, [(0, h) for h in range(layout.n_heads)] + [(1, 0)])
    for h in range(layout.n_heads):
        assert torch.equal(cmp.maps[(0, h)], run.maps(0, [h], layout.group_size)[0])
    assert cmp.kl_last > 0  # the ablation did change the prediction


def test_mean_ablation_of_a_constant_head_changes_nothing() -> None:
    loaded = tiny_loaded("gpt2")
    layout = loaded.adapter.layout
    # GPT-2's value projection has a bias: with zero value weights, head 3 of layer 1 outputs the
    # bias at every position (its weights sum to 1), a nonzero constant.
    c_attn = loaded.adapter.attention(1).c_attn  # Conv1D: weight (d_model, 3·d_model), columns q | k | v
    d, hd = layout.d_model, layout.head_dim
    cols = slice(2 * d + 3 * hd, 2 * d + 4 * hd)
    with torch.no_grad():
        c_attn.weight[:, cols] = 0
        c_attn.bias[cols] = torch.linspace(-1, 1, hd)
    run = runs.analyse(loaded, TEXT)
    mean = ablate(loaded, run, [(1, 3)], "mean", 5)
    assert max(mean.kl_per_position) < 1e-6  # float32 rounding only
    assert abs(mean.delta_loss or 0.0) < 1e-6
    zero = ablate(loaded, run, [(1, 3)], "zero", 5)
    assert max(zero.kl_per_position) > 1e-4  # the constant is not zero: zeroing it does change things


def test_gates_are_per_batch_row() -> None:
    loaded = tiny_loaded("gpt2")
    layout = loaded.adapter.layout
    ids = torch.tensor([runs.encode(loaded.tokenizer, TEXT)])
    rows = [[], [(0, 1)], [(1, 3), (0, 0)]]
    gates = gate_tensor(len(rows), layout.n_layers, layout.n_heads, rows)
    with head_gates(loaded.adapter, gates, "zero"):
        batched = _hidden(loaded, ids.expand(len(rows), -1))
    for i, heads in enumerate(rows):
        single = gate_tensor(1, layout.n_layers, layout.n_heads, [heads])
        with head_gates(loaded.adapter, single, "zero"):
            alone = _hidden(loaded, ids)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_when_the_forward_fails() -> None:
    loaded = tiny_loaded("llama")
    layout = loaded.adapter.layout
    gates = gate_tensor(1, layout.n_layers, layout.n_heads, [[(0, 0)]])
    with pytest.raises(RuntimeError), head_gates(loaded.adapter, gates, "zero"), capture.recording():
        raise RuntimeError("boom")
    assert hook_count(loaded.model) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_resuming_at_the_first_ablated_block_equals_the_full_forward(arch: str) -> None:
    import dataclasses

    loaded = tiny_loaded(arch, seed=5)
    run = runs.analyse(loaded, TEXT)
    full = dataclasses.replace(run, layer_inputs={}, memo=Memo())  # no cached block inputs: full forward
    for heads in ([(1, 2)], [(1, 0), (1, 3)], [(0, 1), (1, 1)]):
        fast = ablate(loaded, run, heads, "zero", 5, [(1, 1)])
        slow = ablate(loaded, full, heads, "zero", 5, [(1, 1)])
        torch.testing.assert_close(
            torch.tensor(fast.kl_per_position), torch.tensor(slow.kl_per_position), atol=1e-6, rtol=1e-5
        )
        assert fast.delta_loss == pytest.approx(slow.delta_loss, abs=1e-6)
        torch.testing.assert_close(fast.maps[(1, 1)], slow.maps[(1, 1)], atol=1e-6, rtol=1e-5)
    assert hook_count(loaded.model) == 0
    assert len(loaded.adapter.layers) == loaded.adapter.layout.n_layers  # the block list is restored
