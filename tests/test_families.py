"""Every family in tests/support/families.py: served with exact maps, logits, ablation and resume, or refused at
start."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel

from app.inspect import checks
from app.inspect.engine.gates import gate_tensor, head_gates
from app.inspect.engine.hooks import recording_block_inputs
from app.inspect.engine.resume import starting_at
from app.inspect.model import capture, own_attention, variants
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import UnsupportedArchitecture
from tests.support.families import SPECS, TABLE_END, TABLE_START, VOCAB, WINDOW, Spec, build, by_type, readme_table

SERVED = [spec.model_type for spec in SPECS if not spec.refused]
REFUSED = [spec.model_type for spec in SPECS if spec.refused]
T = 3 * WINDOW  # longer than the sliding window


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of T tokens, the second left-padded by 3."""
    ids = torch.randint(3, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


@cache
def _models(model_type: str) -> tuple[PreTrainedModel, PreTrainedModel, PreTrainedModel, Adapter]:
    """(eager reference, the family's own default attention, the same weights with capture installed, adapter)."""
    spec = by_type(model_type)
    eager, plain, served = build(spec, "eager"), build(spec), build(spec)
    capture.install(served)
    adapter = Adapter(served)
    checks.check_served(served, adapter)
    return eager, plain, served, adapter


def _maps(model: PreTrainedModel, adapter: Adapter, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    layout = adapter.layout
    with torch.no_grad(), capture.recording() as rec:
        model(ids, attention_mask=mask)
    heads = list(range(layout.n_heads))
    return [capture.attention_maps(rec.captured[layer], heads, layout.group_size) for layer in range(layout.n_layers)]


def map_difference(model_type: str) -> float:
    """Largest |captured map − eager output_attentions| over layers, heads, rows (real tokens only)."""
    eager, _, served, adapter = _models(model_type)
    ids, mask = _ids()
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask, output_attentions=True).attentions
    worst = 0.0
    for got, expected in zip(_maps(served, adapter, ids, mask), ref, strict=True):
        worst = max(worst, float((got[0] - expected[0]).abs().max()))
        worst = max(worst, float((got[1, :, 3:, 3:] - expected[1, :, 3:, 3:]).abs().max()))
        assert got[1, :, 3:, :3].abs().max() == 0  # real tokens never attend to padding
    return worst


def test_the_list_has_at_least_twenty_families() -> None:
    assert len(SPECS) >= 20 and len({spec.model_type for spec in SPECS}) == len(SPECS)


@pytest.mark.parametrize("model_type", SERVED)
def test_layout_found_from_the_model(model_type: str) -> None:
    _, _, served, adapter = _models(model_type)
    layout = adapter.layout
    assert layout.n_heads == 4 and layout.n_layers == served.config.num_hidden_layers
    for layer, block in enumerate(adapter.layers):
        assert adapter.out_proj(layer) is block.get_submodule(by_type(model_type).out_proj)
    assert adapter.unembedding() is served.get_output_embeddings()


@pytest.mark.parametrize("model_type", SERVED)
def test_maps_match_eager_output_attentions_past_the_window(model_type: str) -> None:
    assert map_difference(model_type) <= 1e-5


@pytest.mark.parametrize("model_type", SERVED)
def test_logits_bit_identical_with_capture_on_and_off(model_type: str) -> None:
    _, plain, served, _ = _models(model_type)
    ids, mask = _ids()
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask).logits
        off = served(ids, attention_mask=mask).logits
        with capture.recording():
            on = served(ids, attention_mask=mask).logits
    assert torch.equal(off, expected)
    assert torch.equal(on, expected)


