"""Work floors: the multiply-adds a computation cannot skip, as a ratio to the forwards it is measured against.

A ratio below its floor needs better-used hardware (bigger batches, fewer page faults), not less work; a
target below the floor cannot be met by an exact method on the same hardware at the same efficiency.
"""

from __future__ import annotations

from torch import nn

from app.inspect.model.loaded import Loaded


def block_macs(loaded: Loaded, tokens: int) -> float:
    """Multiply-adds of one dense decoder block per token of a `tokens`-long text: its linear maps and q·k, p·v.

    Every Linear of the block is counted, so an MoE block would count all its experts: dense models only."""
    adapter, layout = loaded.adapter, loaded.adapter.layout
    linear = sum(m.weight.numel() for m in adapter.layers[0].modules() if isinstance(m, nn.Linear))
    return linear + 2 * layout.n_heads * layout.head_dim * (tokens + 1) / 2  # a query sees (t + 1) / 2 keys on average


def head_macs(loaded: Loaded) -> float:
    """Multiply-adds of the LM head per token."""
    return float(loaded.adapter.layout.vocab_size * loaded.adapter.layout.d_model)


def forward_macs(loaded: Loaded, tokens: int) -> float:
    """One plain forward with logits at every position."""
    return tokens * (loaded.adapter.layout.n_layers * block_macs(loaded, tokens) + head_macs(loaded))


def every_head_from_its_block(loaded: Loaded, tokens: int, lm_head: bool) -> float:
    """Each head's run starts at its own block (nothing before it changes) and runs the rest; with or without
    the LM head at every position. Divided by as many plain forwards."""
    layout = loaded.adapter.layout
    block_runs = sum(layout.n_layers - layer for layer in range(layout.n_layers)) * layout.n_heads
    work = tokens * block_runs * block_macs(loaded, tokens)
    if lm_head:
        work += tokens * layout.n_layers * layout.n_heads * head_macs(loaded)
    return work / (layout.n_layers * layout.n_heads * forward_macs(loaded, tokens))


def lens_grid(loaded: Loaded, tokens: int) -> float:
    """Every block's stream through the LM head at every position, over one plain forward."""
    return tokens * loaded.adapter.layout.n_layers * head_macs(loaded) / forward_macs(loaded, tokens)
