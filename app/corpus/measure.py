"""Per-text head measurements over a batch of texts: one padded forward, then each text's own numbers.

A batch is padded to its longest text (right padding by default; left padding gets explicit position
ids) and run once with capture on. Each text's queries, keys and hidden states are then sliced back to
its own positions as a batch-1 `Run`, and measured by the very functions the one-text endpoints use
(roles.head_stats, similarity.head_similarity, importance's loss), so a text's numbers do not depend on
the batch it ran in. Nothing here is sized by the dataset: only by the batch.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from app.corpus.records import BatchResult, TextResult
from app.inspect.engine import segments
from app.inspect.engine.gates import head_gates
from app.inspect.engine.hooks import recording_block_inputs
from app.inspect.engine.nexttoken import next_token
from app.inspect.engine.rows import Base, Batch, gated, run_rows
from app.inspect.engine.runs import Run
from app.inspect.engine.segments import SLICE_TOKENS
from app.inspect.engine.steps import Progress
from app.inspect.model import capture
from app.inspect.model.capture import LayerQK
from app.inspect.model.families import Layout
from app.inspect.model.loaded import Loaded
from app.inspect.observe import registry, roles
from app.inspect.observe.registry import SIMILARITY_NAMES
from app.inspect.observe.similarity import similarity_steps

Padding = Literal["right", "left"]
PADDING: Padding = "right"  # right padding keeps every text at positions 0..n−1 without position ids


def role_metrics() -> list[str]:
    """The metrics "roles" measures on every text: the registry's text metrics, by name."""
    return [m.name for m in registry.text_metrics()]


def length_batches(lengths: list[int], max_batch_tokens: int, max_batch_texts: int) -> list[list[int]]:
    """Indices of texts grouped into padded batches of similar length (deterministic).

    Texts are taken shortest first (ties by index); a batch closes when one more text would make
    texts × longest exceed `max_batch_tokens`, or the batch would exceed `max_batch_texts`. A text
    longer than `max_batch_tokens` runs alone.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (lengths[j], j)):
        longest = max(lengths[i], 1)  # sorted: the new text is the batch's longest
        if current and ((len(current) + 1) * longest > max_batch_tokens or len(current) >= max_batch_texts):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class Padded:
    """A padded batch: ids, mask and positions (B, T), and each text's own positions."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 = token, 0 = padding
    position_ids: torch.Tensor  # (B, T) each text counts 0..n−1 from its first real token
    windows: list[slice]  # per text: its positions in the padded row

    def inputs(self, repeat: int = 1) -> dict[str, torch.Tensor]:
        """Keyword arguments of the backbone, each row repeated `repeat` times (block-wise)."""
        return {
            "input_ids": self.input_ids.repeat(repeat, 1),
            "attention_mask": self.attention_mask.repeat(repeat, 1),
            "position_ids": self.position_ids.repeat(repeat, 1),
        }


def pad(token_lists: list[list[int]], padding: Padding, device: torch.device) -> Padded:
    """Pad token lists to the longest, on the right or on the left (pad id 0: masked, never attended to)."""
    t = max(len(ids) for ids in token_lists)
    ids = torch.zeros(len(token_lists), t, dtype=torch.long)
    mask = torch.zeros(len(token_lists), t, dtype=torch.long)
    windows = []
    for row, tokens in enumerate(token_lists):
        start = 0 if padding == "right" else t - len(tokens)
        window = slice(start, start + len(tokens))
        ids[row, window] = torch.tensor(tokens, dtype=torch.long)
        mask[row, window] = 1
        windows.append(window)
    positions = (mask.cumsum(1) - 1).clamp_min(0)  # (B, T): 0 at each text's first token
    return Padded(ids.to(device), mask.to(device), positions.to(device), windows)


def _text_qk(qk: LayerQK, row: int, window: slice) -> LayerQK:
    """One text's slice of a batched layer capture, as a batch-1 capture of that text alone."""
    mask, bias = qk.mask, qk.bias
    if mask is not None:
        mask = mask[row : row + 1] if mask.shape[0] > 1 else mask
        mask = mask[..., window, window]
    if bias is not None:  # ALiBi (B|1, n_heads, 1, S)
        bias = (bias[row : row + 1] if bias.shape[0] > 1 else bias)[..., window]
    q, k = qk.q[row : row + 1, :, window], qk.k[row : row + 1, :, window]
    return replace(qk, q=q, k=k, mask=mask, bias=bias)


