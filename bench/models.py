"""The models a benchmark runs: the real default model on CPU, or random-init models of a given shape on a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from app.inspect.loading import CACHE, load
from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.loaded import Loaded

DEFAULT = "smollm2-135m"
TOKENIZER_DIR = CACHE / DEFAULT  # its tokenizer serves the random models too: ids < 49152 fit both vocabularies

# Llama shapes of the default model and of Llama-3-8B; timing does not depend on the weights.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
    ),
}


def default_model(device: str = "cpu", dtype: str = "float32") -> Loaded:
    """The embedded default model, loaded the way the server loads it."""
    return load(DEFAULT, device=device, dtype=dtype)


def random_model(
    shape: str, device: str, dtype: torch.dtype = torch.bfloat16, tokenizer_dir: Path = TOKENIZER_DIR
) -> Loaded:
    """A random-init Llama of `shape` built directly on `device` in `dtype`, prepared like a loaded model."""
    config = LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False)
    dev = torch.device(device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with dev:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()  # type: ignore[no-untyped-call]
    model.requires_grad_(False)
    capture.install(model)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return Loaded(
        name=f"random-{shape}", model=model, tokenizer=tokenizer, adapter=Adapter(model), device=dev, dtype=dtype
    )


@contextmanager
def attention(loaded: Loaded, implementation: str) -> Iterator[None]:
    """Run the model with another attention implementation ("sdpa", "eager") inside the block.

    The same weights serve the baseline and HeadScope, so only the attention path differs.
    """
    loaded.model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        loaded.model.set_attn_implementation(capture.ATTN_NAME)


def input_ids(loaded: Loaded, ids: list[int], batch: int = 1) -> torch.Tensor:
    """(batch, T) ids on the model's device."""
    return torch.tensor([ids] * batch, device=loaded.device)


@torch.inference_mode()
def plain_backbone(loaded: Loaded, x: torch.Tensor) -> None:
    """Plain SDPA forward to the final hidden state (what analyse() runs, without capture)."""
    with attention(loaded, "sdpa"):
        loaded.adapter.backbone()(input_ids=x, use_cache=False)


@torch.inference_mode()
def plain_full(loaded: Loaded, x: torch.Tensor) -> None:
    """Plain SDPA forward with logits at every position (what a loss, an ablation or a sweep needs)."""
    with attention(loaded, "sdpa"):
        loaded.model(input_ids=x, use_cache=False)


@torch.inference_mode()
def eager_attentions(loaded: Loaded, x: torch.Tensor) -> None:
    """Peers' way: eager attention with output_attentions, every map of every layer materialised."""
    with attention(loaded, "eager"):
        out = loaded.adapter.backbone()(input_ids=x, use_cache=False, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == loaded.adapter.layout.n_layers
