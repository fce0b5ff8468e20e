"""A forward a few decoder blocks at a time, and its backward the same way: each segment is one step of sliced work.

The model worker serves waiting requests between steps, so long work must not hold it for a whole forward of
thousands of tokens (a corpus batch, an intervened forward of many rows). A segment enters the caller's hook
contexts, runs blocks first..stop−1 from the stream entering `first` (resume.starting_at; block 0 starts from the
embeddings) and stops at the stream entering block `stop`, before any hook of that block runs; the contexts are
off again before the next step. So every block runs once, with its hooks, in the segment that runs it, and the
values are those of one whole forward. With gradients kept, each segment's input is a leaf of its own graph and
`backward` runs the chunks last to first, one step each (a chunk costs about twice its forward).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from app.inspect.engine.hooks import editing_block_inputs
from app.inspect.engine.resume import starting_at
from app.inspect.engine.steps import Progress, Steps
from app.inspect.model.loaded import Loaded

SLICE_TOKENS = 256  # a step's work: about one forward of this many tokens (batch entries × tokens × blocks / L)


def blocks_per_step(n_layers: int, n_tokens: int, slice_tokens: int = SLICE_TOKENS) -> int:
    """Blocks of one segment of a forward over `n_tokens` batch entries × tokens, so a segment costs about a
    forward of `slice_tokens` tokens (at least one block, at most all)."""
    return max(1, min(n_layers, slice_tokens * n_layers // max(n_tokens, 1)))


@dataclass
class Segment:
    """Blocks first..stop−1 of one forward: the stream in and what came out, each (B, T, d_model).

    `start` is None for block 0 (the forward began at the embeddings); `end` is the stream entering block `stop`,
    or, for the last segment, the final hidden state after the final norm.
    """

    first: int
    stop: int
    start: torch.Tensor | None
    end: torch.Tensor


class Reached(Exception):
    """Raised by `stopping` at the segment's end: the stream entering the next block, before any hook of that block."""

    def __init__(self, stream: torch.Tensor) -> None:
        super().__init__()
        self.stream = stream


def forward(
    loaded: Loaded,
    inputs: dict[str, torch.Tensor],
    install: Callable[[], AbstractContextManager[Any]] = nullcontext,
    first: int = 0,
    stream: torch.Tensor | None = None,
    per_step: int | None = None,
    grad: bool = False,
    progress: Progress | None = None,
) -> Steps[Progress, list[Segment]]:
    """The backbone's forward from block `first`, `per_step` blocks per step; yields `progress` (default
    Progress(blocks run, blocks)) before each segment and returns the segments (the last one's `end` is the final
    hidden state).

    Args:
        loaded: the model.
        inputs: the backbone's keyword arguments (input ids, mask, positions), the same for every segment.
        install: the hook contexts of the forward (gates, recordings, patches), entered afresh for each segment,
            before the resume point swaps blocks out (a context may find its blocks by index).
        first, stream: the first block to run and the stream entering it, (B or 1, T, d_model); None at block 0.
        per_step: blocks per segment (default: every block in one).
        grad: keep gradients (each segment's input becomes a leaf: see `backward`); else inference mode.
    """
    n_layers = loaded.adapter.layout.n_layers
    per = n_layers if per_step is None else max(1, per_step)
    bounds = [*range(first, n_layers, per), n_layers]
    segments: list[Segment] = []
    for a, b in itertools.pairwise(bounds):
        yield progress or Progress(a - first, n_layers - first)
        start = stream.detach().requires_grad_() if grad and stream is not None else stream
        with (
            torch.enable_grad() if grad else torch.inference_mode(),
            install(),
            _resumed(loaded, a, start),
            stopping(loaded, b),
        ):
            try:
                end = loaded.adapter.backbone()(**inputs, use_cache=False).last_hidden_state
            except Reached as reached:
                end = reached.stream
        segments.append(Segment(a, b, start, end))
        stream = end
    return segments


def backward(segments: list[Segment], grad_end: torch.Tensor, wrt: torch.Tensor) -> Steps[Progress, torch.Tensor]:
    """∂/∂wrt of the scalar whose gradient wrt the last segment's `end` is `grad_end`, one segment per step.

    The segments must come from `forward(..., grad=True)` with `wrt` (e.g. head gates) used inside them; each
    chunk's graph is freed once it has run. Returns the gradient, shaped as `wrt` (zeros where unused).
    """
    total = torch.zeros_like(wrt)
    upstream: torch.Tensor | None = grad_end
    for i, seg in enumerate(reversed(segments)):
        yield Progress(i, len(segments))
        assert upstream is not None
        leaves = [wrt] if seg.start is None else [wrt, seg.start]
        found = torch.autograd.grad(seg.end, leaves, grad_outputs=upstream, allow_unused=True)
        if found[0] is not None:
            total += found[0]
        upstream = found[1] if seg.start is not None else None
    return total


def _resumed(loaded: Loaded, first: int, stream: torch.Tensor | None) -> AbstractContextManager[Any]:
    """Start at block `first` from `stream` (B or 1, T, d_model); block 0 needs nothing."""
    if first == 0:
        return nullcontext()
    assert stream is not None, "a forward that starts after block 0 needs the stream entering its first block"
    return starting_at(loaded.adapter, first, stream)


@contextmanager
def stopping(loaded: Loaded, stop: int) -> Iterator[None]:
    """End the forward at the stream entering block `stop` (raising Reached with it), before the block's own hooks;
    the blocks from `stop` on are not run. Nothing happens when `stop` is past the last block."""
    if stop >= loaded.adapter.layout.n_layers:
        yield
        return

    def reached(x: torch.Tensor) -> torch.Tensor:
        raise Reached(x)

    with editing_block_inputs({stop: loaded.adapter.layers[stop]}, {stop: reached}, prepend=True):
        yield
