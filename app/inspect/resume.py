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

from app.inspect.adapters import Adapter


@contextmanager
def recording_inputs(adapter: Adapter, into: dict[int, torch.Tensor]) -> Iterator[None]:
    """Store the hidden state entering every block, (B, T, d_model), in `into` during the block."""
    handles = []

    def make_hook(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            into[layer] = x.detach()

        return hook

    try:
        for layer, block in enumerate(adapter.layers):
            handles.append(block.register_forward_pre_hook(make_hook(layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class Skipped(nn.Module):
    """A stand-in for a block before the resume point: returns its input unchanged, computes nothing."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextmanager
def starting_at(adapter: Adapter, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Forwards inside run blocks layer..L−1 only, block `layer` receiving `hidden` (1 or B, T, d_model)."""
    if layer == 0:
        yield
        return
    blocks = adapter.layers
    first = blocks[layer]

    def swap_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        x = args[0] if args else kwargs["hidden_states"]
        replaced = hidden.expand(x.shape[0], -1, -1).to(x.dtype)
        if args:
            return (replaced, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replaced}

    handle = first.register_forward_pre_hook(swap_input, with_kwargs=True)
    adapter.set_layers(nn.ModuleList([Skipped() for _ in range(layer)] + list(blocks)[layer:]))
    try:
        yield
    finally:
        adapter.set_layers(blocks)
        handle.remove()
