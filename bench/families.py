"""Family rows (issue 13): the analysis run of a local/global family (Gemma 3) and of a mixture-of-experts
family (Qwen3-MoE) vs the same model's plain SDPA forward at 512 tokens (target ≤ 1.3×).

Random-init models at a small realistic shape (d_model 512, 8 layers, 8 query heads over 4 KV heads,
head_dim 64), float32 on the bench's device; timing does not depend on the weights. They borrow the
default model's tokenizer (ids < 49152 fit the vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from app.inspect import checks
from app.inspect.model import capture, variants
from app.inspect.model.adapters import Adapter
from app.inspect.model.loaded import Loaded
from bench import analysis, models
from bench.report import Row

TOKENS, TARGET = 512, 1.3
_COMMON: dict[str, Any] = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=4096,
)
SHAPES: dict[str, dict[str, Any]] = {
    # five local layers (window 128, shorter than the text) to one global, as Gemma 3 does
    "gemma3_text": dict(
        _COMMON,
        intermediate_size=2048,
        sliding_window=128,
        query_pre_attn_scalar=64,
        layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2,
    ),
    "qwen3_moe": dict(_COMMON, intermediate_size=2048, moe_intermediate_size=512, num_experts=8, num_experts_per_tok=2),
}


def family_model(model_type: str, device: str = "cpu") -> Loaded:
    """A random-init model of the family at SHAPES' shape, prepared (and checked) as the server prepares one."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **SHAPES[model_type])
    model = AutoModelForCausalLM.from_config(config).to(device).eval()
    model.requires_grad_(False)
    capture.install(model)
    adapter = Adapter(model)
    checks.check_served(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(models.TOKENIZER_DIR)
    dev = torch.device(device)
    return Loaded(f"random-{model_type}", model, tokenizer, adapter, dev, torch.float32)


def family_row(model_type: str, reps: int, device: str = "cpu") -> Row:
    """The analysis run (analyse + head_stats, thumb 32) vs the plain SDPA forward, both at TOKENS tokens."""
    loaded = family_model(model_type, device)
    a = analysis.measure(loaded, TOKENS, reps, eager=False)
    labels = variants.layer_variants(loaded.model, loaded.adapter)
    kinds = sorted(set(labels), key=labels.index)
    row = analysis.analysis_row(a, TARGET)
    row.what = f"{model_type} ({', '.join(kinds)}; d 512, 8 layers): analysis run, {TOKENS} tokens"
    row.beside = ""
    return row


def rows(reps: int, device: str = "cpu") -> list[Callable[[], Row]]:
    """One row per family, as steps."""
    return [lambda t=t: family_row(t, reps, device) for t in SHAPES]  # type: ignore[misc]
