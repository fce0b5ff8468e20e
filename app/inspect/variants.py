"""Which attention variant each layer runs, and the start-time check that capture reproduces it.

A family is served only if one short forward shows every layer's attention going through HeadScope's
function (transformers' AttentionInterface) with nothing the maps would ignore; otherwise it is refused
at start with a message naming what is missing, never served with wrong maps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from app.inspect import capture
from app.inspect.adapters import Adapter, UnsupportedArchitecture

PROBE_TOKENS = 4
log = logging.getLogger(__name__)


def check_served(model: PreTrainedModel, adapter: Adapter) -> None:
    """Refuse a model (capture installed) whose maps HeadScope could not reproduce exactly.

    Raises:
        UnsupportedArchitecture: naming the architecture and what is missing.
    """
    model_type = adapter.layout.architecture
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (capture.ATTN_NAME, capture.ATTN_NAME_EAGER):
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention does not go through transformers' AttentionInterface "
            f"(it runs {impl!r}; e.g. ALiBi or its own attention code), so its maps cannot be captured"
        )
    if impl == capture.ATTN_NAME_EAGER:
        missing = [
            layer
            for layer in range(adapter.layout.n_layers)
            if capture.family_eager_function(adapter.attention(layer)) is None
        ]
        if missing:
            raise UnsupportedArchitecture(
                f"architecture {model_type!r} has no SDPA path and no eager_attention_forward (layers {missing})"
            )
    device = next(model.parameters()).device
    ids = (torch.arange(PROBE_TOKENS, device=device) % adapter.layout.vocab_size)[None]  # (1, PROBE_TOKENS)
    with torch.inference_mode(), capture.recording() as rec:
        adapter.backbone()(input_ids=ids, use_cache=False)
    missed = sorted(set(range(adapter.layout.n_layers)) - set(rec.captured))
    if missed:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: layers {missed} do not call transformers' AttentionInterface "
            "(ALiBi or their own attention code), so their maps cannot be captured"
        )
    if rec.unknown_kwargs:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention takes {', '.join(sorted(rec.unknown_kwargs))}, "
            "which HeadScope's maps do not reproduce"
        )
    # found here, at start, by probe forwards (cached on the adapter), never later beside the model worker:
    # logits lm_head() does not reproduce would make every prediction, loss and score wrong — refused;
    # a block layout DLA cannot decompose only makes /api/dla answer 422 with the reason
    readout = adapter.tracing_gaps(dla=False)
    if readout is not None:
        raise UnsupportedArchitecture(f"architecture {model_type!r}: {readout}")
    gap = adapter.tracing_gaps(dla=True)
    if gap is not None:
        log.warning("%s", gap)


@dataclass(frozen=True)
class LayerVariant:
    """What one layer's attention map is: local (a sliding window) or global, soft-capped, with sinks."""

    window: int | None  # tokens a query sees back (itself included), None for a global layer
    softcap: float | None  # Gemma 2: scores ← tanh(scores / cap) · cap
    sinks: bool  # GPT-OSS: a learned logit per head takes part of each row's mass

    @property
    def label(self) -> str:
        """ "local 4096", "global", plus ", soft-cap 50" and ", sinks"."""
        parts = [f"local {self.window}" if self.window is not None else "global"]
        if self.softcap is not None:
            parts.append(f"soft-cap {self.softcap:g}")
        if self.sinks:
            parts.append("sinks")
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
        out.append(LayerVariant(size, float(softcap) if softcap else None, sinks))
    return out


def layer_variants(model: PreTrainedModel, adapter: Adapter) -> list[str]:
    """Per layer, what its attention map is: "global", "local 4096", plus "soft-cap 50" and "sinks"."""
    return [variant.label for variant in variants_of(model, adapter)]
