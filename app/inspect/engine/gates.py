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

from app.inspect.engine.hooks import Edit, editing_head_outputs
from app.inspect.model.adapters import Adapter

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
    if layers is None:
        layers = list(range(adapter.layout.n_layers))
        if not gates.requires_grad:
            layers = [layer for layer in layers if bool((gates[:, layer] != 1).any())]

    def edit(layer: int) -> Edit:
        def gated(heads: torch.Tensor) -> torch.Tensor:  # (B, T, n_heads, head_dim)
            g = gates[:, layer].to(heads.dtype)  # (B|1, n_heads)
            g = g.expand(heads.shape[0], -1)[:, None, :, None]  # (B, 1, n_heads, 1)
            if mode == "zero":
                return heads * g
            assert means is not None
            mean = means[layer].to(heads.dtype).view(1, 1, *heads.shape[2:])
            return heads * g + mean * (1 - g)

        return gated

    with editing_head_outputs(adapter, {layer: edit(layer) for layer in layers}):
        yield