def text_run(
    loaded: Loaded, captured: dict[int, LayerQK], hidden: torch.Tensor, row: int, window: slice, ids: list[int]
) -> Run:
    """A batch-1 Run of one text of a padded batch (views, no copies): what runs.analyse gives for it alone."""
    qk = {layer: _text_qk(x, row, window) for layer, x in captured.items()}
    return Run(
        model_name=loaded.name, text="", token_ids=ids, tokens=[], qk=qk, hidden=hidden[row, window], head_means={}
    )


Head = tuple[int, int]
Steps = Generator[Progress, None, BatchResult]  # yields between forwards (nothing hooked then)


def measure_batch_steps(
    loaded: Loaded,
    texts: list[tuple[int, list[int]]],
    analyses: frozenset[str],
    importance: str,
    padding: Padding = PADDING,
) -> Steps:
    """Every requested metric of every head on each text of one batch, from one padded forward.

    A generator: it yields between steps that each cost about a forward of SLICE_TOKENS tokens (a few
    decoder blocks of the batch, a piece of the LM head, a backward chunk, one text's statistics, a forward
    of the ablation sweep), with no hook on the model, so a scheduler serves other work there; it returns
    the BatchResult.

    Args:
        loaded: the model.
        texts: (dataset index, token ids) per text, already cut to the job's max_tokens.
        analyses: subset of {"roles", "importance", "similarity"}.
        importance: "gradient" (Michel et al., from one backward of the batch) or "ablation"
            (the exact single-head sweep, texts of the batch × heads of a layer per forward).
        padding: "right" or "left"; the numbers are the same either way.
    """
    layout = loaded.adapter.layout
    if all(ids for _, ids in texts):
        return (yield from _measure(loaded, texts, analyses, importance, padding))
    # a text with no tokens has no scores: it stays out of the forward and counts nowhere
    n = layout.n_layers * layout.n_heads
    sums: dict[str, np.ndarray] = {m: np.zeros((n, n)) for m in SIMILARITY_NAMES} if "similarity" in analyses else {}
    present = [(i, ids) for i, ids in texts if ids]
    measured = (
        (yield from _measure(loaded, present, analyses, importance, padding)) if present else BatchResult([], sums)
    )
    by_index = {t.index: t for t in measured.texts}
    metrics_ = [
        *(role_metrics() if "roles" in analyses else ()),
        *(("importance",) if "importance" in analyses else ()),
    ]
    out = [
        by_index.get(i)
        or TextResult(
            index=i,
            n_tokens=0,
            values={m: _nan_grid(layout) for m in metrics_},
            where={m: np.full((layout.n_layers, layout.n_heads, 2), -1, dtype=np.int64) for m in metrics_},
        )
        for i, _ in texts
    ]
    return BatchResult(texts=out, similarity_sum=measured.similarity_sum)


