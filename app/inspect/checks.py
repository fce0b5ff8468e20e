"""The start-up checks: a model is served only if its maps, logits and tracing are reproduced exactly.

A family is served only if one short forward shows every layer's attention going through HeadScope's
function (transformers' AttentionInterface) with nothing the maps would ignore, or recorded beside the
family's own attention code (BLOOM, MPT, Falcon: app.inspect.model.own_attention), and every layer's output
projection called as a module (where the head gates act); otherwise it is refused at start with a message
naming what is missing, never served with wrong maps. The tracing gaps (logits
lm_head() does not reproduce, a block layout DLA cannot decompose) are found here too, by probe forwards,
and kept on the adapter. This module sits above the model, engine and observation packages it checks.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from app.inspect.engine.hooks import recording_head_outputs
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.families import UnsupportedArchitecture
from app.inspect.observe import dla as attribution

PROBE_TOKENS = 4
log = logging.getLogger(__name__)


def check_served(model: PreTrainedModel, adapter: Adapter) -> None:
    """Refuse a model (capture installed) whose maps HeadScope could not reproduce exactly.

    Raises:
        UnsupportedArchitecture: naming the architecture and what is missing.
    """
    model_type = adapter.layout.architecture
    impl = getattr(model.config, "_attn_implementation", None)
    own = capture.records_own_attention(model)
    if not own and impl not in (capture.ATTN_NAME, capture.ATTN_NAME_EAGER):
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention does not go through transformers' AttentionInterface "
            f"(it runs {impl!r}; e.g. ALiBi or its own attention code), so its maps cannot be captured"
        )
    if not own and impl == capture.ATTN_NAME_EAGER:
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
    heads: dict[int, torch.Tensor] = {}
    with (
        torch.inference_mode(),
        capture.recording() as rec,
        recording_head_outputs(adapter, heads, keep=lambda x: x[:0]),
    ):
        adapter.backbone()(input_ids=ids, use_cache=False)
    missed = sorted(set(range(adapter.layout.n_layers)) - set(rec.captured))
    if missed:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: layers {missed} do not call transformers' AttentionInterface "
            "(ALiBi or their own attention code), so their maps cannot be captured"
        )
    ungated = sorted(set(range(adapter.layout.n_layers)) - set(heads))
    if ungated:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: layers {ungated} compute their attention output without calling "
            f"their output projection ({adapter.family.out_proj}) as a module, so heads cannot be switched off"
        )
    if rec.unknown_kwargs:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r}: its attention takes {', '.join(sorted(rec.unknown_kwargs))}, "
            "which HeadScope's maps do not reproduce"
        )
    # found here, at start, by probe forwards (cached on the adapter), never later beside the model worker:
    # logits lm_head() does not reproduce would make every prediction, loss and score wrong — refused;
    # a block layout DLA cannot decompose only makes /api/dla answer 422 with the reason
    readout = tracing_gaps(adapter, dla=False)
    if readout is not None:
        raise UnsupportedArchitecture(f"architecture {model_type!r}: {readout}")
    gap = tracing_gaps(adapter, dla=True)
    if gap is not None:
        log.warning("%s", gap)


def tracing_gaps(adapter: Adapter, dla: bool = False) -> str | None:
    """Why causal tracing would not be exact on this model (None: it is); checked once on a probe.

    Patching and the logit lens read logits as lm_head()(final_norm(h)) (readout included): the probe checks
    that equals the model's own logits. DLA also checks its decomposition (app.inspect.observe.dla.check).
    """
    if False not in adapter.gaps:
        adapter.gaps[False] = _readout_gap(adapter)
    if adapter.gaps[False] is not None or not dla:
        return adapter.gaps[False]
    if True not in adapter.gaps:
        adapter.gaps[True] = attribution.check(adapter)
    return adapter.gaps[True]


def _readout_gap(adapter: Adapter) -> str | None:
    """None when lm_head()(backbone(ids)) reproduces the CausalLM's logits on a probe."""
    device = next(adapter.model.parameters()).device
    ids = torch.arange(3, 9, device=device)[None] % adapter.layout.vocab_size  # (1, 6)
    with torch.inference_mode():
        expected = adapter.model(input_ids=ids, use_cache=False).logits.float()
        hidden = adapter.backbone()(input_ids=ids, use_cache=False).last_hidden_state
        got = adapter.lm_head()(hidden).float()
    if torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * (1 + float(expected.abs().max()))):
        return None
    return (
        f"{adapter.layout.architecture} computes its logits in a way tracing does not reproduce "
        "(not lm_head(final norm) with a logit scale and final soft-cap)"
    )
