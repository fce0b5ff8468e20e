"""The token view's data: every head's attention from one query position, read off the cached run."""

from __future__ import annotations

import torch

from app.inspect.engine.runs import Run
from app.inspect.model.families import Layout


def attention_from(run: Run, layout: Layout, query_pos: int) -> torch.Tensor:
    """Every head's attention row from `query_pos` (≥ 0): (n_layers, n_heads, n_tokens), float32, 0 after it."""
    heads = list(range(layout.n_heads))
    rows = slice(query_pos, query_pos + 1)
    return torch.stack([run.maps(layer, heads, layout.group_size, rows)[:, 0] for layer in range(layout.n_layers)])
