"""QK attribution: one head's pre-softmax score s = q·k·scale at (query_pos, key_pos) as an exact sum of
query-node × key-node terms.

With the block's input norm frozen at the run's value at each position (σ fixed: affine), the query at the
query position is linear in the residual stream there, which is the sum of the upstream nodes' writes
(app.inspect.observe.stream); likewise the key at the key position. A QK-norm (Qwen3, Gemma 3, OLMo 2) is frozen
the same way at the run's query and key (clipping too, MPT and OLMo: a clipped coordinate is a constant), and
RoPE is a fixed rotation per position (app.inspect.observe.rotary).
So q = Σ_n q_n and k = Σ_m k_m, each node's part carried through the same maps, every constant (the norms'
biases, the projection's bias) in the `bias` node, and s = Σ_n Σ_m scale·⟨q_n, k_m⟩ exactly. A soft-capped
head (Gemma 2) attributes the score before its cap; the mask (causal, sliding window) is reported, not added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.inspect.engine.runs import Run
from app.inspect.model.adapters import Adapter
from app.inspect.model.blocks import NormForm, block_plan, norm_form, part
from app.inspect.model.capture import LayerQK
from app.inspect.model.loaded import Loaded
from app.inspect.observe import qkv, rotary, stream
from app.inspect.observe.stream import frozen_linear, frozen_scale

ROW_TERMS_CELLS = 1 << 24  # key positions × nodes² held at once when finding each key's top terms


class NotReproduced(ValueError):
    """The recomputed queries or keys do not match the captured ones (an attention this module does not know)."""


@dataclass(frozen=True)
class Vectors:
    """Each node's part of the head's query at some positions and of its key at others (after RoPE)."""

    nodes: list[str]
    q: torch.Tensor  # (n_nodes, Pq, head_dim)
    k: torch.Tensor  # (n_nodes, Pk, head_dim)
    rope: str  # the rotation found ("none" without RoPE)


@dataclass(frozen=True)
class Cell:
    """The score of one (query, key) cell, split into query-node × key-node terms."""

    nodes: list[str]  # query and key nodes alike
    terms: torch.Tensor  # (n_nodes, n_nodes): query node × key node
    score: float  # scale·q·k from the captured q and k, before any soft-cap
    weight: float  # the attention weight of the cell in the model's map
    masked: bool  # the mask removes the key (future, or outside a sliding window)
    softcap: float | None  # Gemma 2's cap: the model's logit is cap·tanh(score/cap)
    position_bias: float | None  # ALiBi (BLOOM, MPT): added to the (capped) score, by key position, not attributed
    rope: str

    @property
    def total(self) -> float:
        return float(self.terms.sum())


@dataclass(frozen=True)
class QueryRow:
    """A whole query row: for every key position, its score and which query and key nodes make it."""

    nodes: list[str]
    scores: torch.Tensor  # (keys,) captured, before any soft-cap
    weights: torch.Tensor  # (keys,) the model's attention row
    masked: torch.Tensor  # (keys,) bool
    query_sums: torch.Tensor  # (n_nodes, keys): each query node's part of each key's score
    key_sums: torch.Tensor  # (n_nodes, keys): each key node's part at each key position
    top: list[list[tuple[int, int, float]]]  # per key, its largest terms (query node, key node, value)
    softcap: float | None
    position_bias: torch.Tensor | None  # (keys,) ALiBi, added beside the scores
    rope: str


def _qk_normed(form: NormForm, pre: torch.Tensor, joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-norm frozen at pre (P, n, hd): 1/σ (P, n, 1), one per head or (joint) one per position, and its output."""
    s = frozen_scale(form, pre.flatten(-2))[..., None].expand(*pre.shape[:2], 1) if joint else frozen_scale(form, pre)
    out = frozen_linear(form, pre, s)
    return s, out if form.bias is None else out + form.bias.to(pre)


def _head_form(form: NormForm, head: int) -> NormForm:
    """One head's slice of a per-head QK-norm form, without its bias (which joins the `bias` node)."""
    assert form.scale is not None
    return NormForm(form.scale[head], None, form.centred, form.eps)


