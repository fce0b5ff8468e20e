"""Start a forward at a later decoder block from a cached residual stream.

Switching off a head in layer l cannot change anything before block l, so an ablated
forward (or the single-head sweep) only needs blocks l..L−1, fed with the hidden state
that entered block l in the baseline run. Blocks before l are replaced by stand-ins that
pass their input through (the list keeps its length, so models that pick each block's mask
and rotary tables by its index — Gemma 2/3, GPT-OSS, Qwen2 with windows — still pick the
block's own); block l's input is swapped by a pre-hook. Both are undone on exit, whatever
happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from app.inspect.engine.hooks import editing_block_inputs
from app.inspect.model.adapters import Adapter


class Skipped(nn.Module):
    """A stand-in for a block before the resume point: returns its input unchanged, computes nothing.

    Where the family's blocks return (hidden_states, attention weights) — BLOOM, MPT, Falcon — so does it.
    """

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[Any, ...]:
        return (hidden_states, None) if self.as_tuple else hidden_states


@contextmanager
def starting_at(adapter: Adapter, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Forwards inside run blocks layer..L−1 only, block `layer` receiving `hidden` (1 or B, T, d_model)."""
    if layer == 0:
        yield
        return
    blocks = adapter.layers

    def swap(x: torch.Tensor) -> torch.Tensor:
        return hidden.expand(x.shape[0], -1, -1).to(x.dtype)

    # prepended: a hook already on the block (a patch of its input) sees the swapped-in stream
    with editing_block_inputs({layer: blocks[layer]}, {layer: swap}, prepend=True):
        as_tuple = adapter.family.block_returns_tuple
        adapter.set_layers(nn.ModuleList([Skipped(as_tuple) for _ in range(layer)] + list(blocks)[layer:]))
        try:
            yield
        finally:
            adapter.set_layers(blocks)
