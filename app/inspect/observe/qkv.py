"""A layer's attention weights per head (query, key, value, output) from separate or fused projections, and the
same with the norms around them folded in: what the weight-based circuits read.

Row-vector convention: q = x·W_Q, k = x·W_K, v = x·W_V (d_model × head_dim each), a head's write = z·W_O
(head_dim × d_model). A norm y = A ⊙ P(x)/σ(x) + B (P centres for LayerNorm) is folded as the linear map it is
once σ is frozen: W ← P·diag(A)·W for the block's input norm, W_O ← W_O·P·diag(A) for a norm on the attention
output (Gemma 2/3, OLMo 2). σ (a positive scalar per position) and B (a constant) are left out.

QK-norm (Qwen3, Gemma 3, OLMo 2) normalises q (and k) after the projection: q = A_q ⊙ P(x·W_Q)/σ_q(x). It is
not linear in x, but σ_q is one positive scalar per position (and head), so q is a positive multiple of the
linear x·W_Q·P·diag(A_q): that linear map is what is folded in. It gives the direction of every query exactly
and its length up to σ_q, which the normalised composition scores do not see (QK_NORM_NOTE). Clipping of q, k
and v (MPT, OLMo's clip_qkv) is a saturation, left out like σ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from app.inspect.model.adapters import Adapter
from app.inspect.model.blocks import NormForm, UnknownNorm, block_plan, norm_form, part
from app.inspect.observe.dla import weight_of

QK_NORMS = ("q_norm", "k_norm")  # the QK-norm modules HeadScope folds; any other *norm* in an attention is refused
QK_NORM_NOTE = (
    "QK-norm is not linear: q = A_q ⊙ P(x·W_Q)/σ_q(x). σ_q is a positive scalar per position, so q is a positive "
    "multiple of the linear map x·W_Q·P·diag(A_q), which is folded in; scores normalised by the matrices' norms "
    "do not see σ_q, singular values are those of the map before σ_q"
)


class NotLinear(ValueError):
    """The model's attention has a part the weight-based circuits cannot express as a fixed linear map."""


@dataclass(frozen=True)
class HeadWeights:
    """One layer's attention weights, per head, row-vector convention."""

    q: torch.Tensor  # (n_heads, d, head_dim)
    k: torch.Tensor  # (n_kv_heads, d, head_dim)
    v: torch.Tensor  # (n_kv_heads, d, head_dim)
    o: torch.Tensor  # (n_heads, head_dim, d)
    q_bias: torch.Tensor | None = None  # (n_heads, head_dim)
    k_bias: torch.Tensor | None = None  # (n_kv_heads, head_dim)
    v_bias: torch.Tensor | None = None  # (n_kv_heads, head_dim)


