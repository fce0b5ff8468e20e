"""Which heads matter: Michel et al. (2019) gradient importance and the exact single-head ablation sweep."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import torch

from app.inspect import runs
from app.inspect.gates import gate_tensor, head_gates
from app.inspect.loading import Loaded
from app.inspect.nexttoken import Scratch, next_token
from app.inspect.resume import recording_inputs, starting_at
from app.inspect.runs import Run


def _next_token_stats(
    loaded: Loaded, hidden: torch.Tensor, targets: torch.Tensor, scratch: Scratch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss per row and last-position log-probs of (B, T, d) hidden states (see nexttoken).

    Returns:
        (loss (B,), last_logprobs (B, vocab)).
    """
    stats = next_token(loaded.adapter.lm_head(), hidden, targets, scratch=scratch)
    return stats.loss, stats.last_logprobs


@dataclass
class SweepResult:
    """Effect of zeroing each head alone, each (n_layers, n_heads)."""

    delta_loss: torch.Tensor
    kl_last: torch.Tensor


@dataclass
class SweepProgress:
    """Heads measured so far, of `total`."""

    done: int
    total: int


SLICE_TOKENS = 1024  # rows × tokens of one sweep slice: at ~1,000 tokens one head, at 64 tokens a whole layer


def ablation_sweep(loaded: Loaded, run: Run, batch_size: int = 16) -> SweepResult:
    """Zero every head alone (all slices at once); see `sweep_slices`."""
    steps = sweep_slices(loaded, run, batch_size, slice_tokens=None)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: SweepResult = stop.value
            return result


def sweep_slices(
    loaded: Loaded, run: Run, batch_size: int = 16, slice_tokens: int | None = SLICE_TOKENS
) -> Generator[SweepProgress, None, SweepResult]:
    """Zero every head alone, one slice of heads per step: one gate row per head, heads of a layer batched.

    Heads of layer l cannot change blocks < l, so each batch starts at block l from the
    baseline's residual stream (app.inspect.resume): on average half a forward per head.
    A slice holds at most `batch_size` heads of one layer and at most `slice_tokens` rows × tokens,
    so a slice costs at most about one forward of the text (or of `slice_tokens` tokens): the model
    worker serves waiting requests between slices. Nothing is hooked while the generator is suspended.
    """
    layout = loaded.adapter.layout
    rows = batch_size if slice_tokens is None else max(1, min(batch_size, slice_tokens // run.n_tokens))
    total = layout.n_layers * layout.n_heads
    with torch.inference_mode():
        targets = runs.targets(run)
        ids = torch.tensor([run.token_ids], device=loaded.device)
        base = runs.baseline(loaded.adapter.lm_head(), run).stats  # shared with prediction and ablation
        base_loss, base_last = base.loss, base.last_logprobs
        inputs = run_layer_inputs(loaded, run)
    scratch = Scratch()  # one logits buffer for every slice
    delta = torch.zeros(layout.n_layers, layout.n_heads)
    kl = torch.zeros(layout.n_layers, layout.n_heads)
    done = 0
    for layer in range(layout.n_layers):
        for start in range(0, layout.n_heads, rows):
            yield SweepProgress(done, total)  # between slices: requests may run here
            chunk = [(layer, h) for h in range(start, min(start + rows, layout.n_heads))]
            gates = gate_tensor(len(chunk), layout.n_layers, layout.n_heads, [[h] for h in chunk], loaded.device)
            # gates first: they find their blocks by index, before the block list is shortened
            with (
                torch.inference_mode(),
                head_gates(loaded.adapter, gates, "zero"),
                starting_at(loaded.adapter, layer, inputs[layer]),
            ):
                batch = ids.expand(len(chunk), -1)
                hidden = loaded.adapter.backbone()(input_ids=batch, use_cache=False).last_hidden_state
            with torch.inference_mode():
                loss, last = _next_token_stats(loaded, hidden, targets, scratch)
                kl_rows = (base_last.exp() * (base_last - last)).sum(-1).clamp_min(0.0)
            for row, (ly, head) in enumerate(chunk):
                delta[ly, head] = float(loss[row] - base_loss[0])
                kl[ly, head] = float(kl_rows[row])
            done += len(chunk)
    return SweepResult(delta_loss=delta, kl_last=kl)


def run_layer_inputs(loaded: Loaded, run: Run) -> dict[int, torch.Tensor]:
    """The residual stream entering every block for the run's text, (1, T, d_model) each (cached on the run)."""
    if run.layer_inputs:
        return run.layer_inputs
    inputs: dict[int, torch.Tensor] = {}
    with torch.inference_mode(), recording_inputs(loaded.adapter, inputs):
        loaded.adapter.backbone()(input_ids=torch.tensor([run.token_ids], device=loaded.device), use_cache=False)
    return inputs


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
        loss, _ = _next_token_stats(loaded, hidden, targets)
        (grad,) = torch.autograd.grad(loss.sum(), gates)
    return grad[0].abs().detach().cpu()


def normalise_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Each layer's scores divided by their L2 norm (Michel et al.'s per-layer normalisation)."""
    normalised: torch.Tensor = scores / scores.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return normalised
