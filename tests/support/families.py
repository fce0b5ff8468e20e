"""Tiny random-init models of every decoder family HeadScope knows, served or refused: one list drives the tests.

Each model has 2–3 layers, 4 query heads (2 KV heads where the family has GQA), d_model 64, a 128-token
vocabulary and a sliding window of 4 where the family has one, so a 12-token text crosses the window.
initializer_range 0.2 (10× the usual) makes the attention logits large enough that soft-capping, sinks and
windows visibly change the maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel

from app.inspect import checks
from app.inspect.model.blocks import PLANS, falcon_plan
from app.inspect.model.loaded import Loaded
from tests.support import models
from tests.support.models import as_loaded

VOCAB = 128
WINDOW = 4  # sliding window of the tiny local layers
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
LOCAL_GLOBAL = ["sliding_attention", "full_attention", "sliding_attention"]


@dataclass(frozen=True)
class Spec:
    """One family: how to build its tiny model, what it varies, and whether HeadScope serves it."""

    model_type: str
    label: str  # display name for the README table
    variant: str  # what changes "the attention map" (or the block) in this family
    config: dict[str, Any] = field(default_factory=dict)  # overrides of COMMON (None drops a key)
    out_proj: str = "self_attn.o_proj"  # the block's output projection, as the test expects discovery to find it
    refused: str = ""  # non-empty: HeadScope must refuse it at start with a message containing this


SPECS: list[Spec] = [
    Spec("llama", "Llama", "GQA, RoPE"),
    Spec("mistral", "Mistral", "sliding window", {"sliding_window": WINDOW}),
    Spec(
        "qwen2",
        "Qwen2",
        "sliding window on later layers",
        {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1, "num_hidden_layers": 3},
    ),
    Spec("qwen3", "Qwen3", "QK-norm", {"head_dim": 16}),
    Spec("gemma", "Gemma", "GQA, (1+w) RMSNorm, scaled embeddings", {"head_dim": 16}),
    Spec(
        "gemma2",
        "Gemma 2",
        "logit soft-cap, local/global layers",
        {
            "head_dim": 16,
            "sliding_window": WINDOW,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 5.0,
            "query_pre_attn_scalar": 16,
            "num_hidden_layers": 3,
            "layer_types": LOCAL_GLOBAL,
        },
    ),
    Spec(
        "gemma3_text",
        "Gemma 3 (text)",
        "local/global layers with their own RoPE, QK-norm",
        {
            "head_dim": 16,
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 16,
            "num_hidden_layers": 3,
            "layer_types": LOCAL_GLOBAL,
        },
    ),
    Spec("phi", "Phi", "partial rotary, parallel attention/MLP", {"num_key_value_heads": 4}, "self_attn.dense"),
    Spec("phi3", "Phi-3", "fused QKV", {"sliding_window": None}),
    Spec("olmo", "OLMo", "non-parametric LayerNorm"),
    Spec("olmo2", "OLMo 2", "QK-norm, norms after attention/MLP"),
    Spec("stablelm", "StableLM", "partial rotary (25%)", {"num_key_value_heads": 4}),
    Spec("starcoder2", "StarCoder2", "sliding window, biases", {"sliding_window": WINDOW}),
    Spec("cohere", "Cohere", "parallel attention/MLP, logit scale", {"logit_scale": 0.5}),
    Spec(
        "granite",
        "Granite",
        "attention/residual/logit multipliers",
        {"attention_multiplier": 0.3, "residual_multiplier": 0.5, "logits_scaling": 2.0},
    ),
    Spec("mixtral", "Mixtral", "mixture of experts", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    Spec(
        "qwen3_moe",
        "Qwen3-MoE",
        "mixture of experts, QK-norm",
        {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    ),
    Spec(
        "gpt_oss",
        "GPT-OSS",
        "learned sinks, local/global layers, mixture of experts",
        {
            "head_dim": 16,
            "sliding_window": WINDOW,
            "num_hidden_layers": 3,
            "layer_types": LOCAL_GLOBAL,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
        },
    ),
    Spec("gpt2", "GPT-2", "learned positions, fused QKV", {}, "attn.c_proj"),
    Spec("gpt_neox", "GPT-NeoX / Pythia", "partial rotary, parallel attention/MLP", {}, "attention.dense"),
    Spec("gptj", "GPT-J", "interleaved partial rotary, parallel attention/MLP", {"rotary_dim": 8}, "attn.out_proj"),
    Spec("bloom", "BLOOM", "ALiBi, LayerNorm on the embeddings, own attention code", {}, "self_attention.dense"),
    Spec(
        "mpt",
        "MPT",
        "ALiBi, clipped QKV, own attention code",
        {"attn_config": {"clip_qkv": 1.0}},
        "attn.out_proj",
    ),
    Spec(
        "falcon",
        "Falcon",
        "multi-query, rotary, parallel attention/MLP, own attention code",
        {},
        "self_attention.dense",
    ),
]

# config names each family spells differently (GPT-2 style n_embd, …), mapped from COMMON's
_RENAMES: dict[str, dict[str, str]] = {
    "gpt2": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "gptj": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "mpt": {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"},
}
_DROP = {  # COMMON keys a family's config does not take (or takes with another meaning)
    "gpt2": {"intermediate_size", "num_key_value_heads", "max_position_embeddings"},
    "gptj": {"intermediate_size", "num_key_value_heads", "max_position_embeddings"},
    "bloom": {"intermediate_size", "num_key_value_heads", "max_position_embeddings"},
    "mpt": {"intermediate_size", "num_key_value_heads", "max_position_embeddings"},
    "gpt_neox": {"num_key_value_heads"},
    "falcon": {"intermediate_size", "num_key_value_heads"},
}


def config_kwargs(spec: Spec) -> dict[str, Any]:
    """COMMON with the family's renames, drops and overrides applied."""
    kwargs = {k: v for k, v in COMMON.items() if k not in _DROP.get(spec.model_type, set())}
    renames = _RENAMES.get(spec.model_type, {})
    kwargs = {renames.get(k, k): v for k, v in kwargs.items()}
    kwargs.update(spec.config)
    return kwargs


