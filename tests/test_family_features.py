"""Every feature on every served family, against a reference: corpus measurement (batched = one text),
generation (greedy = transformers' generate), mean ablation (= an output-projection hook), gradient importance
(= finite differences of the model's own loss)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.corpus import measure
from app.inspect.engine.gates import head_gates
from app.inspect.engine.runs import analyse
from app.inspect.engine.steps import drain
from app.inspect.intervene import ablation, importance
from app.inspect.intervene.generation import steps
from app.inspect.model.loaded import Loaded
from app.inspect.observe import roles
from tests.support.families import SERVED, ids, served

HEAD = (1, 2)  # (layer, head): the ablated / differentiated head


def target_logprobs(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """log p(token i+1 | ≤ i) from (T, vocab) logits: (T-1,)."""
    logp = torch.log_softmax(logits.double(), -1)[:-1]
    return logp.gather(1, torch.tensor(token_ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("model_type", SERVED)
def test_corpus_batch_equals_one_text_at_a_time(model_type: str) -> None:
    """Two texts of different lengths in one left-padded batch: roles and gradient importance as alone."""
    loaded = served(model_type)
    texts = [(0, ids(10, seed=2)), (1, ids(7, seed=3))]
    result = drain(
        measure.measure_batch_steps(loaded, texts, frozenset({"roles", "importance"}), "gradient", padding="left")
    )
    for (_, token_ids), text in zip(texts, result.texts, strict=True):
        stats = roles.head_stats(analyse(loaded, "", token_ids=token_ids), loaded.adapter.layout)
        for metric, ref in (("entropy", stats["entropy"]), ("previous_token", stats["previous_token"])):
            np.testing.assert_allclose(text.values[metric], ref.double().numpy(), atol=1e-5, rtol=0, err_msg=metric)
        grad = importance.gradient_importance(loaded, token_ids).double().numpy()
        np.testing.assert_allclose(text.values["importance"], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", SERVED)
def test_greedy_generation_equals_generate(model_type: str) -> None:
    """8 new tokens after 12 (past the window, through the KV cache), beside an ablated row."""
    loaded = served(model_type)
    prompt = ids()
    with torch.no_grad():
        out = loaded.model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    want = out[0, len(prompt) :].tolist()
    alone, beside = (
        drain(steps(loaded, prompt, 8, stop_ids=frozenset())),
        drain(steps(loaded, prompt, 8, [HEAD], stop_ids=frozenset())),
    )
    assert alone[0].token_ids == want
    assert beside[0].token_ids == want


def _out_proj_hook(loaded: Loaded, value: torch.Tensor) -> Any:
    """A pre-hook on HEAD's layer's output projection setting HEAD's slice of its input to `value` (head_dim,)."""
    hd = loaded.adapter.layout.head_dim
    _, head = HEAD

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0].clone()  # (B, T, n_heads * head_dim)
        x[..., head * hd : (head + 1) * hd] = value
        return (x, *args[1:])

    return loaded.adapter.out_proj(HEAD[0]).register_forward_pre_hook(hook)


@pytest.mark.parametrize("model_type", SERVED)
def test_mean_ablation_equals_an_output_projection_hook(model_type: str) -> None:
    loaded = served(model_type)
    token_ids = ids()
    run = analyse(loaded, "", token_ids=token_ids)
    hd = loaded.adapter.layout.head_dim
    seen: list[torch.Tensor] = []
    handle = loaded.adapter.out_proj(HEAD[0]).register_forward_pre_hook(lambda m, a: seen.append(a[0][0].clone()))
    with torch.no_grad():
        base_logits = loaded.model(torch.tensor([token_ids])).logits[0]
    handle.remove()
    mean = seen[0][:, HEAD[1] * hd : (HEAD[1] + 1) * hd].mean(0)  # (head_dim,): the head's mean over the text
    handle = _out_proj_hook(loaded, mean)
    try:
        with torch.no_grad():
            ref_logits = loaded.model(torch.tensor([token_ids])).logits[0]
    finally:
        handle.remove()
    got = ablation.ablate(loaded, run, [HEAD], "mean")
    base, ref = target_logprobs(base_logits, token_ids), target_logprobs(ref_logits, token_ids)
    np.testing.assert_allclose(got.baseline.token_logprobs, base.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.ablated.token_logprobs, ref.numpy(), atol=1e-5, rtol=0)
    assert (ref - base).abs().max() > 1e-4  # the head mattered


def _loss(loaded: Loaded, token_ids: list[int], gate: float) -> float:
    """The model's own mean next-token loss with HEAD's gate at `gate` (float64)."""
    layout = loaded.adapter.layout
    gates = torch.ones(1, layout.n_layers, layout.n_heads)
    gates[0, HEAD[0], HEAD[1]] = gate
    with torch.no_grad(), head_gates(loaded.adapter, gates, "zero", layers=list(range(layout.n_layers))):
        logits = loaded.model(torch.tensor([token_ids])).logits[0]
    return float(-target_logprobs(logits, token_ids).mean())


@pytest.mark.parametrize("model_type", SERVED)
def test_gradient_importance_equals_finite_differences(model_type: str) -> None:
    loaded = served(model_type)
    token_ids = ids()
    scores = importance.gradient_importance(loaded, token_ids)
    eps = 1e-2
    fd = (_loss(loaded, token_ids, 1 + eps) - _loss(loaded, token_ids, 1 - eps)) / (2 * eps)
    assert abs(fd) > 1e-4  # the head matters to the loss
    assert float(scores[HEAD]) == pytest.approx(abs(fd), rel=2e-2, abs=2e-5)


@pytest.mark.parametrize("model_type", SERVED)
def test_the_sweep_equals_the_model_s_loss_with_each_head_zeroed(model_type: str) -> None:
    """The batched single-head sweep (resumed at each head's block) against full forwards of the model itself."""
    loaded = served(model_type)
    token_ids = ids()
    run = analyse(loaded, "", token_ids=token_ids)
    sweep = importance.ablation_sweep(loaded, run)
    base = _loss(loaded, token_ids, 1.0)
    for layer, head in [(0, 1), HEAD, (loaded.adapter.layout.n_layers - 1, 3)]:
        layout = loaded.adapter.layout
        gates = torch.ones(1, layout.n_layers, layout.n_heads)
        gates[0, layer, head] = 0.0
        with torch.no_grad(), head_gates(loaded.adapter, gates, "zero"):
            logits = loaded.model(torch.tensor([token_ids])).logits[0]
        expected = float(-target_logprobs(logits, token_ids).mean()) - base
        assert float(sweep.delta_loss[layer, head]) == pytest.approx(expected, abs=1e-5)