def _clipped(
    parts: torch.Tensor, pre: torch.Tensor, head: int, at: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping (±clip) frozen at the run's values pre (P, n, hd): where a coordinate is clipped the node parts
    (N, P', hd) of `head` at positions `at` give way to the constant it is clipped to, kept in `bias` (the last)."""
    clipped = pre.clamp(-clip, clip)
    keep = (pre.abs() < clip)[at, head].to(parts)  # (P', hd)
    parts = parts * keep
    parts[-1] += (1 - keep) * clipped[at, head]
    return parts, clipped


def vectors(adapter: Adapter, run: Run, layer: int, head: int, q_pos: list[int], k_pos: list[int]) -> Vectors:
    """Each upstream node's part of head (layer, head)'s query at q_pos and of its key at k_pos.

    Raises:
        NotReproduced: the parts' sums do not rebuild the captured queries and keys.
        qkv.NotLinear: a norm this cannot freeze.
    """
    lay = adapter.layout
    g = lay.kv_head(head)
    positions = sorted(set(q_pos) | set(k_pos))
    qi = torch.tensor([positions.index(p) for p in q_pos])
    ki = torch.tensor([positions.index(p) for p in k_pos])
    x = run.layer_inputs[layer][0, torch.tensor(positions)]  # (P, d)
    tol = 1e-3 if x.dtype.itemsize >= 4 else 5e-2  # bf16/fp16 runs carry 2⁻⁸ relative rounding
    wide = torch.promote_types(x.dtype, torch.float32)
    x = x.to(wide)
    w = qkv.raw(adapter, layer, wide)
    form = norm_form(part(adapter, layer, block_plan(adapter, layer).attn_norm))
    s_in = frozen_scale(form, x) if form.scale is not None else torch.ones_like(x[:, :1])  # (P, 1)
    const = torch.zeros_like(x[0]) if form.bias is None else form.bias.to(x)  # the input norm's B
    wq, wk = qkv.fold_input(form, w.q), qkv.fold_input(form, w.k)  # (H | kv, d, hd)

    # every head's pre-norm query and key at the positions, for QK-norm's σ and the rotation's fit
    normed = frozen_linear(form, x, s_in) + const  # (P, d)
    pre_q = torch.einsum("pd,hde->phe", normed, w.q) + (0 if w.q_bias is None else w.q_bias)  # (P, H, hd)
    pre_k = torch.einsum("pd,gde->pge", normed, w.k) + (0 if w.k_bias is None else w.k_bias)  # (P, kv, hd)

    q_parts, k_parts, names = [], [], []
    for chunk in stream.writes(adapter, run, layer, positions, wide):
        names += chunk.names
        q_parts.append((chunk.parts[:, qi] @ wq[head]) * s_in[qi])  # (n, Pq, hd)
        k_parts.append((chunk.parts[:, ki] @ wk[g]) * s_in[ki])
    q, k = torch.cat(q_parts), torch.cat(k_parts)  # (N, Pq, hd), (N, Pk, hd)
    q[-1] += const @ w.q[head] + (0 if w.q_bias is None else w.q_bias[head])  # the constants join `bias`
    k[-1] += const @ w.k[g] + (0 if w.k_bias is None else w.k_bias[g])

    norms = qkv.qk_norms(adapter, layer)
    if norms is not None:  # frozen at the run's pre-norm query and key: 1/σ per position (and head)
        sq, pre_q = _qk_normed(norms.q, pre_q, norms.joint)  # (P, H, 1), (P, H, hd)
        sk, pre_k = _qk_normed(norms.k, pre_k, norms.joint)
        q = frozen_linear(_head_form(norms.q, head), q, sq[qi, head])
        k = frozen_linear(_head_form(norms.k, g), k, sk[ki, g])
        if norms.q.bias is not None:
            q[-1] += norms.q.bias[head].to(q)
        if norms.k.bias is not None:
            k[-1] += norms.k.bias[g].to(k)

    clip = adapter.qkv_clip(layer)
    if clip is not None:  # frozen at the run's q and k: a clipped coordinate is a constant, in `bias`
        q, pre_q = _clipped(q, pre_q, head, qi, clip)
        k, pre_k = _clipped(k, pre_k, g, ki, clip)

    for parts, total in ((q, pre_q[qi, head]), (k, pre_k[ki, g])):  # the nodes rebuild the run's q and k
        if float((parts.sum(0) - total).abs().max()) > tol * (1 + float(total.abs().max())):
            raise NotReproduced(f"the node parts of {lay.architecture}'s layer {layer} do not add up to its q and k")
    captured = run.qk[layer]
    after = torch.cat([captured.q[0][:, positions], captured.k[0][:, positions]]).transpose(0, 1).to(wide)
    before = torch.cat([pre_q, pre_k], 1)  # (P, H + kv, hd)
    rot = rotary.identify(before, after.to(before.device), rotary.rotary_dims(adapter.model.config, lay.head_dim))
    if rot.error > tol:
        raise NotReproduced(
            f"QK attribution cannot rebuild the queries and keys of {lay.architecture} at layer {layer} "
            f"(relative error {rot.error:.2g} after the best rotation, {rot.pairing.label})"
        )
    q_rot = rotary.Rotation(rot.pairing, rot.cos[qi], rot.sin[qi], rot.error)
    k_rot = rotary.Rotation(rot.pairing, rot.cos[ki], rot.sin[ki], rot.error)
    return Vectors(names, q_rot.apply(q), k_rot.apply(k), rot.pairing.label)


def _masked(qk: LayerQK, query_pos: int, keys: torch.Tensor) -> torch.Tensor:
    """Whether the layer's mask removes each key from the query's row (bool (len(keys),))."""
    if qk.mask is None:
        return keys > query_pos
    m = qk.mask[0, 0, query_pos, keys.to(qk.mask.device)]  # (B|1, 1, T, T)
    if m.dtype == torch.bool:
        return ~m.cpu()
    return (m <= torch.finfo(m.dtype).min / 2).cpu()


def _position_bias(qk: LayerQK, head: int, keys: int) -> torch.Tensor | None:
    """The ALiBi bias the layer adds to the head's scores for keys 0..keys−1 (keys,), or None without one."""
    bias = qk.bias  # (B|1, n_heads, 1, S)
    return None if bias is None else bias[0, head, -1, :keys].double().cpu()


def _captured_scores(qk: LayerQK, head: int, group_size: int, query_pos: int, keys: int) -> torch.Tensor:
    """scale·q·k of the captured q and k, before any soft-cap, for keys 0..keys−1: (keys,) float64."""
    q = qk.q[0, head, query_pos].double()
    k = qk.k[0, head // group_size, :keys].double()
    return (k @ q).cpu() * qk.scaling


@torch.inference_mode()
def cell(loaded: Loaded, run: Run, layer: int, head: int, query_pos: int, key_pos: int) -> Cell:
    """Head (layer, head)'s pre-softmax score at (query_pos, key_pos) split into query-node × key-node terms.

    Args:
        loaded: the model.
        run: the analysed text (cached block inputs and queries/keys; no forward runs).
        layer, head: the head (query head).
        query_pos, key_pos: 0 ≤ key_pos ≤ query_pos < n_tokens.
    """
    adapter, lay = loaded.adapter, loaded.adapter.layout
    qk = run.qk[layer]
    vec = vectors(adapter, run, layer, head, [query_pos], [key_pos])
    terms = (vec.q[:, 0] @ vec.k[:, 0].T * qk.scaling).cpu()  # (N, N)
    score = float(_captured_scores(qk, head, lay.group_size, query_pos, key_pos + 1)[key_pos])
    weight = float(run.maps(layer, [head], lay.group_size, slice(query_pos, query_pos + 1))[0, 0, key_pos])
    masked = bool(_masked(qk, query_pos, torch.tensor([key_pos]))[0])
    bias = _position_bias(qk, head, key_pos + 1)
    return Cell(
        vec.nodes, terms, score, weight, masked, qk.softcap, None if bias is None else float(bias[-1]), vec.rope
    )


@torch.inference_mode()
def query_row(loaded: Loaded, run: Run, layer: int, head: int, query_pos: int, top: int = 3) -> QueryRow:
    """Every key position of one query row (0..query_pos): its score, the query and key nodes' sums, its top terms."""
    adapter, lay = loaded.adapter, loaded.adapter.layout
    qk = run.qk[layer]
    keys = list(range(query_pos + 1))
    vec = vectors(adapter, run, layer, head, [query_pos], keys)
    q = vec.q[:, 0]  # (N, hd)
    query_sums = (q @ vec.k.sum(0).T * qk.scaling).cpu()  # (N, keys)
    key_sums = (vec.k @ q.sum(0) * qk.scaling).cpu()  # (N, keys)
    n = len(vec.nodes)
    step = max(1, ROW_TERMS_CELLS // (n * n))
    best: list[list[tuple[int, int, float]]] = []
    for start in range(0, len(keys), step):
        terms = torch.einsum("ne,mke->knm", q, vec.k[:, start : start + step]) * qk.scaling  # (k, N, N)
        flat = terms.flatten(1)
        idx = flat.abs().topk(min(top, flat.shape[1]), dim=1).indices  # (k, top)
        vals = flat.gather(1, idx).cpu()
        best += [
            [(int(i) // n, int(i) % n, float(v)) for i, v in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(idx.cpu(), vals, strict=True)
        ]
    return QueryRow(
        nodes=vec.nodes,
        scores=_captured_scores(qk, head, lay.group_size, query_pos, len(keys)),
        weights=run.maps(layer, [head], lay.group_size, slice(query_pos, query_pos + 1))[0, 0, : len(keys)].cpu(),
        masked=_masked(qk, query_pos, torch.tensor(keys)),
        query_sums=query_sums,
        key_sums=key_sums,
        top=best,
        softcap=qk.softcap,
        position_bias=_position_bias(qk, head, len(keys)),
        rope=vec.rope,
    )
