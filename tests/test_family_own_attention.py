"""Families whose attention computes its own scores (BLOOM, MPT, Falcon): Falcon's other layouts (the new decoder
architecture with grouped KV heads and two norms, Falcon-RW's ALiBi with sequential blocks, ALiBi with one KV
head), capture through a KV cache, and installing capture twice."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from app.inspect import checks
from app.inspect.engine.hooks import recording_block_inputs, recording_head_outputs
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.observe.dla import value_weight
from tests.support.families import VOCAB, WINDOW, build, by_type

T = 3 * WINDOW
FALCONS = {  # config overrides of the Falcon spec (multi-query, rotary, parallel) → its KV heads
    "new-architecture": ({"new_decoder_architecture": True, "num_kv_heads": 2}, 2),
    "rw-alibi-sequential": ({"alibi": True, "multi_query": False, "parallel_attn": False, "bias": True}, 4),
    "alibi-multi-query": ({"alibi": True}, 1),
}


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of T tokens, the second left-padded by 3."""
    ids = torch.randint(3, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def _served(overrides: dict[str, object], attn: str = "sdpa") -> tuple[torch.nn.Module, Adapter]:
    model = build(replace(by_type("falcon"), config=overrides), attn)
    capture.install(model)
    adapter = Adapter(model)
    checks.check_served(model, adapter)
    return model, adapter


@pytest.mark.parametrize("name", FALCONS)
def test_falcon_layouts_are_served_with_maps_that_rebuild_each_head(name: str) -> None:
    """Each map times the values is the head's output the model computed (its SDPA path), within 1e-5; the logits
    are bit-identical with capture on; DLA is exact (the start check serves it)."""
    overrides, n_kv = FALCONS[name]
    model, adapter = _served(overrides)
    plain = build(replace(by_type("falcon"), config=overrides))
    layout = adapter.layout
    assert layout.n_kv_heads == n_kv
    assert checks.tracing_gaps(adapter, dla=True) is None
    ids, mask = _ids()
    heads: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask).logits
        with (
            capture.recording() as rec,
            recording_head_outputs(adapter, heads),
            recording_block_inputs(adapter, inputs),
        ):
            got = model(ids, attention_mask=mask).logits
    assert torch.equal(got, expected)
    kv = torch.arange(layout.n_heads) // layout.group_size
    for layer in range(layout.n_layers):
        maps = capture.attention_maps(rec.captured[layer], list(range(layout.n_heads)), layout.group_size)
        block = adapter.layers[layer]
        normed = (block.ln_attn if hasattr(block, "ln_attn") else block.input_layernorm)(inputs[layer])
        w, b = value_weight(adapter, layer)
        values = normed @ w.T + (0 if b is None else b)  # (B, T, n_kv_heads * head_dim)
        values = values.view(2, T, layout.n_kv_heads, layout.head_dim).transpose(1, 2)[:, kv]  # (B, H, T, D)
        z = (maps @ values).transpose(1, 2).reshape(2, T, -1)  # (B, T, n_heads * head_dim)
        torch.testing.assert_close(z[0], heads[layer][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(z[1, 3:], heads[layer][1, 3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FALCONS)
def test_falcon_layouts_built_eager_match_output_attentions(name: str) -> None:
    """An eager Falcon's maps equal its output_attentions. With ALiBi its eager path adds alibi/√D twice (to the
    scores, and through the mask the model folded it into), its SDPA path once; the maps follow the path that ran."""
    model, adapter = _served(FALCONS[name][0], "eager")
    ids, mask = _ids()
    with torch.no_grad(), capture.recording() as rec:
        ref = model(ids, attention_mask=mask, output_attentions=True).attentions
    layout = adapter.layout
    for layer, expected in enumerate(ref):
        got = capture.attention_maps(rec.captured[layer], list(range(layout.n_heads)), layout.group_size)
        torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[1, :, 3:, 3:], expected[1, :, 3:, 3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["bloom", "mpt", "falcon"])
def test_a_step_through_the_kv_cache_records_the_cached_keys(model_type: str) -> None:
    """One token after a cached prompt: its map row over every key equals the last row of the whole forward's."""
    model = build(by_type(model_type))
    capture.install(model)
    adapter = Adapter(model)
    ids, _ = _ids()
    row = ids[:1]
    with torch.no_grad():
        with capture.recording() as full:
            model(row, use_cache=False)
        cache = model(row[:, :-1], use_cache=True).cache
        with capture.recording() as step:
            model(row[:, -1:], cache=cache, use_cache=True)
    layout = adapter.layout
    heads = list(range(layout.n_heads))
    for layer in range(layout.n_layers):
        last = capture.attention_maps(step.captured[layer], heads, layout.group_size)[0, :, 0]  # (H, T)
        want = capture.attention_maps(full.captured[layer], heads, layout.group_size)[0, :, -1]
        torch.testing.assert_close(last, want, atol=1e-5, rtol=0)


def test_installing_capture_twice_wraps_once() -> None:
    model = build(by_type("bloom"))
    capture.install(model)
    forward = model.transformer.h[0].self_attention.forward
    capture.install(model)
    assert model.transformer.h[0].self_attention.forward is forward
    assert capture.records_own_attention(model)