def _measure(
    loaded: Loaded,
    texts: list[tuple[int, list[int]]],
    analyses: frozenset[str],
    importance: str,
    padding: Padding,
) -> Steps:
    """measure_batch_steps on texts that all have tokens: one forward in segments, then each text's numbers.

    Every step costs about a forward of SLICE_TOKENS tokens: a few decoder blocks of the batch (engine.segments),
    the LM head over a few hundred positions, a backward chunk, or one text's statistics.
    """
    layout = loaded.adapter.layout
    batch = pad([ids for _, ids in texts], padding, loaded.device)
    token_ids = [ids for _, ids in texts]
    gradient = "importance" in analyses and importance == "gradient"
    ablation = "importance" in analyses and importance == "ablation"
    gates = torch.ones(len(texts), layout.n_layers, layout.n_heads, device=loaded.device, requires_grad=gradient)
    captured: dict[int, LayerQK] = {}
    inputs: dict[int, torch.Tensor] = {}

    @contextmanager
    def hooked() -> Iterator[None]:
        with (
            capture.recording(None if analyses & {"roles", "similarity"} else frozenset()) as rec,
            head_gates(loaded.adapter, gates, "zero"),  # all ones: the plain model (and Michel et al.'s ξ)
            recording_block_inputs(loaded.adapter, inputs) if ablation else nullcontext(),
        ):
            yield
        captured.update(rec.captured)

    work = batch.input_ids.numel() * (2 if gradient else 1)  # a backward chunk costs about twice its forward
    per_step = segments.blocks_per_step(layout.n_layers, work, SLICE_TOKENS)
    ran = yield from segments.forward(loaded, batch.inputs(), hooked, per_step=per_step, grad=gradient)
    hidden = ran[-1].end.detach()  # (B, T, d)
    if gradient or ablation:  # the loss costs an LM-head pass: only when importance needs it
        losses, grad_end = yield from _loss_steps(loaded, hidden, batch, token_ids, gradient)  # (B,), (B, T, d)
    if gradient:
        assert grad_end is not None
        grad = yield from segments.backward(ran, grad_end, gates)  # rows are independent: row b's own ∂L_b/∂ξ_b
    del ran  # the forward's graph, when it kept one
    results = []
    for row, (index, ids) in enumerate(texts):
        values: dict[str, np.ndarray] = {}
        where: dict[str, np.ndarray] = {}
        if "roles" in analyses:
            yield Progress(row, len(texts))  # one text's statistics per step
            with torch.inference_mode():
                run = text_run(loaded, captured, hidden, row, batch.windows[row], ids)
                found = roles.Where(len(ids), layout, loaded.device)
                stats = roles.head_stats(run, layout, visit=found)  # the /api/heads scores, and where, in one pass
            for metric, score in stats.scores.items():
                values[metric] = _nan_grid(layout) if score is None else score.double().numpy()
            where.update({metric: cell.numpy() for metric, cell in found.result().items()})
        if "importance" in analyses:
            values["importance"] = _nan_grid(layout)
            where["importance"] = np.full((layout.n_layers, layout.n_heads, 2), -1, dtype=np.int64)
            if gradient and len(ids) > 1:
                values["importance"] = grad[row].abs().double().cpu().numpy()
        results.append(TextResult(index=index, n_tokens=len(ids), values=values, where=where))
    if ablation:
        deltas = yield from _ablation_deltas(loaded, batch, token_ids, inputs, losses)
        for result, delta in zip(results, deltas, strict=True):
            if result.n_tokens > 1:
                result.values["importance"] = delta
    sums = {}
    if "similarity" in analyses:
        sums = yield from _similarity_sums(loaded, captured, hidden, batch, texts)
    return BatchResult(texts=results, similarity_sum=sums)


def _nan_grid(layout: Layout) -> np.ndarray:
    return np.full((layout.n_layers, layout.n_heads), np.nan)


def _losses(loaded: Loaded, hidden: torch.Tensor, batch: Padded, token_ids: list[list[int]]) -> torch.Tensor:
    """Each text's mean next-token loss on its unpadded rows, as the one-text analyses compute it: (B,)."""
    losses = []
    for row, (window, ids) in enumerate(zip(batch.windows, token_ids, strict=True)):
        targets = torch.tensor(ids[1:], device=hidden.device)
        losses.append(next_token(loaded.adapter.lm_head(), hidden[row : row + 1, window], targets).loss[0])
    return torch.stack(losses)


