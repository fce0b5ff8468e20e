"""Causal tracing against its definitions on tiny models: patching vs hand-written hooks, DLA parts vs the logit,
the logit lens vs the model's own distribution, the token view vs the attention maps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from app.inspect.engine.runs import analyse
from app.inspect.intervene import patching
from app.inspect.intervene.patching import Site
from app.inspect.model.loaded import Loaded
from app.inspect.observe import dla, lens, token_view
from tests.support.checks import hook_count
from tests.support.models import ARCHS, tiny_loaded

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWER, WRONG = 5335, 1757  # " Mary", " John" in GPT-2's BPE


def scrambled(arch: str, dtype: torch.dtype = torch.float64) -> Loaded:
    """A tiny model with large random weights, non-trivial norm gains and non-zero biases (logits of order 1).

    float64 by default, so that comparisons with references test the definition, not float32 rounding;
    bit-for-bit properties are checked in float32, the dtype the server runs on a CPU."""
    loaded = tiny_loaded(arch)
    gen = torch.Generator().manual_seed(1)
    for name, p in loaded.model.named_parameters():
        if p.dim() > 1:
            p.data = torch.randn(p.shape, generator=gen) * 0.2
        else:
            centre = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
            p.data = centre + torch.randn(p.shape, generator=gen) * 0.3
    loaded.model.to(dtype)
    return loaded


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest) -> Loaded:
    return scrambled(request.param)


@pytest.fixture(scope="module", params=ARCHS)
def model32(request: pytest.FixtureRequest) -> Loaded:
    return scrambled(request.param, torch.float32)


def out_proj_inputs(loaded: Loaded, ids: list[int]) -> dict[int, torch.Tensor]:
    """Reference: each block's output-projection input, (T, n_heads * head_dim), by plain hooks."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(loaded.adapter.layout.n_layers):

        def hook(m: nn.Module, args: tuple[torch.Tensor, ...], layer: int = layer) -> None:
            seen[layer] = args[0][0].clone()

        handles.append(loaded.adapter.out_proj(layer).register_forward_pre_hook(hook))
    with torch.no_grad():
        loaded.model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return seen


def reference_diff(loaded: Loaded, ids: list[int], replace: dict[int, tuple[int, torch.Tensor]], pos: int) -> float:
    """Reference: a full forward with head outputs overwritten by hooks, logits from the CausalLM."""
    hd = loaded.adapter.layout.head_dim
    handles = []
    for layer, (head, value) in replace.items():

        def hook(m: nn.Module, args: tuple[Any, ...], head: int = head, value: torch.Tensor = value) -> tuple[Any, ...]:
            x = args[0].clone()
            x[0, :, head * hd : (head + 1) * hd] = value[:, head * hd : (head + 1) * hd]
            return (x,)

        handles.append(loaded.adapter.out_proj(layer).register_forward_pre_hook(hook))
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0, pos]
    for h in handles:
        h.remove()
    return float(logits[ANSWER] - logits[WRONG])


def test_patch_scores_equal_a_hook_reference(model: Loaded) -> None:
    clean, corrupted = analyse(model, CLEAN), analyse(model, CORRUPTED)
    assert clean.n_tokens == corrupted.n_tokens
    pos = clean.n_tokens - 1
    for direction in ("denoise", "noise"):
        res = patching.patch(model, clean, corrupted, pos, ANSWER, WRONG, direction)  # type: ignore[arg-type]
        target, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
        src = out_proj_inputs(model, source.token_ids)
        base_c = reference_diff(model, clean.token_ids, {}, pos)
        base_x = reference_diff(model, corrupted.token_ids, {}, pos)
        assert res.clean_diff == pytest.approx(base_c, abs=1e-5)
        assert res.corrupted_diff == pytest.approx(base_x, abs=1e-5)
        layout = model.adapter.layout
        for layer in range(layout.n_layers):
            for head in range(layout.n_heads):
                patched = reference_diff(model, target.token_ids, {layer: (head, src[layer])}, pos)
                expected = (patched - base_x) / (base_c - base_x)
                assert float(res.scores[layer, head]) == pytest.approx(expected, abs=1e-5)
    assert hook_count(model.model) == 0


