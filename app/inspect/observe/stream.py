"""The residual stream entering a block at some positions, split into the writes of the nodes upstream of it:
the embeddings `emb`, each earlier head `L{l}H{h}`, each earlier MLP (or MoE block) `M{l}`, and `bias`.

Recomputed from the run's cached block inputs and captured queries/keys; nothing runs the model again. A head's
write is its output (its attention row mixing the block's normed inputs, projected to values, value bias
weighted by the row's mass) through its columns of the output projection, then through a norm on the attention
output frozen at the position (Gemma 2/3, OLMo 2) and the residual multiplier (Granite). An MLP's write is what
its block added (the next block's cached input minus this one's) less the block's attention write and its
biases, so the MLP is not run again and the parts sum to the cached stream exactly. `bias` gathers every
output-projection bias, attention-output norm bias and MLP output bias (an MLP-output norm, Gemma 2/3 and
OLMo 2, has none; were there one, its bias would stay in `M{l}`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from app.inspect.engine.runs import Run
from app.inspect.model.adapters import Adapter
from app.inspect.model.blocks import NormForm, block_plan, norm_form, part
from app.inspect.model.families import Layout
from app.inspect.observe.dla import value_weight, weight_of


@dataclass(frozen=True)
class Chunk:
    """Some nodes' writes at the positions asked for."""

    names: list[str]
    parts: torch.Tensor  # (n, P, d)


def node_names(layout: Layout, layer: int) -> list[str]:
    """The nodes upstream of block `layer`, in the order `writes` yields them."""
    names = ["emb"]
    for lyr in range(layer):
        names += [f"L{lyr}H{h}" for h in range(layout.n_heads)] + [f"M{lyr}"]
    return [*names, "bias"]


def frozen_scale(form: NormForm, x: torch.Tensor) -> torch.Tensor:
    """1/σ of a norm frozen at each input x (…, d): (…, 1)."""
    c = x - x.mean(-1, keepdim=True) if form.centred else x
    return torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + form.eps)


