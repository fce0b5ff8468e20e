"""What the attention of families with their own attention code adds up before its softmax.

BLOOM and MPT (ALiBi) and Falcon (rotary or ALiBi, multi-query or grouped KV heads) compute their scores in
their attention module instead of calling transformers' AttentionInterface. For each such module class a
reader takes the arguments the model passed to the module and returns what its softmax saw: post-rotary
queries and keys (recomputed with the projection's own forward, so the same numbers), the scaling, the mask
and the ALiBi bias, the tensor the model added, per head and key. app.inspect.model.capture runs the
module's own forward for the output and calls the reader beside it, so the logits do not change.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class Seen:
    """One layer's scores: softmax(q·kᵀ·scaling + bias + mask) is its map."""

    q: torch.Tensor  # (B, n_heads, T, head_dim), post-rotary
    k: torch.Tensor  # (B, n_kv_heads, S, head_dim), post-rotary, the cache's keys included
    mask: torch.Tensor | None  # bool (B|1, 1, T, S) True = attend, float additive (B|1, 1, T, S), or None = causal
    scaling: float
    bias: torch.Tensor | None = None  # ALiBi (B|1, n_heads, 1, S): one value per head and key


# (the attention module, typed Any as its attributes are the modeling file's; its bound forward arguments)
Reader = Callable[[Any, dict[str, Any]], Seen]


def _keys(cache: Any, layer: int, fresh: torch.Tensor) -> torch.Tensor:
    """The keys the layer attended to: the cache's (read after the forward, so the new ones included), else `fresh`."""
    if cache is None:
        return fresh
    keys: torch.Tensor = cache.layers[layer].keys
    return keys


def _bloom(module: Any, a: dict[str, Any]) -> Seen:
    """BloomAttention: scores = alibi·beta + (q·kᵀ)·inv_norm_factor (baddbmm), then + the float mask."""
    hidden = a["hidden_states"]  # (B, T, d)
    b = hidden.shape[0]
    q, k, _ = module._reshape(module.query_key_value.forward(hidden))  # (B, H, T, D) each
    alibi = a["alibi"]  # (B·H, 1, S)
    return Seen(
        q=q,
        k=_keys(a["layer_past"], module.layer_idx, k),
        mask=a["attention_mask"],
        scaling=float(module.inv_norm_factor),
        bias=alibi.view(b, module.num_heads, 1, alibi.shape[-1]) * module.beta,
    )


def _mpt(module: Any, a: dict[str, Any]) -> Seen:
    """MptAttention: scores = (q·kᵀ)·softmax_scale + position_bias (ALiBi, sliced to the keys), masked where True."""
    hidden = a["hidden_states"]  # (B, T, d)
    b, t = hidden.shape[:2]
    qkv = module.Wqkv.forward(hidden)
    if module.clip_qkv:
        qkv = qkv.clamp(min=-module.clip_qkv, max=module.clip_qkv)
    q, k, _ = qkv.chunk(3, dim=2)
    shape = (b, t, module.n_heads, module.head_dim)
    cache = a["cache"]
    k = _keys(cache, module.layer_idx, k.reshape(shape).transpose(1, 2))
    bias = a["position_bias"]  # (H, 1, max_seq_len): the model keeps the last rows and keys, as here
    if bias is not None:
        rows = t if cache is None else t + cache.get_seq_length()
        bias = bias[:, max(0, bias.size(1) - rows) :, max(0, bias.size(2) - k.shape[-2]) :][None]
    mask = a["attention_mask"]  # bool, True = masked
    return Seen(
        q=q.reshape(shape).transpose(1, 2),
        k=k,
        mask=None if mask is None else ~mask,
        scaling=float(module.softmax_scale),
        bias=bias,
    )


def _falcon(module: Any, a: dict[str, Any]) -> Seen:
    """FalconAttention: rotary q·kᵀ/√D + mask; with ALiBi the model folds alibi/√D into the mask it passes
    (SDPA adds it once), and the eager path adds alibi/√D to the scores as well (twice in all)."""
    hidden = a["hidden_states"]  # (B, T, d)
    b, t = hidden.shape[:2]
    q, k, _ = module._split_heads(module.query_key_value.forward(hidden))  # (B, T, heads, D)
    n_heads, d = module.num_heads, module.head_dim
    n_kv = n_heads if module.new_decoder_architecture else module.num_kv_heads  # new: keys repeated per query head
    q = q.transpose(1, 2).reshape(b, n_heads, t, d)
    k = k.transpose(1, 2).reshape(b, n_kv, t, d)
    alibi, mask = a["alibi"], a["attention_mask"]
    if alibi is None:
        cos, sin = a["position_embeddings"]
        q, k = sys.modules[type(module).__module__].apply_rotary_pos_emb(q, k, cos, sin)
    k = _keys(a["layer_past"], module.layer_idx, k)
    if module.new_decoder_architecture:
        k = k[:, :: n_heads // module.num_kv_heads]  # one per KV head: (B, n_kv_heads, S, D)
    bias = None
    if alibi is not None:
        folded = alibi.view(b, n_heads, 1, alibi.shape[-1]) / math.sqrt(module.config.hidden_size // n_heads)
        sdpa = module.config._attn_implementation == "sdpa" and not a["output_attentions"]
        bias = folded if sdpa else 2 * folded
        if mask is not None and mask.dtype != torch.bool:  # alibi/√D where attended, the dtype's min where not
            mask = mask[:, :1] > -1
    return Seen(q=q, k=k, mask=mask, scaling=float(module.inv_norm_factor), bias=bias)


# by attention class name; another class of these families (Falcon's flash attention) is not recorded, so refused
READERS: dict[str, Reader] = {"BloomAttention": _bloom, "MptAttention": _mpt, "FalconAttention": _falcon}


def reader(module: nn.Module) -> Reader | None:
    """The reader of an attention module that computes its own scores, or None."""
    return READERS.get(type(module).__name__)


def alibi(config: PretrainedConfig) -> bool:
    """Whether the model adds ALiBi biases to its attention scores (BLOOM and MPT always, Falcon by its config)."""
    model_type = getattr(config, "model_type", "")
    return model_type in ("bloom", "mpt") or (model_type == "falcon" and bool(getattr(config, "alibi", False)))


def kv_heads(config: PretrainedConfig) -> int | None:
    """Falcon's KV heads: num_kv_heads in the new decoder architecture, 1 with multi-query, else one per head;
    None for other families (their config's num_key_value_heads says)."""
    if getattr(config, "model_type", "") != "falcon":
        return None
    if getattr(config, "new_decoder_architecture", False):
        return int(config.num_kv_heads)
    return 1 if getattr(config, "multi_query", False) else int(config.num_attention_heads)
