"""Which heads matter: Michel et al. (2019) gradient importance and the exact single-head ablation sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.inspect.engine import runs
from app.inspect.engine.gates import head_gates
from app.inspect.engine.nexttoken import Scratch, next_token
from app.inspect.engine.rows import MAX_ROWS, TOKEN_BUDGET, Base, Batch, gated, run_rows
from app.inspect.engine.runs import Run
from app.inspect.engine.steps import Progress, Steps, drain
from app.inspect.model.loaded import Loaded

Head = tuple[int, int]


@dataclass
class SweepResult:
    """Effect of zeroing each head alone, each (n_layers, n_heads)."""

    delta_loss: torch.Tensor
    kl_last: torch.Tensor


def ablation_sweep(loaded: Loaded, run: Run, batch_size: int = MAX_ROWS) -> SweepResult:
    """Zero every head alone (all slices at once); see `sweep_slices`."""
    return drain(sweep_slices(loaded, run, batch_size, slice_tokens=None))


def sweep_slices(
    loaded: Loaded, run: Run, batch_size: int = MAX_ROWS, slice_tokens: int | None = TOKEN_BUDGET
) -> Steps[Progress, SweepResult]:
    """Zero every head alone, one slice of heads per step: one gate row per head, heads of a layer batched.

    Heads of layer l cannot change blocks < l, so each batch starts at block l from the baseline's
    residual stream (engine.rows): on average half a forward per head. A slice holds at most `batch_size`
    heads of one layer and at most `slice_tokens` rows × tokens, so a slice costs at most about one forward
    of the text (or of `slice_tokens` tokens): the model worker serves waiting requests between slices.
    """
    layout = loaded.adapter.layout
    with torch.inference_mode():
        targets = runs.targets(run)
        base = runs.baseline(loaded.adapter.lm_head(), run).stats  # shared with prediction and ablation
        inputs = runs.layer_inputs(loaded, run)
    scratch = Scratch()  # one logits buffer for every slice

    def read(hidden: torch.Tensor, batch: Batch[Head]) -> list[tuple[float, float]]:
        stats = next_token(loaded.adapter.lm_head(), hidden, targets, scratch=scratch)
        kl = (base.last_logprobs.exp() * (base.last_logprobs - stats.last_logprobs)).sum(-1).clamp_min(0.0)  # (B,)
        return [(float(stats.loss[r] - base.loss[0]), float(kl[r])) for r in range(len(batch.rows))]

    heads = [(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    found = yield from run_rows(
        loaded,
        Base.of_ids(loaded, run.token_ids, inputs),
        heads,
        start=lambda h: h[0],
        install=gated(loaded, lambda h: [h]),
        read=read,
        token_budget=slice_tokens if slice_tokens is not None else 1 << 62,
        max_rows=batch_size,
    )
    values = torch.tensor(found, dtype=torch.float32).view(layout.n_layers, layout.n_heads, 2)
    return SweepResult(delta_loss=values[..., 0].clone(), kl_last=values[..., 1].clone())


def gradient_importance(loaded: Loaded, token_ids: list[int]) -> torch.Tensor:
    """Michel et al. (2019): |∂L/∂ξ_h| for gates ξ = 1 on every head, L the mean next-token loss.

    Returns:
        (n_layers, n_heads) non-negative scores.
    """
    layout = loaded.adapter.layout
    gates = torch.ones(1, layout.n_layers, layout.n_heads, device=loaded.device, requires_grad=True)
    ids = torch.tensor([token_ids], device=loaded.device)
    targets = ids[0, 1:]
    with torch.enable_grad(), head_gates(loaded.adapter, gates, "zero"):
        hidden = loaded.adapter.backbone()(input_ids=ids, use_cache=False).last_hidden_state
        loss = next_token(loaded.adapter.lm_head(), hidden, targets).loss
        (grad,) = torch.autograd.grad(loss.sum(), gates)
    return grad[0].abs().detach().cpu()


def normalise_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Each layer's scores divided by their L2 norm (Michel et al.'s per-layer normalisation)."""
    normalised: torch.Tensor = scores / scores.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return normalised
