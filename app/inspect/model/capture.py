"""Attention capture through a registered attention function, or beside a family's own attention code.

The function computes the real attention output with the function the model itself
would call — transformers' SDPA path, or the family's own eager function where the
family has no SDPA path (Gemma 2's soft-cap, GPT-OSS's sinks) — so logits stay
bit-identical, and, while a `Recorder` is active, keeps each layer's post-RoPE
queries and keys, its own mask (local layers get their window's), scaling,
soft-cap and sinks. Families whose attention module computes its own scores (BLOOM,
MPT, Falcon) keep their code: their modules' forward is wrapped once, here, and a
reader (app.inspect.model.own_attention) records the same things beside it, plus the
ALiBi bias. Any head's map is then softmax(softcap(q·kᵀ·scaling) + bias + mask
[, sink]), computed on demand from those.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakSet

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from app.inspect.model import own_attention

ATTN_NAME = "headscope"  # delegates to SDPA
ATTN_NAME_EAGER = "headscope_eager"  # delegates to the family's own eager_attention_forward
# attention kwargs that do not change the map (or that LayerQK records); any other one with a value is reported
KNOWN_KWARGS = frozenset(
    {
        "sliding_window",
        "softcap",
        "s_aux",
        "position_ids",
        "cache_position",
        "is_causal",
        "output_attentions",
        "use_cache",
    }
)


@dataclass
class LayerQK:
    """What one layer's attention saw: enough to rebuild every head's map."""

    q: torch.Tensor  # (B, n_heads, T, head_dim), post-RoPE
    k: torch.Tensor  # (B, n_kv_heads, T, head_dim), post-RoPE
    mask: torch.Tensor | None  # bool (B|1, 1, T, T) True = attend, float additive, or None = causal
    scaling: float
    softcap: float | None = None  # Gemma 2: scores ← tanh(scores / softcap) · softcap before the mask
    sinks: torch.Tensor | None = None  # GPT-OSS (n_heads,): an extra logit per head, dropped after the softmax
    sliding_window: int | None = None  # the window the layer's mask carries (for display; the mask is the truth)
    bias: torch.Tensor | None = None  # ALiBi (B|1, n_heads, 1, S): added per head and key before the mask

    @property
    def rows_sum_to_one(self) -> bool:
        """False with sinks: a row gives part of its mass to the sink, so it sums to less than 1 over the keys."""
        return self.sinks is None

    @property
    def nbytes(self) -> int:
        size = self.q.numel() * self.q.element_size() + self.k.numel() * self.k.element_size()
        for extra in (self.mask, self.bias):
            if extra is not None:
                size += extra.numel() * extra.element_size()
        return size


@dataclass
class Recorder:
    """Collects LayerQK for the layers asked for (None = all) during one forward."""

    layers: frozenset[int] | None = None
    captured: dict[int, LayerQK] = field(default_factory=dict)
    unknown_kwargs: set[str] = field(default_factory=set)  # attention kwargs with a value the maps ignore

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
    _record(module, query, key, attention_mask, scaling, kwargs)
    return out, None


def headscope_attention_eager(
    module: nn.Module,
    query: torch.Tensor,  # (B, n_heads, T, head_dim)
    key: torch.Tensor,  # (B, n_kv_heads, S, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The family's own eager attention (soft-cap, sinks and all), handing queries and keys to the Recorder."""
    eager = family_eager_function(module)
    if eager is None:
        raise RuntimeError(f"{type(module).__module__} has no eager_attention_forward")
    out, _ = eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    _record(module, query, key, attention_mask, scaling, kwargs)
    return out, None