def test_patching_a_prompt_into_itself_changes_nothing_bit_for_bit(model32: Loaded) -> None:
    model = model32
    run = analyse(model, CLEAN)
    layout = model.adapter.layout
    pos = run.n_tokens - 1
    rows = [(Site(layer, head),) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    rows += [(Site(layer, None, p),) for layer in range(layout.n_layers) for p in range(run.n_tokens)]
    rows += [(Site(1, 2, p),) for p in range(run.n_tokens)]
    diffs = patching.patched_logit_diffs(model, run, run, rows, pos, ANSWER, WRONG, batch_size=5)
    own = patching.logit_diff(model, run.hidden[pos : pos + 1], ANSWER, WRONG)
    assert torch.equal(diffs, own.expand_as(diffs))


def test_patching_every_head_and_the_embeddings_recovers_the_clean_run(model: Loaded) -> None:
    clean, corrupted = analyse(model, CLEAN), analyse(model, CORRUPTED)
    layout = model.adapter.layout
    pos = clean.n_tokens - 1
    every = tuple(Site(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads))
    rows = [(*every, Site(0)), (Site(0),)]
    diffs = patching.patched_logit_diffs(model, corrupted, clean, rows, pos, ANSWER, WRONG)
    clean_diff = patching.logit_diff(model, clean.hidden[pos : pos + 1], ANSWER, WRONG)
    assert torch.allclose(diffs, clean_diff.expand(2), atol=1e-5)  # heads + embeddings, or the stream into block 0
    res = patching.patch(model, clean, corrupted, pos, ANSWER, WRONG, residual=True)
    assert res.residual_scores is not None
    differing = [p for p in range(clean.n_tokens) if clean.token_ids[p] != corrupted.token_ids[p]]
    # into block 0 only the differing token's embedding differs: patching it is everything, the others nothing
    assert differing == [9]
    assert float(res.residual_scores[0, 9]) == pytest.approx(1.0, abs=1e-9)
    others = [p for p in range(clean.n_tokens) if p != 9]
    assert torch.allclose(res.residual_scores[0, others], torch.zeros(len(others), dtype=torch.float64), atol=1e-9)
    # before the difference the two streams are equal in every block
    assert torch.allclose(res.residual_scores[:, :9], torch.zeros(layout.n_layers, 9, dtype=torch.float64), atol=1e-9)


def test_patching_equal_activations_changes_nothing_bit_for_bit(model32: Loaded) -> None:
    clean, corrupted = analyse(model32, CLEAN), analyse(model32, CORRUPTED)
    res = patching.patch(model32, clean, corrupted, clean.n_tokens - 1, ANSWER, WRONG, residual=True)
    assert res.residual_scores is not None
    assert torch.all(res.residual_scores[:, :9] == 0)  # the prompts agree before token 9: exactly no effect
    assert torch.all(res.residual_scores[0, 10:] == 0)


def test_per_position_scores_equal_a_hook_reference(model: Loaded) -> None:
    clean, corrupted = analyse(model, CLEAN), analyse(model, CORRUPTED)
    pos = 11  # an earlier position: later tokens cannot matter and the runs stop there
    res = patching.patch(model, clean, corrupted, pos, ANSWER, WRONG, by_position=[(0, 1)])
    src = out_proj_inputs(model, clean.token_ids)
    base_c = reference_diff(model, clean.token_ids, {}, pos)
    base_x = reference_diff(model, corrupted.token_ids, {}, pos)
    own = out_proj_inputs(model, corrupted.token_ids)
    got = res.position_scores[(0, 1)]
    assert got.shape == (clean.n_tokens,)
    for p in range(pos + 1):
        value = own[0].clone()
        value[p] = src[0][p]
        expected = (reference_diff(model, corrupted.token_ids, {0: (1, value)}, pos) - base_x) / (base_c - base_x)
        assert float(got[p]) == pytest.approx(expected, abs=1e-5)
    assert torch.all(got[pos + 1 :] == 0)


def test_equal_runs_have_nothing_to_recover(model: Loaded) -> None:
    run = analyse(model, CLEAN)
    with pytest.raises(patching.NothingToRecover):
        patching.patch(model, run, run, run.n_tokens - 1, ANSWER, WRONG)


@pytest.mark.parametrize("with_contrast", [False, True])
def test_dla_parts_sum_to_the_logit(model: Loaded, with_contrast: bool) -> None:
    run = analyse(model, CLEAN)
    for pos in (0, 5, run.n_tokens - 1):
        logits = model.model(torch.tensor([run.token_ids])).logits[0, pos].detach()
        target, contrast = int(logits.argmax()), int(logits.argmin()) if with_contrast else None
        expected = float(logits[target] - (logits[contrast] if contrast is not None else 0))
        a = dla.attribute(model, run, pos, target, contrast)
        assert a.logit == pytest.approx(expected, abs=1e-4)
        assert abs(expected) > 0.05  # a real logit, not a near-zero sum of near-zero parts
        total = float(a.heads.sum() + a.mlp.sum()) + a.embed + a.other
        assert total == pytest.approx(a.logit, abs=1e-3)
        assert a.heads.shape == (2, 4) and a.mlp.shape == (2,)


def test_dla_head_outputs_are_the_model_s(model: Loaded) -> None:
    """Per head, not just in total: the recomputed outputs at the position equal the hooked o_proj inputs."""
    run = analyse(model, CLEAN)
    layout = model.adapter.layout
    pos = 7
    ref = out_proj_inputs(model, run.token_ids)
    parts = dla.components(model, run, pos)
    for layer in range(layout.n_layers):
        z = ref[layer][pos].view(layout.n_heads, layout.head_dim)
        expected = dla.per_head(model.adapter.out_proj(layer), z)
        assert torch.allclose(parts.heads[layer], expected.to(parts.heads.dtype), atol=1e-5)
    final = model.model(torch.tensor([run.token_ids]), output_hidden_states=True).hidden_states
    # hidden_states[-1] is after the final norm; the block inputs and our stream before it agree
    assert torch.allclose(model.adapter.final_norm()(parts.final.double()), final[-1][0, pos], atol=1e-5)


def test_logit_lens_last_block_is_the_model_s_distribution(model: Loaded) -> None:
    run = analyse(model, CLEAN)
    pos = run.n_tokens - 1
    logits = model.model(torch.tensor([run.token_ids])).logits[0, pos].detach()
    probs = torch.softmax(logits, -1)
    layers = lens.lens(model, run, pos, ANSWER, 5)
    last = layers[-1]
    assert last.top_ids == torch.topk(probs, 5).indices.tolist()
    assert last.top_probs == pytest.approx(torch.topk(probs, 5).values.tolist(), abs=1e-6)
    assert last.target_prob == pytest.approx(float(probs[ANSWER]), abs=1e-7)
    assert last.target_rank == 1 + int((logits > logits[ANSWER]).sum())
    # an earlier block: its stream (the next block's input) through the final norm and LM head, by hand
    hidden = model.model(torch.tensor([run.token_ids]), output_hidden_states=True).hidden_states
    by_hand = torch.softmax(model.adapter.lm_head()(model.adapter.final_norm()(hidden[1][0, pos])), -1)
    assert layers[0].target_prob == pytest.approx(float(by_hand[ANSWER]), abs=1e-6)


def test_lens_grid_equals_the_per_position_lens(model: Loaded) -> None:
    run = analyse(model, CLEAN)
    g = lens.grid(model, run)
    assert g.top_ids.shape == (2, run.n_tokens)
    for pos in range(run.n_tokens):
        per = lens.lens(model, run, pos, ANSWER, 1)
        assert g.top_ids[:, pos].tolist() == [r.top_ids[0] for r in per]
        assert g.top_probs[:, pos].tolist() == pytest.approx([r.top_probs[0] for r in per], abs=1e-6)


def test_attention_from_rows_are_the_maps_rows(model: Loaded) -> None:
    run = analyse(model, CLEAN)
    layout = model.adapter.layout
    w = token_view.attention_from(run, layout, 4)
    assert w.shape == (layout.n_layers, layout.n_heads, run.n_tokens)
    for layer in range(layout.n_layers):
        full = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
        assert torch.allclose(w[layer], full[:, 4], atol=1e-6)
    assert torch.all(w[..., 5:] == 0) and torch.allclose(w.sum(-1), torch.ones(layout.n_layers, layout.n_heads))