def _loss_steps(
    loaded: Loaded, hidden: torch.Tensor, batch: Padded, token_ids: list[list[int]], gradient: bool
) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each text's mean next-token loss (B,), as `_losses`, and with `gradient` its gradient wrt `hidden` (B, T, d).

    The LM head runs over pieces of a few positions, a step's worth each (`_head_positions`): a long text or a wide
    batch never holds the model worker for its whole LM head.
    """
    lm_head = loaded.adapter.lm_head()
    per_step = _head_positions(loaded, gradient)
    picked = torch.zeros(len(token_ids), device=hidden.device)  # Σ log p(next token) per text
    grad_end = torch.zeros_like(hidden) if gradient else None
    pieces = [
        (row, start, min(start + per_step, len(ids) - 1))
        for row, ids in enumerate(token_ids)
        for start in range(0, len(ids) - 1, per_step)
    ]
    done = per_step  # the forward's last segment took the step before
    for row, start, stop in pieces:
        if done >= per_step:
            yield Progress(row, len(token_ids))
            done = 0
        done += stop - start
        offset = batch.windows[row].start
        h = hidden[row : row + 1, offset + start : offset + stop]  # (1, c, d): positions with a next token
        targets = torch.tensor(token_ids[row][start + 1 : stop + 1], device=hidden.device)  # (c,)
        if grad_end is None:
            with torch.inference_mode():
                picked[row] += next_token(lm_head, h, targets).target_logprobs.sum()
            continue
        with torch.enable_grad():
            leaf = h.detach().requires_grad_()
            total = next_token(lm_head, leaf, targets).target_logprobs.sum()
            (g,) = torch.autograd.grad(-total / (len(token_ids[row]) - 1), leaf)
        picked[row] += total.detach()
        grad_end[row, offset + start : offset + stop] = g[0]
    n_targets = torch.tensor([max(len(ids) - 1, 1) for ids in token_ids], device=hidden.device)
    return -picked / n_targets, grad_end


def _head_positions(loaded: Loaded, gradient: bool) -> int:
    """LM-head positions that cost about a forward of SLICE_TOKENS tokens (its backward costs twice its forward):
    by parameter count, the head's share of a forward (a quarter for the default model, most of it for a model
    with a small d_model and a large vocabulary)."""
    head = sum(p.numel() for p in loaded.adapter.lm_head().parameters())
    blocks = sum(p.numel() for p in loaded.adapter.layers.parameters())
    return max(1, SLICE_TOKENS * (blocks + head) // (head * (3 if gradient else 1)))


def _ablation_deltas(
    loaded: Loaded,
    batch: Padded,
    token_ids: list[list[int]],
    inputs: dict[int, torch.Tensor],
    base: torch.Tensor,
) -> Generator[Progress, None, list[np.ndarray]]:
    """Loss increase when each head alone is zeroed, per text: (n_layers, n_heads) each.

    As importance.ablation_sweep, but over the batch: a row of the engine is one head switched off in every
    text of the batch, starting at its layer from the batch's own residual stream (inputs, (n, T, d) each).
    """
    layout = loaded.adapter.layout
    n, t = batch.input_ids.shape
    with torch.inference_mode():
        base = base.detach().double().cpu()

    def read(hidden: torch.Tensor, rows: Batch[Head]) -> list[torch.Tensor]:
        # (k·n, T, d): row i's texts are entries i·n .. (i+1)·n − 1
        return [
            _losses(loaded, hidden[i * n : (i + 1) * n], batch, token_ids).double().cpu() - base
            for i in range(len(rows.rows))
        ]

    heads = [(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    found = yield from run_rows(
        loaded,
        Base(batch.inputs, inputs, n, t),
        heads,
        start=lambda h: h[0],
        install=gated(loaded, lambda h: [h], n=n),
        read=read,
        token_budget=SLICE_TOKENS,
        max_rows=layout.n_heads,
    )
    delta = torch.stack(found, dim=1).view(n, layout.n_layers, layout.n_heads)  # (n, heads) → per text
    return list(delta.numpy())


def _similarity_sums(
    loaded: Loaded,
    captured: dict[int, LayerQK],
    hidden: torch.Tensor,
    batch: Padded,
    texts: list[tuple[int, list[int]]],
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Sum over the batch's texts of each text's /api/similarity matrix (all heads, layer order), in steps."""
    layout = loaded.adapter.layout
    heads = [(ly, h) for ly in range(layout.n_layers) for h in range(layout.n_heads)]
    sums: dict[str, np.ndarray] = {m: np.zeros((len(heads), len(heads))) for m in SIMILARITY_NAMES}
    for row, (_, ids) in enumerate(texts):
        run = text_run(loaded, captured, hidden, row, batch.windows[row], ids)
        for metric in SIMILARITY_NAMES:
            yield Progress(row, len(texts))
            found = yield from similarity_steps(run, layout, heads, metric, "layer")  # JS: a few rows per step
            sums[metric] += found.matrix.double().numpy()
    return sums
