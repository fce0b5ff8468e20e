"""Causal tracing on every served family: DLA parts sum to the (pre-cap) logit and rebuild each head's output,
the logit lens ends at the model's distribution, patching a prompt into itself is a no-op and every head
recovers the clean run; the start-time checks that refuse tracing can fail."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from app.inspect import checks
from app.inspect.engine.runs import Run, analyse
from app.inspect.intervene import patching
from app.inspect.intervene.patching import Site
from app.inspect.model import blocks
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import UnsupportedArchitecture
from app.inspect.model.loaded import Loaded
from app.inspect.observe import dla, lens
from tests.support.families import SERVED, build, by_type, ids, served
from tests.support.models import as_loaded

POSITIONS = (5, 11)  # inside the first window, and past it


def model_logits(loaded: Loaded, token_ids: list[int]) -> torch.Tensor:
    """The CausalLM's own logits (T, vocab) and, for reference, nothing else."""
    with torch.no_grad():
        logits: torch.Tensor = loaded.model(torch.tensor([token_ids])).logits[0]
    return logits


def run_of(model_type: str, seed: int = 1) -> tuple[Loaded, Run]:
    loaded = served(model_type)
    return loaded, analyse(loaded, "", token_ids=ids(seed=seed))


def dla_sum_error(model_type: str) -> float:
    """Largest |Σ parts − logit| over positions and with/without contrast; asserts the logits are the model's."""
    loaded, run = run_of(model_type)
    logits = model_logits(loaded, run.token_ids)
    cap = loaded.adapter.final_softcap()
    worst = 0.0
    for pos in POSITIONS:
        target, contrast = int(logits[pos].argmax()), int(logits[pos].argmin())
        for other in (None, contrast):
            a = dla.attribute(loaded, run, pos, target, other)
            own = float(logits[pos, target] - (logits[pos, other] if other is not None else 0))
            assert a.model_logit == pytest.approx(own, abs=1e-4)
            assert a.final_softcap == cap
            if cap is None:
                assert a.logit == pytest.approx(own, abs=1e-4)
            else:  # the parts explain the pre-cap logits z, of which cap·tanh(z/cap) are the model's
                with torch.no_grad():
                    z = loaded.adapter.unembedding()(run.hidden[pos]) * loaded.adapter.logit_scale()  # (vocab,)
                torch.testing.assert_close(torch.tanh(z / cap) * cap, logits[pos], atol=1e-5, rtol=0)
                assert a.logit == pytest.approx(float(z[target] - (z[other] if other is not None else 0)), abs=1e-4)
            total = float(a.heads.sum() + a.mlp.sum()) + a.embed + a.other
            worst = max(worst, abs(total - a.logit))
    return worst


@pytest.mark.parametrize("model_type", SERVED)
def test_tracing_is_served_on_every_served_family(model_type: str) -> None:
    adapter = served(model_type).adapter
    assert checks.tracing_gaps(adapter) is None
    assert checks.tracing_gaps(adapter, dla=True) is None


@pytest.mark.parametrize("model_type", SERVED)
def test_dla_parts_sum_to_the_pre_cap_logit(model_type: str) -> None:
    assert dla_sum_error(model_type) <= 1e-3


@pytest.mark.parametrize("model_type", SERVED)
def test_dla_rebuilds_each_head_output_and_block(model_type: str) -> None:
    """Each head's output-projection input at the position equals a hooked one; blocks rebuild the stream."""
    loaded, run = run_of(model_type)
    adapter, layout = loaded.adapter, loaded.adapter.layout
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[layer] = args[0][0].clone()  # (T, n_heads * head_dim)

        return hook

    handles = [adapter.out_proj(layer).register_forward_pre_hook(keep(layer)) for layer in range(layout.n_layers)]
    try:
        model_logits(loaded, run.token_ids)
    finally:
        for handle in handles:
            handle.remove()
    for pos in POSITIONS:
        parts = dla.components(loaded, run, pos)
        for layer in range(layout.n_layers):
            want = seen[layer][pos].view(layout.n_heads, layout.head_dim)
            torch.testing.assert_close(parts.z[layer], want, atol=1e-5, rtol=1e-5)
        assert parts.block_error <= 1e-5
        hidden = adapter.final_norm()(parts.final[None].to(run.hidden.dtype))[0]
        torch.testing.assert_close(hidden, run.hidden[pos], atol=1e-5, rtol=1e-5)