def frozen_linear(form: NormForm, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A ⊙ P(v) · scale: the norm's linear part at a frozen 1/σ (`scale` broadcast against v (…, d))."""
    if form.scale is None:
        return v
    c = v - v.mean(-1, keepdim=True) if form.centred else v
    return form.scale.to(v) * c * scale


def attention_rows(run: Run, layout: Layout, layer: int, positions: list[int], keys: int) -> torch.Tensor:
    """Every head's attention row at each position over keys 0..keys−1: (n_heads, P, keys), float32.

    Evenly spaced positions (a row's keys, a cell's two positions) are one strided slice of the map.
    """
    heads = list(range(layout.n_heads))
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step > 0 and positions == list(range(positions[0], positions[-1] + 1, step)):
        rows = run.maps(layer, heads, layout.group_size, slice(positions[0], positions[-1] + 1, step))
    else:
        rows = torch.cat([run.maps(layer, heads, layout.group_size, slice(p, p + 1)) for p in positions], 1)
    return rows[..., :keys]


def head_outputs(adapter: Adapter, run: Run, layer: int, positions: list[int], wide: torch.dtype) -> torch.Tensor:
    """Each head's output-projection input at each position, (n_heads, P, head_dim), from the cached block input.

    Mixes the normed inputs by the row, then projects (n_heads·P·T·d), or projects then mixes (T·d·kv·head_dim
    + n_heads·P·T·head_dim), whichever is less work; clipped values are projected and clipped, then mixed.
    """
    lay = adapter.layout
    hd, n_heads, n_kv = lay.head_dim, lay.n_heads, lay.n_kv_heads
    keys = max(positions) + 1
    x = run.layer_inputs[layer][0, :keys]  # (T, d)
    normed = part(adapter, layer, block_plan(adapter, layer).attn_norm)(x).to(wide)  # (T, d)
    rows = attention_rows(run, lay, layer, positions, keys).to(normed.device, wide)  # (H, P, T)
    w_v, b_v = value_weight(adapter, layer)
    w_v = w_v.to(wide).view(n_kv, hd, -1)  # (kv, hd, d)
    kv = torch.arange(n_heads) // lay.group_size
    n_pos, d = len(positions), lay.d_model
    clip = adapter.qkv_clip(layer)
    if clip is not None:  # clipped values (MPT, OLMo) are not linear: each key's value is projected, clipped, mixed
        values = normed @ w_v.flatten(0, 1).T + (0 if b_v is None else b_v.to(wide))  # (T, kv * hd)
        values = values.clamp(-clip, clip).view(keys, n_kv, hd).transpose(0, 1)  # (kv, T, hd)
        mixed: torch.Tensor = rows @ values[kv]
        return mixed
    if n_heads * n_pos * keys * d <= keys * d * n_kv * hd + n_heads * n_pos * keys * hd:
        z = torch.einsum("hpd,hed->hpe", rows @ normed, w_v[kv])  # (H, P, hd)
    else:
        values = torch.einsum("td,ged->gte", normed, w_v)  # (kv, T, hd)
        z = rows @ values[kv]
    if b_v is not None:
        z = z + rows.sum(-1, keepdim=True) * b_v.to(wide).view(n_kv, hd)[kv][:, None, :]
    return z


def writes(adapter: Adapter, run: Run, layer: int, positions: list[int], wide: torch.dtype) -> Iterator[Chunk]:
    """The writes of every node upstream of block `layer` at `positions`, in `node_names` order: `emb`, then per
    earlier layer its heads and its MLP, then `bias`. They sum to the cached input of block `layer` there."""
    lay = adapter.layout
    pos = torch.tensor(positions)
    x0 = run.layer_inputs[0][0, pos].to(wide)  # (P, d)
    yield Chunk(["emb"], x0[None])
    bias = torch.zeros_like(x0)
    for lyr in range(layer):
        plan = block_plan(adapter, lyr)
        rm = plan.residual_multiplier
        z = head_outputs(adapter, run, lyr, positions, wide).to(x0.device)  # (H, P, hd)
        w_o, _ = weight_of(adapter.out_proj(lyr))  # (d, H * hd)
        out = torch.einsum("hpe,dhe->hpd", z, w_o.to(x0).view(-1, lay.n_heads, lay.head_dim))  # (H, P, d)
        o_bias = adapter.out_proj_bias(lyr)
        ob = torch.zeros_like(x0[0]) if o_bias is None else o_bias.to(x0)
        if plan.attn_out_norm:
            form = norm_form(part(adapter, lyr, plan.attn_out_norm))
            s = frozen_scale(form, out.sum(0) + ob)  # (P, 1)
            heads = rm * frozen_linear(form, out, s)
            attn_bias = rm * (frozen_linear(form, ob, s) + (0 if form.bias is None else form.bias.to(x0)))
        else:
            heads, attn_bias = rm * out, rm * ob.expand_as(x0)
        m_bias = rm * _mlp_bias(adapter, lyr, x0) if not plan.mlp_out_norm else torch.zeros_like(x0[0])
        added = run.layer_inputs[lyr + 1][0, pos].to(x0) - run.layer_inputs[lyr][0, pos].to(x0)  # (P, d)
        yield Chunk([f"L{lyr}H{h}" for h in range(lay.n_heads)], heads)
        yield Chunk([f"M{lyr}"], (added - heads.sum(0) - attn_bias - m_bias)[None])
        bias = bias + attn_bias + m_bias
    yield Chunk(["bias"], bias[None])


def _mlp_bias(adapter: Adapter, layer: int, like: torch.Tensor) -> torch.Tensor:
    """The MLP output projection's bias (d,), zeros without one (as DLA reads it)."""
    path = adapter.family.mlp_out
    bias = getattr(adapter.block_part(layer, path), "bias", None) if path else None
    return bias.to(like) if isinstance(bias, torch.Tensor) else torch.zeros_like(like[0])
