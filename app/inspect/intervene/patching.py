"""Activation patching: run one prompt with some activations taken from another, read a logit difference.

A site is a head's output (its slice of the output-projection input, as app.inspect.engine.gates sees it) or
the residual stream entering a block, at one position or all. Each patched run is a row of the engine
(app.inspect.engine.rows): rows whose first patched block is the same run together, starting there from
the target run's cached residual stream. Only positions up to the one read can matter (causality), so
the runs stop there.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

import torch

from app.inspect.engine import runs
from app.inspect.engine.hooks import Edit, editing_block_inputs, editing_head_outputs, recording_head_outputs
from app.inspect.engine.memo import Key
from app.inspect.engine.rows import MAX_ROWS, Base, Batch, run_rows
from app.inspect.engine.runs import Run
from app.inspect.engine.steps import drain
from app.inspect.model.loaded import Loaded

Direction = Literal["denoise", "noise"]
HEAD_OUTPUTS_CACHE_BYTES = 256 << 20  # keep a run's head outputs on it when they fit
HEAD_OUTPUTS = Key[dict[int, torch.Tensor]]("head_outputs")  # per layer (T, n_heads * head_dim)


class NothingToRecover(ValueError):
    """Clean and corrupted runs give the same logit difference: every score would be 0/0."""


@dataclass(frozen=True)
class Site:
    """One patched activation: head `head`'s output in block `layer`, or (head None) the residual
    stream entering block `layer`; at `position`, or at every position (None)."""

    layer: int
    head: int | None = None
    position: int | None = None


Row = tuple[Site, ...]  # the sites patched together in one run


def head_outputs(loaded: Loaded, run: Run) -> dict[int, torch.Tensor]:
    """Every block's output-projection input for the run's text: per layer (T, n_heads * head_dim).

    One forward; kept on the run (its memo) when it fits HEAD_OUTPUTS_CACHE_BYTES.
    """
    cached = run.memo.get(HEAD_OUTPUTS)
    if cached is not None:
        return cached
    outputs: dict[int, torch.Tensor] = {}  # per layer (T, n_heads * head_dim)
    adapter = loaded.adapter
    with torch.inference_mode(), recording_head_outputs(adapter, outputs, keep=lambda x: x[0].detach()):
        adapter.backbone()(input_ids=torch.tensor([run.token_ids], device=loaded.device), use_cache=False)
    size = sum(x.numel() * x.element_size() for x in outputs.values())
    if size <= HEAD_OUTPUTS_CACHE_BYTES:
        run.memo.put(HEAD_OUTPUTS, outputs)
    return outputs


def logit_diff(loaded: Loaded, hidden: torch.Tensor, answer: int, wrong: int) -> torch.Tensor:
    """logit[answer] − logit[wrong] of final-normed hidden states (B, d_model): (B,), float32 or wider.

    One dot product per row with the unembedding rows: each row's value does not depend on the batch
    it sits in (a GEMM over the batch may pick another kernel per batch size), so a patch that changes
    nothing gives the target's own difference, bit for bit (mixture-of-experts blocks excepted: a batch sends
    more tokens through each expert's matmul, which then rounds differently). The model's readout (logit scale, final
    soft-cap) is applied to each logit, as the model does: a soft-cap does not commute with the difference.
    """
    adapter = loaded.adapter
    lm_head = adapter.unembedding()
    weight: torch.Tensor = getattr(lm_head, "weight")  # noqa: B009 (typed as Tensor | Module)
    wide = torch.promote_types(hidden.dtype, torch.float32)
    bias = getattr(lm_head, "bias", None)
    if adapter.final_softcap() is None:
        direction = (weight[answer].to(wide) - weight[wrong].to(wide)).to(hidden.device)  # (d,)
        diff = (hidden.to(wide) * direction).sum(-1)
        if isinstance(bias, torch.Tensor):
            diff = diff + (bias[answer].to(wide) - bias[wrong].to(wide))
        return adapter.readout(diff)  # the scale alone is linear
    pair = weight[[answer, wrong]].to(wide).to(hidden.device)  # (2, d)
    logits = (hidden.to(wide)[:, None, :] * pair).sum(-1)  # (B, 2)
    if isinstance(bias, torch.Tensor):
        logits = logits + bias[[answer, wrong]].to(wide)
    capped = adapter.readout(logits)
    return capped[:, 0] - capped[:, 1]


def _patched(
    loaded: Loaded,
    batch: Batch[Row],
    n: int,
    source_heads: dict[int, torch.Tensor] | None,
    source_stream: dict[int, torch.Tensor],
) -> ExitStack:
    """The hook contexts that put the source's activations at each row's sites (engine.rows' `install`)."""
    layout = loaded.adapter.layout
    b = len(batch.rows)
    head_masks: dict[int, torch.Tensor] = {}  # layer → (B, n, n_heads) bool
    resid_masks: dict[int, torch.Tensor] = {}  # layer → (B, n) bool
    for r, row in enumerate(batch.rows):
        for s in row:
            where = slice(None) if s.position is None else slice(s.position, s.position + 1)
            if s.head is None:
                resid_masks.setdefault(s.layer, torch.zeros(b, n, dtype=torch.bool))[r, where] = True
            else:
                head_masks.setdefault(s.layer, torch.zeros(b, n, layout.n_heads, dtype=torch.bool))[
                    r, where, s.head
                ] = True

    def head_edit(layer: int) -> Edit:
        mask = head_masks[layer].to(loaded.device)[..., None]  # (B, n, n_heads, 1)
        assert source_heads is not None
        src = source_heads[layer][:n].view(1, n, layout.n_heads, layout.head_dim)
        return lambda x: torch.where(mask, src.to(x.dtype), x)  # x (B, n, n_heads, head_dim)

    def resid_edit(layer: int) -> Edit:
        mask = resid_masks[layer].to(loaded.device)[..., None]  # (B, n, 1)
        src = source_stream[layer][:, :n]  # (1, n, d)
        return lambda x: torch.where(mask, src.to(x.dtype), x)  # x (B, n, d)

    stack = ExitStack()
    stack.enter_context(editing_head_outputs(loaded.adapter, {layer: head_edit(layer) for layer in head_masks}))
    blocks = dict(enumerate(loaded.adapter.layers))
    stack.enter_context(editing_block_inputs(blocks, {layer: resid_edit(layer) for layer in resid_masks}))
    return stack


@torch.inference_mode()
def patched_logit_diffs(
    loaded: Loaded,
    target: Run,
    source: Run,
    rows: list[Row],
    position: int,
    answer: int,
    wrong: int,
    batch_size: int = MAX_ROWS,
) -> torch.Tensor:
    """logit[answer] − logit[wrong] at `position` of the target run with each row's sites patched from the source.

    Args:
        loaded: the model.
        target: the run that receives the patches.
        source: the run the activations come from (same number of tokens).
        rows: one patched run each; a row without sites at or before `position` is the target itself.
        position: the query position read, 0 ≤ position < n_tokens.
        answer, wrong: token ids.
        batch_size: rows per batched forward (no token budget: this runs as one request, not in slices).

    Returns:
        (len(rows),) float64 on the CPU.
    """
    n = position + 1  # later positions cannot change the logits at `position`
    base = logit_diff(loaded, target.hidden[position : position + 1], answer, wrong)[0]
    out = torch.full((len(rows),), float(base), dtype=torch.float64)
    rows = [tuple(s for s in row if s.position is None or s.position < n) for row in rows]
    todo = [i for i, row in enumerate(rows) if row]
    if not todo:
        return out
    inputs = runs.layer_inputs(loaded, target)
    sites = [s for row in rows for s in row]
    src_heads = head_outputs(loaded, source) if any(s.head is not None for s in sites) else None
    src_stream = runs.layer_inputs(loaded, source) if any(s.head is None for s in sites) else {}

    def read(hidden: torch.Tensor, batch: Batch[Row]) -> list[float]:
        return logit_diff(loaded, hidden[:, -1], answer, wrong).double().cpu().tolist()

    found = drain(
        run_rows(
            loaded,
            Base.of_ids(loaded, target.token_ids[:n], inputs),
            [rows[i] for i in todo],
            start=lambda row: min(s.layer for s in row),
            install=lambda batch: _patched(loaded, batch, n, src_heads, src_stream),
            read=read,
            token_budget=1 << 62,
            max_rows=batch_size,
        )
    )
    out[todo] = torch.tensor(found, dtype=torch.float64)
    return out


@dataclass
class PatchResult:
    """Normalised recoveries, (patched − corrupted) / (clean − corrupted), in either direction."""

    clean_diff: float
    corrupted_diff: float
    scores: torch.Tensor  # (n_layers, n_heads): each head's output at every position
    position_scores: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # head → (n_tokens,)
    residual_scores: torch.Tensor | None = None  # (n_layers, n_tokens): the stream entering each block


def patch(
    loaded: Loaded,
    clean: Run,
    corrupted: Run,
    position: int,
    answer: int,
    wrong: int,
    direction: Direction = "denoise",
    by_position: list[tuple[int, int]] | None = None,
    residual: bool = False,
    batch_size: int = MAX_ROWS,
) -> PatchResult:
    """Patch every head (and optionally chosen heads per position, and the residual stream per block and position).

    Args:
        loaded: the model.
        clean, corrupted: runs of two texts with the same number of tokens.
        position: the query position read, 0 ≤ position < n_tokens.
        answer, wrong: token ids; the metric is logit[answer] − logit[wrong] at `position`.
        direction: "denoise" patches clean activations into the corrupted run, "noise" the reverse.
        by_position: heads to patch one position at a time.
        residual: also patch the residual stream entering each block, one position at a time.
        batch_size: rows per batched forward.

    Raises:
        NothingToRecover: clean and corrupted logit differences are (almost) equal.
    """
    layout = loaded.adapter.layout
    clean_diff = float(logit_diff(loaded, clean.hidden[position : position + 1], answer, wrong)[0])
    corrupted_diff = float(logit_diff(loaded, corrupted.hidden[position : position + 1], answer, wrong)[0])
    if abs(clean_diff - corrupted_diff) < 1e-6:
        raise NothingToRecover(
            f"clean and corrupted give the same logit difference ({clean_diff:.6g}) at position {position}: "
            "nothing to recover; pick prompts or tokens that differ"
        )
    target, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    t = clean.n_tokens
    heads = [(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    rows: list[Row] = [(Site(layer, head),) for layer, head in heads]
    for layer, head in by_position or []:
        rows += [(Site(layer, head, pos),) for pos in range(t)]
    if residual:
        rows += [(Site(layer, None, pos),) for layer in range(layout.n_layers) for pos in range(t)]
    diffs = patched_logit_diffs(loaded, target, source, rows, position, answer, wrong, batch_size)
    scores = (diffs - corrupted_diff) / (clean_diff - corrupted_diff)
    k = len(heads)
    result = PatchResult(clean_diff, corrupted_diff, scores[:k].view(layout.n_layers, layout.n_heads))
    for i, pair in enumerate(by_position or []):
        result.position_scores[pair] = scores[k + i * t : k + (i + 1) * t]
    if residual:
        start = k + len(by_position or []) * t
        result.residual_scores = scores[start:].view(layout.n_layers, t)
    return result
