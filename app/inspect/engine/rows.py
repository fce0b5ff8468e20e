"""Batched rows: many intervened forwards of the same input, run by one loop.

A row is one intervened forward (a set of heads switched off, activations patched in from another run).
Rows are grouped by the first block they change: nothing before it differs from the unchanged run, so each
group starts there from the cached residual stream (engine.resume). A group runs in chunks of at most
`max_rows` rows and `token_budget` batch entries × tokens; the runner yields a `Progress` before each
forward, when no hook is on the model, so the model worker serves waiting requests there; a forward over
more than the budget (one row of a wide base) runs in segments of a few blocks (engine.segments), a step each.
The caller gives `install` (the hook contexts of a chunk's rows) and `read` (a chunk's hidden states → one
value per row).

One base may hold several texts (a corpus batch, padded): each row then spans `base.n` batch entries,
row i holding entries i·n .. (i+1)·n − 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import torch

from app.inspect.engine import segments
from app.inspect.engine.gates import Mode, gate_tensor, head_gates
from app.inspect.engine.steps import Progress, Steps
from app.inspect.model.loaded import Loaded

R = TypeVar("R")  # a row
V = TypeVar("V")  # what a row reads
Head = tuple[int, int]

TOKEN_BUDGET = 1024  # batch entries × tokens of one forward: a slice costs about one forward of 1,000 tokens
MAX_ROWS = 16


@dataclass(frozen=True)
class Base:
    """The unchanged input every row starts from: `n` texts of `n_tokens` (padded) tokens.

    `inputs(k)`: the backbone's keyword arguments for k copies of the texts, (k·n, n_tokens) each;
    `layer_inputs[l]`: the stream entering block l in the unchanged run, (n or 1, n_tokens, d_model).
    """

    inputs: Callable[[int], dict[str, torch.Tensor]]
    layer_inputs: dict[int, torch.Tensor]
    n: int
    n_tokens: int

    @staticmethod
    def of_ids(loaded: Loaded, token_ids: list[int], layer_inputs: dict[int, torch.Tensor]) -> Base:
        """One unpadded text (or its first tokens: `layer_inputs` are cut to the ids' length)."""
        ids = torch.tensor([token_ids], device=loaded.device)  # (1, T)
        t = len(token_ids)
        cut = {layer: x[:, :t] for layer, x in layer_inputs.items()}
        return Base(lambda k: {"input_ids": ids.expand(k, -1)}, cut, 1, t)


@dataclass(frozen=True)
class Batch(Generic[R]):
    """The rows of one forward and where they start."""

    start: int
    rows: list[R]


def run_rows(
    loaded: Loaded,
    base: Base,
    rows: Sequence[R],
    start: Callable[[R], int],
    install: Callable[[Batch[R]], AbstractContextManager[Any]],
    read: Callable[[torch.Tensor, Batch[R]], Sequence[V]],
    token_budget: int | None = None,
    max_rows: int = MAX_ROWS,
) -> Steps[Progress, list[V]]:
    """Run every row; yields Progress(rows done, rows) before each forward (each segment); returns one value per
    row, in order.

    Args:
        loaded: the model.
        base: the input and its cached residual stream.
        rows: the interventions, one forward each.
        start: the first block a row changes (the forward starts there).
        install: the hook contexts of one chunk of rows (gates, patches, recordings); entered before the
            resume point's stand-ins, so a context may find its blocks by index.
        read: a chunk's final hidden states (len(rows)·n, n_tokens, d_model) → one value per row; called, as
            the forward runs, in inference mode (hooks already off).
        token_budget, max_rows: the most batch entries × tokens (default TOKEN_BUDGET), and rows, in one step: a
            forward over more (one row already over the budget) runs in segments of blocks that each cost about
            a forward of the budget.
    """
    budget = TOKEN_BUDGET if token_budget is None else token_budget
    n_layers = loaded.adapter.layout.n_layers
    per_forward = max(1, min(max_rows, budget // (base.n * base.n_tokens)))
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(start(row), []).append(i)
    out: dict[int, V] = {}
    for first in sorted(groups):
        members = groups[first]
        for i in range(0, len(members), per_forward):
            chunk = members[i : i + per_forward]
            batch = Batch(first, [rows[j] for j in chunk])
            per_step = segments.blocks_per_step(n_layers, len(chunk) * base.n * base.n_tokens, budget)
            ran = yield from segments.forward(
                loaded,
                base.inputs(len(chunk)),
                partial(install, batch),
                first,
                _stream(base, first, len(chunk)),
                per_step,
                progress=Progress(len(out), len(rows)),
            )
            hidden = ran[-1].end
            with torch.inference_mode():  # as the forward: readers then take nexttoken's in-place paths
                out.update(zip(chunk, read(hidden, batch), strict=True))
    return [out[i] for i in range(len(rows))]


def _stream(base: Base, first: int, k: int) -> torch.Tensor | None:
    """The base's stream entering block `first`, for k copies of its texts; None at block 0 (nothing to resume)."""
    if first == 0:
        return None
    stream = base.layer_inputs[first]  # (n or 1, n_tokens, d_model)
    return stream.repeat(k, 1, 1) if stream.shape[0] > 1 else stream


def gated(
    loaded: Loaded, heads: Callable[[R], Sequence[Head]], n: int = 1, mode: Mode = "zero", means: Any = None
) -> Callable[[Batch[R]], AbstractContextManager[Any]]:
    """`install` for rows that switch heads off: one gate row per batch entry (each row's heads, n entries each)."""

    def install(batch: Batch[R]) -> AbstractContextManager[Any]:
        layout = loaded.adapter.layout
        off = [list(heads(row)) for row in batch.rows for _ in range(n)]
        gates = gate_tensor(len(off), layout.n_layers, layout.n_heads, off, loaded.device)
        return head_gates(loaded.adapter, gates, mode, means)

    return install