def build(spec: Spec, attn: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """The family's tiny model in eval mode; `attn` falls back to eager where the family has no SDPA path.

    Eager is also set in the config, so it holds for a family that cannot switch after construction (Falcon: an
    SDPA Falcon asked for output_attentions adds its boolean mask to the scores as 0/1).
    """
    config = config_kwargs(spec) | ({"attn_implementation": "eager"} if attn == "eager" else {})
    return models.build(spec.model_type, config, seed, attn)


SERVED = [spec.model_type for spec in SPECS if not spec.refused]


@cache
def served(model_type: str) -> Loaded:
    """The family's tiny model as the server holds it (capture installed, checked), built once per session.

    Its tokenizer is GPT-2's, whose ids exceed VOCAB: tests pass token ids (`ids`), not text.
    """
    model = build(by_type(model_type))
    loaded = as_loaded(model, f"tiny-{model_type}")
    checks.check_served(model, loaded.adapter)
    return loaded


def ids(n: int = 3 * WINDOW, seed: int = 1) -> list[int]:
    """n token ids in 3..VOCAB−1 (past the sliding window for the default n)."""
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def save(spec: Spec, path: Path) -> Path:
    """The family's tiny model with GPT-2's vocabulary, saved with GPT-2's tokenizer as a servable directory."""
    return models.save(models.build(spec.model_type, {**config_kwargs(spec), "vocab_size": models.VOCAB}), path)


def by_type(model_type: str) -> Spec:
    """The spec of one family."""
    return next(spec for spec in SPECS if spec.model_type == model_type)


TABLE_START = (
    "<!-- families:start (generated by `python -m tests.support.families`; tests/test_families.py checks it) -->"
)
TABLE_END = "<!-- families:end -->"


def tracing_note(spec: Spec) -> str:
    """How DLA decomposes the family's blocks and logits (from its config and app.inspect.model.blocks.PLANS)."""
    if spec.refused:
        return "—"
    config = AutoConfig.for_model(spec.model_type, **config_kwargs(spec))
    plan = PLANS.get(spec.model_type)
    notes = []
    if spec.model_type == "falcon":
        plan = falcon_plan(config)
    if (plan is not None and plan.parallel) or getattr(config, "use_parallel_residual", False):
        notes.append("parallel block")
    if plan is not None and plan.attn_out_norm:
        notes.append("norms on attention/MLP outputs frozen at the run")
    if getattr(config, "residual_multiplier", 1.0) not in (1.0, None):
        notes.append("residual multiplier")
    if any(getattr(config, name, None) not in (None, 1.0) for name in ("logit_scale", "logits_scaling")):
        notes.append("logit scale folded in")
    if getattr(config, "final_logit_softcapping", None):
        notes.append("final soft-cap: parts explain the pre-cap logit")
    if "sinks" in spec.variant:
        notes.append("sinks: the value bias weighted by the row's mass")
    if "mixture of experts" in spec.variant:
        notes.append("MoE MLP as one term")
    return "; ".join(notes) or "pre-norm sequential"


def readme_table() -> str:
    """The README's table of families, from SPECS."""
    rows = ["| family | model_type | what varies | HeadScope | DLA blocks |", "|---|---|---|---|---|"]
    for spec in SPECS:
        status = f"refused at start ({spec.refused})" if spec.refused else "served"
        rows.append(f"| {spec.label} | `{spec.model_type}` | {spec.variant} | {status} | {tracing_note(spec)} |")
    return "\n".join([TABLE_START, *rows, TABLE_END])


if __name__ == "__main__":
    print(readme_table())
