"""Attention's parameters and KV cache at a fixed width: the model's own, counted from its weights, and what
other numbers of query and KV heads (MHA, every GQA grouping, MQA) would cost at the same d_model.

At fixed width the head dimension is d_model / n_heads, so the projections' size does not depend on the number
of query heads; only the number of KV heads moves the K/V projections and the KV cache. What crosses the
boundary: `Projections` (per layer) and `HeadConfig` rows; no FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from app.inspect.model.adapters import Adapter
from app.inspect.model.families import Layout

Kind = Literal["MHA", "GQA", "MQA"]
MIN_HEAD_DIM = 8  # narrower heads are not a design anyone uses: the table stops there


@dataclass(frozen=True)
class Projections:
    """Parameter counts (weights and biases) of one layer's q, k, v and output projections."""

    q: int
    k: int
    v: int
    o: int

    @property
    def total(self) -> int:
        return self.q + self.k + self.v + self.o


@dataclass(frozen=True)
class Biases:
    """Which projections carry a bias (the closed forms add it where the model has one)."""

    q: bool
    k: bool
    v: bool
    o: bool


@dataclass(frozen=True)
class HeadConfig:
    """One configuration at the model's width: its heads, head dimension, projection size and KV cache."""

    n_heads: int
    n_kv_heads: int
    kind: Kind
    head_dim: int
    params: Projections  # per layer
    kv_cache_bytes_per_token: int  # K and V of every layer for one token


def _count(module: nn.Module) -> int:
    """Entries of a module's own state dict (weight and bias)."""
    return sum(t.numel() for t in module.state_dict().values())


def _has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def attention_params(adapter: Adapter) -> list[Projections]:
    """Per layer, the q/k/v/o projection parameters counted from the weights.

    A fused projection (GPT-2's c_attn, GPT-NeoX's query_key_value) is split by its output features:
    n_heads·head_dim for q, n_kv_heads·head_dim each for k and v (weights and biases alike).
    """
    layout = adapter.layout
    q_out, kv_out = layout.n_heads * layout.head_dim, layout.n_kv_heads * layout.head_dim
    out = []
    for layer in range(layout.n_layers):
        parts = adapter.qkv_projections(layer)
        o = _count(adapter.out_proj(layer))
        if len(parts) == 3:
            q, k, v = (_count(m) for m in parts)
        else:
            total, width = _count(parts[0]), q_out + 2 * kv_out
            if total % width:
                raise ValueError(f"layer {layer}: fused q/k/v has {total} parameters, not a multiple of {width}")
            q, k, v = total // width * q_out, total // width * kv_out, total // width * kv_out
        out.append(Projections(q=q, k=k, v=v, o=o))
    return out


def biases(adapter: Adapter) -> Biases:
    """Which of layer 0's projections have a bias (a fused projection's bias covers q, k and v)."""
    parts = adapter.qkv_projections(0)
    qkv = [_has_bias(m) for m in parts] * (3 // len(parts))
    return Biases(q=qkv[0], k=qkv[1], v=qkv[2], o=_has_bias(adapter.out_proj(0)))


def projection_params(d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, bias: Biases) -> Projections:
    """The closed form: q and o are d_model × n_heads·head_dim, k and v d_model × n_kv_heads·head_dim (+ biases)."""
    q_out, kv_out = n_heads * head_dim, n_kv_heads * head_dim
    return Projections(
        q=d_model * q_out + (q_out if bias.q else 0),
        k=d_model * kv_out + (kv_out if bias.k else 0),
        v=d_model * kv_out + (kv_out if bias.v else 0),
        o=q_out * d_model + (d_model if bias.o else 0),
    )


def kind(n_heads: int, n_kv_heads: int) -> Kind:
    """MHA: a KV head per query head; MQA: one KV head for several; GQA: in between."""
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else "GQA"


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def config(layout: Layout, n_heads: int, n_kv_heads: int, head_dim: int, bias: Biases, width: int) -> HeadConfig:
    """One configuration of `layout`'s width and depth; `width` is bytes per cached value."""
    return HeadConfig(
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        kind=kind(n_heads, n_kv_heads),
        head_dim=head_dim,
        params=projection_params(layout.d_model, n_heads, n_kv_heads, head_dim, bias),
        kv_cache_bytes_per_token=2 * layout.n_layers * n_kv_heads * head_dim * width,
    )


def head_tradeoff(layout: Layout, bias: Biases, width: int, min_head_dim: int = MIN_HEAD_DIM) -> list[HeadConfig]:
    """Every configuration at the model's width: each n_heads dividing d_model (head_dim = d_model / n_heads ≥
    `min_head_dim`), with each n_kv_heads dividing n_heads (MHA first, MQA last)."""
    rows = []
    for n_heads in divisors(layout.d_model):
        head_dim = layout.d_model // n_heads
        if head_dim < min_head_dim:
            break
        for n_kv in reversed(divisors(n_heads)):
            rows.append(config(layout, n_heads, n_kv, head_dim, bias, width))
    return rows
