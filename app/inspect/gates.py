"""Head gates on the input of each layer's attention output projection.

That input is the per-head outputs side by side, ordered by query head:
(B, T, n_heads * head_dim). A gate ξ per (batch row, layer, head) scales a
head's output: x_h ← ξ·x_h + (1−ξ)·r_h, with r_h = 0 ("zero" ablation) or the
head's mean output over the positions of the same text ("mean" ablation).
ξ = 1 everywhere leaves the model bit-identical; gradients wrt ξ give
Michel et al. (2019) head importance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from app.inspect.adapters import Adapter

Mode = Literal["zero", "mean"]


def gate_tensor(
    n_rows: int, n_layers: int, n_heads: int, off: list[list[tuple[int, int]]], device: torch.device | None = None
) -> torch.Tensor:
    """Gates (B, n_layers, n_heads): 1 everywhere except 0 at each row's (layer, head) pairs in `off`."""
    gates = torch.ones(n_rows, n_layers, n_heads, device=device)
    for row, heads in enumerate(off):
        for layer, head in heads:
            gates[row, layer, head] = 0.0
    return gates


@contextmanager
def head_gates(
    adapter: Adapter,
    gates: torch.Tensor,  # (B, n_layers, n_heads); may require grad
    mode: Mode = "zero",
    means: dict[int, torch.Tensor] | None = None,  # per layer (n_heads * head_dim,), for mode="mean"
    layers: list[int] | None = None,
) -> Iterator[None]:
    """Apply head gates during forwards inside the block; hooks are removed on exit, whatever happens.

    Only layers whose gates are not all 1 get a hook (unless `gates` requires grad), so an
    all-ones gate tensor runs the plain model.
    """
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs the per-layer head means of the text")
    n_heads, head_dim = adapter.layout.n_heads, adapter.layout.head_dim
    if layers is None:
        layers = list(range(adapter.layout.n_layers))
        if not gates.requires_grad:
            layers = [layer for layer in layers if bool((gates[:, layer] != 1).any())]
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(layer: int) -> object:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]  # (B, T, n_heads * head_dim)
            b, t, _ = x.shape
            g = gates[:, layer].to(x.dtype)  # (B|1, n_heads)
            g = g.expand(b, n_heads)[:, None, :, None]  # (B, 1, n_heads, 1)
            heads = x.view(b, t, n_heads, head_dim)
            if mode == "zero":
                gated = heads * g
            else:
                assert means is not None
                mean = means[layer].to(x.dtype).view(1, 1, n_heads, head_dim)
                gated = heads * g + mean * (1 - g)
            return (gated.reshape(b, t, n_heads * head_dim), *args[1:])

        return hook

    try:
        for layer in layers:
            handles.append(adapter.out_proj(layer).register_forward_pre_hook(make_hook(layer)))  # type: ignore[arg-type]
        yield
    finally:
        for handle in handles:
            handle.remove()
