"""Which attention variant each layer runs (window, soft-cap, sinks, ALiBi), from the config and the modules.

The start-time check that capture reproduces every variant is app.inspect.checks.check_served.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from app.inspect.model import own_attention
from app.inspect.model.adapters import Adapter


@dataclass(frozen=True)
class LayerVariant:
    """What one layer's attention map is: local (a sliding window) or global, soft-capped, with sinks."""

    window: int | None  # tokens a query sees back (itself included), None for a global layer
    softcap: float | None  # Gemma 2: scores ← tanh(scores / cap) · cap
    sinks: bool  # GPT-OSS: a learned logit per head takes part of each row's mass
    alibi: bool = False  # BLOOM, MPT, some Falcons: a linear bias per head on the key's position

    @property
    def label(self) -> str:
        """ "local 4096", "global", plus ", soft-cap 50", ", sinks" and ", ALiBi"."""
        parts = [f"local {self.window}" if self.window is not None else "global"]
        if self.softcap is not None:
            parts.append(f"soft-cap {self.softcap:g}")
        if self.sinks:
            parts.append("sinks")
        if self.alibi:
            parts.append("ALiBi")
        return ", ".join(parts)


def variants_of(model: PreTrainedModel, adapter: Adapter) -> list[LayerVariant]:
    """Per layer, its attention variant, from the config (the mask transformers builds per layer type)."""
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    softcap = getattr(config, "attn_logit_softcapping", None)
    out = []
    for layer in range(adapter.layout.n_layers):
        local = window is not None and (layer_types is None or layer_types[layer] == "sliding_attention")
        if getattr(config, "use_sliding_window", True) is False:
            local = False
        sinks = getattr(adapter.attention(layer), "sinks", None) is not None
        size = int(window) if local and window is not None else None
        out.append(LayerVariant(size, float(softcap) if softcap else None, sinks, own_attention.alibi(config)))
    return out


def layer_variants(model: PreTrainedModel, adapter: Adapter) -> list[str]:
    """Per layer, what its attention map is: "global", "local 4096", plus "soft-cap 50", "sinks" and "ALiBi"."""
    return [variant.label for variant in variants_of(model, adapter)]
