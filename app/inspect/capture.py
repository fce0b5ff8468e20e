"""Attention capture through a registered attention function.

The function computes the real attention output with transformers' SDPA path
(so logits stay bit-identical to `attn_implementation="sdpa"`) and, while a
`Recorder` is active, keeps each layer's post-RoPE queries and keys. Any head's
map is then softmax(q·kᵀ·scaling + mask), computed on demand from those.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "headscope"


@dataclass
class LayerQK:
    """What one layer's attention saw: enough to rebuild every head's map."""

    q: torch.Tensor  # (B, n_heads, T, head_dim), post-RoPE
    k: torch.Tensor  # (B, n_kv_heads, T, head_dim), post-RoPE
    mask: torch.Tensor | None  # bool (B|1, 1, T, T) True = attend, float additive, or None = causal
    scaling: float

    @property
    def nbytes(self) -> int:
        size = self.q.numel() * self.q.element_size() + self.k.numel() * self.k.element_size()
        if self.mask is not None:
            size += self.mask.numel() * self.mask.element_size()
        return size


@dataclass
class Recorder:
    """Collects LayerQK for the layers asked for (None = all) during one forward."""

    layers: frozenset[int] | None = None
    captured: dict[int, LayerQK] = field(default_factory=dict)

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def record(self, layer: int, qk: LayerQK) -> None:
        self.captured[layer] = qk


_recorder: ContextVar[Recorder | None] = ContextVar("headscope_recorder", default=None)


def headscope_attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, n_heads, T, head_dim)
    key: torch.Tensor,  # (B, n_kv_heads, S, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also hands queries and keys to the active Recorder."""
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    recorder = _recorder.get()
    layer = getattr(module, "layer_idx", None)
    if recorder is not None and layer is not None and recorder.wants(int(layer)):
        scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        recorder.record(int(layer), LayerQK(q=query.detach(), k=key.detach(), mask=attention_mask, scaling=scale))
    return out, None


def register() -> None:
    """Register the attention and mask functions under ATTN_NAME (idempotent)."""
    AttentionInterface.register(ATTN_NAME, headscope_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def install(model: PreTrainedModel) -> None:
    """Switch a loaded model to the capturing attention function."""
    register()
    model.set_attn_implementation(ATTN_NAME)


@contextmanager
def recording(layers: frozenset[int] | None = None) -> Iterator[Recorder]:
    """Record queries and keys of `layers` (None = all) for forwards run inside the block."""
    recorder = Recorder(layers=layers)
    token = _recorder.set(recorder)
    try:
        yield recorder
    finally:
        _recorder.reset(token)


def attention_maps(
    qk: LayerQK,
    heads: list[int],
    group_size: int,
    rows: slice | None = None,
) -> torch.Tensor:
    """Attention weights of some query heads of one layer, as the model computed them.

    Args:
        qk: the layer's captured queries and keys.
        heads: query-head indices.
        group_size: query heads per KV head.
        rows: optional slice of query positions (for chunked statistics).

    Returns:
        float32 tensor (B, len(heads), Tq, S); rows whose keys are all masked (padding) are 0.
    """
    rows = rows or slice(None)
    idx = torch.tensor(heads, device=qk.q.device)
    q = qk.q[:, idx, rows].float()  # (B, h, Tq, D)
    k = qk.k[:, idx // group_size].float()  # (B, h, S, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * qk.scaling  # (B, h, Tq, S)
    t_q, s = qk.q.shape[2], k.shape[2]
    row_ids = torch.arange(t_q, device=q.device)[rows]
    if qk.mask is None:  # SDPA ran with is_causal: query i sees keys ≤ i (+ any cached prefix)
        allowed = row_ids[:, None] + (s - t_q) >= torch.arange(s, device=q.device)[None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
    else:
        mask = qk.mask[..., rows, :]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)