def family_eager_function(module: nn.Module) -> Any:
    """The eager_attention_forward of the module's own modeling file (what "eager" calls), or None."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _record(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    kwargs: dict[str, Any],
) -> None:
    recorder = _recorder.get()
    layer = getattr(module, "layer_idx", None)
    if recorder is None or layer is None or not recorder.wants(int(layer)):
        return
    recorder.unknown_kwargs.update(k for k, v in kwargs.items() if v is not None and k not in KNOWN_KWARGS)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux", getattr(module, "sinks", None))  # GPT-OSS passes its sinks as s_aux too
    window = kwargs.get("sliding_window")
    recorder.record(
        int(layer),
        LayerQK(
            q=query.detach(),
            k=key.detach(),
            mask=attention_mask,
            scaling=scale,
            softcap=float(softcap) if softcap is not None else None,
            sinks=sinks.detach() if isinstance(sinks, torch.Tensor) else None,
            sliding_window=int(window) if window is not None else None,
        ),
    )


def register() -> None:
    """Register the attention and mask functions under ATTN_NAME and ATTN_NAME_EAGER (idempotent)."""
    AttentionInterface.register(ATTN_NAME, headscope_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    AttentionInterface.register(ATTN_NAME_EAGER, headscope_attention_eager)
    AttentionMaskInterface.register(ATTN_NAME_EAGER, eager_mask)


_own: WeakSet[nn.Module] = WeakSet()  # attention modules whose forward records beside their own code


def _recording_forward(module: nn.Module, read: own_attention.Reader) -> Callable[..., Any]:
    """The module's own forward, then, while a Recorder wants its layer, what its reader says the scores were."""
    forward = module.forward
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        recorder = _recorder.get()
        layer = getattr(module, "layer_idx", None)
        if recorder is not None and layer is not None and recorder.wants(int(layer)):
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            with torch.no_grad():
                seen = read(module, call.arguments)
            recorder.record(
                int(layer),
                LayerQK(
                    q=seen.q.detach(),
                    k=seen.k.detach(),
                    mask=seen.mask,
                    scaling=seen.scaling,
                    bias=None if seen.bias is None else seen.bias.detach(),
                ),
            )
        return out

    return recording_forward


def records_own_attention(model: PreTrainedModel) -> bool:
    """Whether capture records beside the model's own attention code (BLOOM, MPT, Falcon)."""
    return any(module in _own for module in model.modules())


def install(model: PreTrainedModel) -> None:
    """Switch a loaded model to the capturing attention function that computes what its own one did.

    A model running eager attention (a family without an SDPA path: soft-capping, sinks) keeps its
    family's eager function and float masks; every other one computes with SDPA. A family whose
    attention modules compute their own scores keeps them: each module's forward is wrapped to
    record beside it (once; installing again changes nothing).
    """
    own = [(module, read) for module in model.modules() if (read := own_attention.reader(module)) is not None]
    if own:
        for module, read in own:
            if module not in _own:
                module.forward = _recording_forward(module, read)  # type: ignore[method-assign]
                _own.add(module)
        return
    register()
    current = getattr(model.config, "_attn_implementation", None)
    eager = current in ("eager", ATTN_NAME_EAGER) or not getattr(model, "_supports_sdpa", True)
    model.set_attn_implementation(ATTN_NAME_EAGER if eager else ATTN_NAME)


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
        With sinks (qk.rows_sum_to_one False) each row sums to less than 1: the rest went to the sink.
    """
    rows = rows or slice(None)
    idx = torch.tensor(heads, device=qk.q.device)
    q = qk.q[:, idx, rows].float()  # (B, h, Tq, D)
    k = qk.k[:, idx // group_size].float()  # (B, h, S, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * qk.scaling  # (B, h, Tq, S)
    if qk.softcap is not None:
        scores = torch.tanh(scores / qk.softcap) * qk.softcap
    if qk.bias is not None:  # ALiBi: one value per head and key
        scores = scores + qk.bias[:, idx].float()
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
    if qk.sinks is not None:  # the sink is one more logit per head in the denominator; its column is dropped
        sink = qk.sinks[idx].float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # (B, h, Tq, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)