def test_a_norm_on_the_attention_output_is_frozen_at_the_layer_s_output() -> None:
    """Gemma 2: head writes are the frozen post-attention norm of each head's output; they sum to the norm's output."""
    loaded, run = run_of("gemma2")
    adapter = loaded.adapter
    pos = POSITIONS[1]
    parts = dla.components(loaded, run, pos)
    norm = adapter.block_part(0, "post_attention_layernorm")
    heads_out = dla.per_head(adapter.out_proj(0), parts.z[0])  # (n_heads, d)
    torch.testing.assert_close(parts.heads[0].sum(0), norm(heads_out.sum(0)[None])[0], atol=1e-5, rtol=1e-5)
    # not the norm of each head alone: that would not sum to the layer's write
    assert (torch.stack([norm(h[None])[0] for h in heads_out]).sum(0) - parts.heads[0].sum(0)).abs().max() > 1e-2


def test_dla_check_refuses_a_wiring_it_does_not_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the sandwich plan (Gemma 2) or with the wrong parallel flag (Phi), the probe names the blocks."""
    monkeypatch.delitem(blocks.PLANS, "gemma2")
    gap = dla.check(Adapter(served("gemma2").model))
    assert gap is not None and "combine attention and MLP" in gap
    monkeypatch.setitem(blocks.PLANS, "phi", replace(blocks.PLANS["phi"], parallel=False))
    gap = dla.check(Adapter(served("phi").model))
    assert gap is not None and "phi" in gap


def test_logits_lm_head_does_not_reproduce_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A soft-capped model read without its cap would give wrong predictions and losses: refused, naming it."""
    model = served("gemma2").model
    adapter = Adapter(model)
    monkeypatch.setattr(adapter, "final_softcap", lambda: None)
    gap = checks.tracing_gaps(adapter)
    assert gap is not None and "gemma2" in gap
    with pytest.raises(UnsupportedArchitecture, match="gemma2"):
        checks.check_served(model, adapter)
    checks.check_served(model, Adapter(model))  # as it is, served


@pytest.mark.parametrize("model_type", SERVED)
def test_logit_lens_last_block_is_the_model_s_distribution(model_type: str) -> None:
    loaded, run = run_of(model_type)
    logits = model_logits(loaded, run.token_ids)
    for pos in POSITIONS:
        probs = torch.softmax(logits[pos].float(), -1)
        target = int(logits[pos].argmin())
        layers = lens.lens(loaded, run, pos, target, 5)
        assert len(layers) == loaded.adapter.layout.n_layers
        assert layers[-1].top_ids == torch.topk(probs, 5).indices.tolist()
        assert layers[-1].target_prob == pytest.approx(float(probs[target]), abs=1e-6)
        assert layers[-1].target_rank == 1 + int((logits[pos] > logits[pos, target]).sum())