@pytest.mark.parametrize("model_type", SERVED)
def test_ablation_equals_an_output_projection_hook(model_type: str) -> None:
    _, _, served, adapter = _models(model_type)
    layout = adapter.layout
    ids, mask = _ids()
    off = [(0, 1), (layout.n_layers - 1, 2)]
    hd = layout.head_dim

    def zero(head: int) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0].clone()  # (B, T, n_heads * head_dim)
            x[..., head * hd : (head + 1) * hd] = 0
            return (x, *args[1:])

        return hook

    blocks = adapter.layers
    handles = [
        blocks[layer].get_submodule(by_type(model_type).out_proj).register_forward_pre_hook(zero(head))
        for layer, head in off
    ]
    try:
        with torch.no_grad():
            expected = served(ids, attention_mask=mask).logits
    finally:
        for handle in handles:
            handle.remove()
    gates = gate_tensor(1, layout.n_layers, layout.n_heads, [off])
    with torch.no_grad(), head_gates(adapter, gates):
        got = served(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(served(ids, attention_mask=mask).logits, expected)  # the heads mattered


@pytest.mark.parametrize("model_type", SERVED)
def test_resume_from_each_block_equals_the_full_forward(model_type: str) -> None:
    _, _, served, adapter = _models(model_type)
    ids, mask = _ids()
    inputs: dict[int, torch.Tensor] = {}
    with torch.no_grad(), recording_block_inputs(adapter, inputs):
        full = served(ids, attention_mask=mask).logits
    for layer in range(1, adapter.layout.n_layers):
        with torch.no_grad(), starting_at(adapter, layer, inputs[layer]):
            resumed = served(ids, attention_mask=mask).logits
        torch.testing.assert_close(resumed, full, atol=1e-6, rtol=0)


def test_every_family_is_served_and_none_marked_refused() -> None:
    """Since BLOOM, MPT and Falcon were served (issue 27) no family is refused at start, so a parametrised refusal
    test over the refused families would collect nothing and skip. A family marked `refused` again needs its own
    refusal test; the refusal path itself is tested below (own attention code without a reader)."""
    assert REFUSED == [] and len(SERVED) == len(SPECS)


def test_own_attention_code_without_a_reader_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attention module that computes its own scores and has no reader (here BLOOM's, its reader removed)."""
    monkeypatch.delitem(own_attention.READERS, "BloomAttention")
    model = build(by_type("bloom"))
    capture.install(model)
    with pytest.raises(UnsupportedArchitecture, match="AttentionInterface"):
        checks.check_served(model, Adapter(model))


def test_alibi_changes_the_maps() -> None:
    """Without the recorded ALiBi bias the BLOOM and MPT maps would differ: the exactness test can fail."""
    for model_type in ("bloom", "mpt"):
        eager, _, served, _ = _models(model_type)
        ids, _ = _ids()
        with torch.no_grad(), capture.recording() as rec:
            served(ids[:1])
            ref = eager(ids[:1], output_attentions=True).attentions
        qk = rec.captured[0]
        assert qk.bias is not None
        unbiased = capture.LayerQK(qk.q, qk.k, qk.mask, qk.scaling)
        assert (capture.attention_maps(unbiased, list(range(4)), 1)[0] - ref[0][0]).abs().max() > 1e-2
        assert variants.layer_variants(served, Adapter(served)) == ["global, ALiBi"] * 2


def test_soft_cap_and_windows_change_the_maps() -> None:
    """Without the soft-cap or the layer's own window the maps would differ: the exactness tests can fail."""
    eager, _, served, adapter = _models("gemma2")
    ids, _ = _ids()
    with torch.no_grad(), capture.recording() as rec:
        served(ids[:1])
        ref = eager(ids[:1], output_attentions=True).attentions
    heads = list(range(4))
    uncapped = capture.LayerQK(rec.captured[1].q, rec.captured[1].k, rec.captured[1].mask, rec.captured[1].scaling)
    assert (capture.attention_maps(uncapped, heads, 2)[0] - ref[1][0]).abs().max() > 1e-2
    local = rec.captured[0]
    global_mask = capture.LayerQK(local.q, local.k, rec.captured[1].mask, local.scaling, softcap=local.softcap)
    assert (capture.attention_maps(global_mask, heads, 2)[0] - ref[0][0]).abs().max() > 1e-2
    assert variants.layer_variants(served, adapter) == [
        "local 4, soft-cap 2",
        "global, soft-cap 2",
        "local 4, soft-cap 2",
    ]


def test_sinks_rows_sum_to_less_than_one() -> None:
    _, _, served, adapter = _models("gpt_oss")
    ids, _ = _ids()
    with torch.no_grad(), capture.recording() as rec:
        served(ids[:1])
    qk = rec.captured[1]
    assert not qk.rows_sum_to_one
    sums = capture.attention_maps(qk, list(range(4)), 2).sum(-1)  # (1, 4, T)
    assert (sums < 1).all() and sums.min() < 0.5  # every row gives some mass to the sink, some most of it
    no_sink = capture.LayerQK(qk.q, qk.k, qk.mask, qk.scaling)
    torch.testing.assert_close(capture.attention_maps(no_sink, list(range(4)), 2).sum(-1), torch.ones(1, 4, T))
    assert variants.layer_variants(served, adapter) == ["local 4, sinks", "global, sinks", "local 4, sinks"]


def test_specs_are_valid() -> None:
    for spec in SPECS:
        assert isinstance(spec, Spec) and spec.label and spec.variant


def test_readme_table_is_generated_from_the_list() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(TABLE_START), readme.index(TABLE_END) + len(TABLE_END)
    fix = "run: python -m tests.support.families, and paste its table into README.md"
    assert readme[start:end] == readme_table(), fix


def test_tracing_endpoints_answer_422_naming_the_gap(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = client.app.state.service.model.adapter
    monkeypatch.setitem(adapter.gaps, False, "this model rescales its logits")  # found at start, kept on the adapter
    bodies = {
        "/api/dla": {"text": "The cat sat"},
        "/api/logit_lens": {"text": "The cat sat"},
        "/api/patch": {"clean": "The cat sat", "corrupted": "The dog sat", "answer": " on", "wrong": " in"},
    }
    for path, body in bodies.items():
        r = client.post(path, json=body)
        assert r.status_code == 422 and "rescales its logits" in r.json()["detail"], (path, r.text)