def _split(adapter: Adapter, layer: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """[(W (out, d), bias)] for q, k and v: separate projections, fused side by side (GPT-2, Phi-3, MPT), or rows
    per KV head (GPT-NeoX, BLOOM: [q, k, v] per head; Falcon: every query head, then k and v)."""
    lay = adapter.layout
    projs = adapter.qkv_projections(layer)
    if len(projs) == 3:
        return [weight_of(p) for p in projs]
    w, b = weight_of(projs[0])
    hd = lay.head_dim
    if hasattr(adapter.attention(layer), "query_key_value"):  # per KV head: its g query heads, k, v (NeoX, Falcon)
        g = lay.group_size
        wh = w.view(lay.n_kv_heads, g + 2, hd, -1)
        bh = None if b is None else b.view(lay.n_kv_heads, g + 2, hd)
        parts = [slice(0, g), slice(g, g + 1), slice(g + 1, g + 2)]
        return [(wh[:, i].reshape(-1, w.shape[-1]), None if bh is None else bh[:, i].reshape(-1)) for i in parts]
    sizes = [lay.n_heads * hd, lay.n_kv_heads * hd, lay.n_kv_heads * hd]
    ws = torch.split(w, sizes)
    bs: list[torch.Tensor | None] = list(torch.split(b, sizes)) if b is not None else [None] * 3
    return list(zip(ws, bs, strict=True))


def raw(adapter: Adapter, layer: int, dtype: torch.dtype = torch.float32) -> HeadWeights:
    """Block `layer`'s attention weights per head as the modules hold them (no norm folded), in `dtype`."""
    lay = adapter.layout
    hd = lay.head_dim
    (wq, bq), (wk, bk), (wv, bv) = _split(adapter, layer)

    def heads(w: torch.Tensor) -> torch.Tensor:  # (n * hd, d) → (n, d, hd)
        return w.detach().to(dtype).view(-1, hd, w.shape[-1]).transpose(1, 2)

    def bias(b: torch.Tensor | None) -> torch.Tensor | None:
        return None if b is None else b.detach().to(dtype).view(-1, hd)

    wo, _ = weight_of(adapter.out_proj(layer))  # (d, n_heads * hd)
    o = wo.detach().to(dtype).view(-1, lay.n_heads, hd).permute(1, 2, 0)  # (n_heads, hd, d)
    return HeadWeights(heads(wq), heads(wk), heads(wv), o, bias(bq), bias(bk), bias(bv))


def _form(module: nn.Module, what: str) -> NormForm:
    try:
        return norm_form(module)
    except UnknownNorm as err:
        raise NotLinear(f"{what}: {err}") from err


def fold_input(form: NormForm, w: torch.Tensor) -> torch.Tensor:
    """P·diag(A)·W for W (…, d, out): the input norm's scale (and centring) folded into a projection."""
    if form.scale is None:
        return w
    w = form.scale.to(w)[:, None] * w
    return w - w.mean(-2, keepdim=True) if form.centred else w


def fold_output(form: NormForm, w: torch.Tensor) -> torch.Tensor:
    """W·P·diag(A) for W (…, in, width): a norm on the output (width) folded into the projection before it."""
    if form.scale is None:
        return w
    w = w - w.mean(-1, keepdim=True) if form.centred else w
    return w * form.scale.to(w)


@dataclass(frozen=True)
class QKNorms:
    """A block's QK-norm: its form on q and on k, each scale per head (n_heads or n_kv_heads, head_dim)."""

    q: NormForm
    k: NormForm
    joint: bool  # one σ over every head's q (or k) at a position (OLMo 2), not one per head (Qwen3, Gemma 3)


def qk_norms(adapter: Adapter, layer: int) -> QKNorms | None:
    """Block `layer`'s QK-norm, or None when it has none.

    Raises:
        NotLinear: a norm inside the attention other than q_norm/k_norm, an unknown form, or centring over all heads.
    """
    attn, lay = adapter.attention(layer), adapter.layout
    found = [name for name, _ in attn.named_children() if "norm" in name.lower()]
    if not found:
        return None
    if sorted(found) != sorted(QK_NORMS):
        raise NotLinear(f"{lay.architecture} normalises queries or keys with {found}, which HeadScope cannot fold")
    forms, joint = [], False
    for name, n in (("q_norm", lay.n_heads), ("k_norm", lay.n_kv_heads)):
        form = _form(getattr(attn, name), f"{lay.architecture} {name}")
        width = 0 if form.scale is None else form.scale.numel()
        if form.scale is None or width not in (lay.head_dim, n * lay.head_dim):
            raise NotLinear(f"{lay.architecture} {name} has a scale of {width} values, not per head or per projection")
        joint = width != lay.head_dim
        if form.centred and joint:
            raise NotLinear(f"{lay.architecture} {name} centres over all heads at once, which mixes heads")
        scale = form.scale.reshape(-1, lay.head_dim).expand(n, lay.head_dim)
        bias = None if form.bias is None else form.bias.reshape(-1, lay.head_dim).expand(n, lay.head_dim)
        forms.append(NormForm(scale, bias, form.centred, form.eps))
    return QKNorms(forms[0], forms[1], joint)


def per_head(form: NormForm) -> NormForm:
    """A per-head QK-norm form (scale (n, head_dim)) shaped to broadcast over (n, d, head_dim) weights."""
    scale = None if form.scale is None else form.scale[:, None, :]
    bias = None if form.bias is None else form.bias[:, None, :]
    return NormForm(scale, bias, form.centred, form.eps)


def folded(adapter: Adapter, layer: int, dtype: torch.dtype = torch.float32, qk_norm: bool = True) -> HeadWeights:
    """Block `layer`'s attention weights per head with the input norm, any QK-norm and any attention-output norm
    folded in (biases dropped): W_Q = P·diag(A)·W_Q·P_q·diag(A_q) and so on. With `qk_norm` False the QK-norm is
    not looked at (for what reads only W_V and W_O), and q and k are left without it.

    Raises:
        NotLinear: a norm whose form is unknown or cannot be folded per head.
    """
    w = raw(adapter, layer, dtype)
    plan = block_plan(adapter, layer)
    form = _form(part(adapter, layer, plan.attn_norm), f"block {layer}'s input norm")
    q, k, v = (fold_input(form, x) for x in (w.q, w.k, w.v))
    norms = qk_norms(adapter, layer) if qk_norm else None
    if norms is not None:  # per-head scales (n, hd) broadcast over d as (n, 1, hd)
        q, k = fold_output(per_head(norms.q), q), fold_output(per_head(norms.k), k)
    o = w.o
    if plan.attn_out_norm:
        o = fold_output(_form(part(adapter, layer, plan.attn_out_norm), f"block {layer}'s attention-output norm"), o)
    return HeadWeights(q, k, v, o)