@pytest.mark.parametrize("model_type", SERVED)
def test_patching_a_prompt_into_itself_is_a_no_op(model_type: str) -> None:
    loaded, run = run_of(model_type)
    layout = loaded.adapter.layout
    pos = run.n_tokens - 1
    answer, wrong = 5, 6
    rows = [(Site(layer, head),) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    rows += [(Site(layer, None, p),) for layer in range(layout.n_layers) for p in (0, pos)]
    diffs = patching.patched_logit_diffs(loaded, run, run, rows, pos, answer, wrong, batch_size=5)
    own = patching.logit_diff(loaded, run.hidden[pos : pos + 1], answer, wrong).double().cpu()
    if "mixture of experts" in by_type(model_type).variant:
        # a batch routes more tokens to each expert, whose matmul then rounds differently: equal, not bit-equal
        torch.testing.assert_close(diffs, own.expand_as(diffs), atol=1e-6, rtol=0)
    else:
        assert torch.equal(diffs, own.expand_as(diffs))
    logits = model_logits(loaded, run.token_ids)[pos]
    assert float(own[0]) == pytest.approx(float(logits[answer] - logits[wrong]), abs=1e-4)  # the model's readout


@pytest.mark.parametrize("model_type", SERVED)
def test_patching_every_head_and_the_embeddings_recovers_the_clean_run(model_type: str) -> None:
    loaded, clean = run_of(model_type)
    corrupted_ids = list(clean.token_ids)
    corrupted_ids[7] = 3 + (corrupted_ids[7] - 2) % 120  # one token differs
    corrupted = analyse(loaded, "", token_ids=corrupted_ids)
    layout = loaded.adapter.layout
    pos = clean.n_tokens - 1
    logits = model_logits(loaded, clean.token_ids)[pos]
    answer, wrong = int(logits.argmax()), int(logits.argmin())
    every = tuple(Site(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads))
    diffs = patching.patched_logit_diffs(loaded, corrupted, clean, [(*every, Site(0)), (Site(0),)], pos, answer, wrong)
    clean_diff = patching.logit_diff(loaded, clean.hidden[pos : pos + 1], answer, wrong).double().cpu()
    corrupted_diff = patching.logit_diff(loaded, corrupted.hidden[pos : pos + 1], answer, wrong).double().cpu()
    assert (clean_diff - corrupted_diff).abs() > 1e-3  # there is something to recover
    torch.testing.assert_close(diffs, clean_diff.expand(2), atol=1e-5, rtol=0)
    res = patching.patch(loaded, clean, corrupted, pos, answer, wrong)
    assert res.scores.shape == (layout.n_layers, layout.n_heads) and torch.isfinite(res.scores).all()


def test_every_family_has_its_spec() -> None:
    assert all(by_type(model_type).model_type == model_type for model_type in SERVED)


@pytest.mark.parametrize("model_type", ["gemma2", "olmo2", "phi", "gpt_oss", "granite", "bloom", "mpt", "falcon"])
def test_dla_in_bfloat16_is_served_and_sums_within_bf16_rounding(model_type: str) -> None:
    """bf16 weights: the start check still serves DLA, and the parts (rebuilt in float32 from bf16 activations)
    sum to the logit within 2⁻⁶·(1 + |logit|): the model rounds each block's output, norm and projection to
    bf16 (2⁻⁸ relative), the rebuild does not; measured up to 3.9e-2 on logits of about 11 (Gemma 2)."""
    model = build(by_type(model_type)).to(torch.bfloat16)
    loaded = as_loaded(model, f"tiny-{model_type}-bf16")
    assert checks.tracing_gaps(loaded.adapter, dla=True) is None
    run = analyse(loaded, "", token_ids=ids())
    logits = model_logits(loaded, run.token_ids).float()
    for pos in POSITIONS:
        a = dla.attribute(loaded, run, pos, int(logits[pos].argmax()), int(logits[pos].argmin()))
        total = float(a.heads.sum() + a.mlp.sum()) + a.embed + a.other
        assert abs(total - a.logit) <= 2**-6 * (1 + abs(a.logit))


def test_norm_forms_are_recognised_and_an_unknown_one_refused() -> None:
    """Each family's norm is matched to its form (gain, centring), which then reproduces it; a non-norm is refused."""
    found = {}
    for model_type in ("llama", "gemma", "olmo", "gpt2", "cohere"):
        norm = served(model_type).adapter.final_norm()
        form = blocks.norm_form(norm)
        x = torch.randn(3, norm_width(norm)) * 3 + 1  # (3, d)
        with torch.no_grad():
            torch.testing.assert_close(blocks.apply_norm(form, x), norm(x).float(), atol=1e-5, rtol=1e-5)
        found[model_type] = form.centred
    assert found == {"llama": False, "gemma": False, "olmo": True, "gpt2": True, "cohere": True}

    class Doubling(nn.Module):
        weight = nn.Parameter(torch.ones(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    with pytest.raises(blocks.UnknownNorm, match="Doubling"):
        blocks.norm_form(Doubling())


def norm_width(norm: nn.Module) -> int:
    weight = getattr(norm, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else int(norm.normalized_shape[0])  # type: ignore[index]
