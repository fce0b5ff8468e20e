"""Composition scores between heads from the weights (Elhage et al. 2021): how much of a receiver's query, key
or value reads what a sender writes.

score(A → B) = ‖W_OV^A·M_B‖_F / (‖W_OV^A‖_F·‖M_B‖_F), W_OV^A = W_V^A·W_O^A and M_B = W_QK^B = W_Q^B·W_K^Bᵀ (q),
(W_QK^B)ᵀ (k) or W_OV^B (v), norms folded in (app.inspect.observe.qkv); a receiver's K and V are its KV head's.

Factorised, never a d×d product per pair: with RᵀR = ṼᵀṼ, ‖Ṽ·O·X‖ = ‖R·O·X‖, so W_OV^A has the factor
F_A = R_A·O_A (head_dim × d) with W_OV^Aᵀ·W_OV^A = F_Aᵀ·F_A, and M_B·M_Bᵀ = X_B·X_Bᵀ with X_B (d × head_dim):
X = W_Q·R_Kᵀ (q), W_K·R_Qᵀ (k), W_V·R_Oᵀ (v). Then ‖W_OV^A·M_B‖² = ‖F_A·X_B‖² = ⟨F_Aᵀ·F_A, X_B·X_Bᵀ⟩: one
receiver is a small product per sender (`column`); every pair is one GEMM over the packed upper blocks of the
d×d Grams (`composition`), cheaper than the pairwise form when d < 2·head_dim².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args
from weakref import WeakKeyDictionary

import torch

from app.inspect.model.adapters import Adapter
from app.inspect.observe import qkv

Kind = Literal["q", "k", "v"]
KINDS: tuple[Kind, ...] = get_args(Kind)
BASELINE_HEADS = 32  # random senders and receivers: the baseline is the mean over 32 × 32 pairs
BASELINE_SEED = 0


@dataclass(frozen=True)
class Factors:
    """Every head's sender factor F and, for one kind, receiver factor X, normalised to unit Frobenius norm."""

    f: torch.Tensor  # (n, head_dim, d): F_A / ‖F_A‖
    x: torch.Tensor  # (n, d, head_dim): X_B / ‖X_B‖


@dataclass(frozen=True)
class Composition:
    """Composition scores of one kind between every pair of heads (layer-major order)."""

    kind: Kind
    heads: list[tuple[int, int]]  # the senders, and the receivers, in this order
    scores: torch.Tensor  # (n, n) float32 on the CPU; NaN where the receiver's layer is not after the sender's
    baseline: float  # mean score of random Gaussian heads of the same shapes
    baseline_std: float
    note: str | None  # how QK-norm entered (q and k kinds of QK-norm models), else None


def root(w: torch.Tensor) -> torch.Tensor:
    """R (…, k, k) with Rᵀ·R = wᵀ·w for w (…, m, k), so that ‖w·y‖ = ‖R·y‖ for every y.

    The upper Cholesky factor of the Gram; where that fails (a rank-deficient w), Λ^½·Uᵀ from its eigenvectors.
    """
    gram = w.transpose(-1, -2) @ w
    r: torch.Tensor
    r, info = torch.linalg.cholesky_ex(gram, upper=True)
    bad = info != 0
    if bool(bad.any()):
        lam, u = torch.linalg.eigh(gram[bad])
        r[bad] = lam.clamp_min(0).sqrt()[..., None] * u.transpose(-1, -2)
    return r


def _unit(w: torch.Tensor) -> torch.Tensor:
    """Each matrix (…, a, b) divided by its Frobenius norm (a zero matrix stays zero)."""
    norm = w.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(w.dtype).tiny)
    unit: torch.Tensor = w / norm[..., None, None]
    return unit


def sender(v: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """F = R_V·O (n, head_dim, d) from W_V (n, d, head_dim) and W_O (n, head_dim, d): F ᵀF = W_OVᵀ·W_OV."""
    return root(v) @ o


def receiver(kind: Kind, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """X (n, d, head_dim) with X·Xᵀ = M·Mᵀ for M = W_Q·W_Kᵀ (q), W_K·W_Qᵀ (k) or W_V·W_O (v); per query head."""
    if kind == "q":
        return q @ root(k).transpose(-1, -2)
    if kind == "k":
        return k @ root(q).transpose(-1, -2)
    return v @ root(o.transpose(-1, -2)).transpose(-1, -2)


def factors(adapter: Adapter, kind: Kind, dtype: torch.dtype = torch.float32) -> Factors:
    """Every head's factors (layer-major), from the folded weights; a receiver's K and V are its KV head's."""
    lay = adapter.layout
    fs, xs = [], []
    kv = torch.arange(lay.n_heads) // lay.group_size
    for layer in range(lay.n_layers):
        w = qkv.folded(adapter, layer, dtype, qk_norm=kind != "v")
        fs.append(sender(w.v[kv], w.o))
        xs.append(receiver(kind, w.q, w.k[kv], w.v[kv], w.o))
    return Factors(_unit(torch.cat(fs)), _unit(torch.cat(xs)))


def _block(d: int) -> int:
    """The block size the Grams are packed by: a divisor of d (64 for most models), or d itself."""
    return next((b for b in (64, 48, 32, 16) if d % b == 0 and d > b), d)


def packed_grams(a: torch.Tensor) -> torch.Tensor:
    """The Grams a·aᵀ (d × d) of a (n, d, k), packed: (n, P).

    Only the upper blocks (of `_block(d)` rows) are formed, off-diagonal ones weighted √2, so that the dot
    product of two packed Grams is the Frobenius inner product ⟨G, G'⟩ of the full ones (both symmetric) at
    about half the work of forming them.
    """
    n, d, k = a.shape
    size = _block(d)
    i, j = torch.triu_indices(d // size, d // size, device=a.device)
    blocks = a.reshape(n, d // size, size, k)
    grams = blocks[:, i] @ blocks[:, j].transpose(-1, -2)  # (n, pairs, size, size)
    weight = torch.where(i == j, 1.0, math.sqrt(2.0)).to(a)
    return (grams * weight[:, None, None]).flatten(1)


def _chunk(d: int) -> int:
    return max(1, (64 << 20) // (4 * d * d))  # heads per chunk: about 64 MB of packed Grams


def pair_scores(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """‖F_a·X_b‖_F for unit factors f (a, hd, d) and x (b, d, hd'): (a, b), the scores of every pair, as
    ⟨F_aᵀF_a, X_b·X_bᵀ⟩ over packed Grams, senders' a chunk at a time."""
    xg = torch.cat([packed_grams(c) for c in torch.split(x, _chunk(x.shape[1]))])  # (b, P)
    out = torch.cat([packed_grams(c.transpose(-1, -2)) @ xg.T for c in torch.split(f, _chunk(f.shape[-1]))])
    return out.clamp_min(0).sqrt()


def later_scores(f: torch.Tensor, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`pair_scores` of every head (layer-major) into every head of a later layer, NaN elsewhere: (n, n).

    Receivers of the first layer and senders of the last are never formed, and each chunk of sender layers is
    multiplied only with the receivers after its first layer (about half the pairs).
    """
    n = f.shape[0]
    layers = n // n_heads
    out = torch.full((n, n), float("nan"), dtype=f.dtype, device=f.device)
    xg = torch.cat([packed_grams(c) for c in torch.split(x[n_heads:], _chunk(x.shape[1]))])  # receivers, layer ≥ 1
    step = max(1, _chunk(f.shape[-1]) // n_heads)  # sender layers per chunk
    for a in range(0, layers - 1, step):
        rows = slice(a * n_heads, min(a + step, layers - 1) * n_heads)
        sg = packed_grams(f[rows].transpose(-1, -2))
        out[rows, (a + 1) * n_heads :] = (sg @ xg[a * n_heads :].T).clamp_min(0).sqrt()
    layer_of = torch.arange(layers, device=f.device).repeat_interleave(n_heads)
    out[layer_of[None, :] <= layer_of[:, None]] = float("nan")
    return out


def column(adapter: Adapter, kind: Kind, layer: int, head: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scores of every head (layer-major) as a sender into one receiver, pairwise (‖F_a·X_B‖); NaN where the
    sender is not in an earlier layer: (n_layers * n_heads,)."""
    lay = adapter.layout
    w = qkv.folded(adapter, layer, dtype, qk_norm=kind != "v")
    g = lay.kv_head(head)
    x = _unit(receiver(kind, w.q[head : head + 1], w.k[g : g + 1], w.v[g : g + 1], w.o[head : head + 1]))[0]
    kv = torch.arange(lay.n_heads) // lay.group_size
    out = torch.full((lay.n_layers, lay.n_heads), float("nan"), dtype=dtype)
    for a in range(layer):
        wa = qkv.folded(adapter, a, dtype, qk_norm=False)  # a sender's W_V and W_O
        out[a] = (_unit(sender(wa.v[kv], wa.o)) @ x).flatten(1).norm(dim=-1)
    return out.flatten()


@cache
def baseline(kind: Kind, d: int, head_dim: int, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Mean and standard deviation of the score between random Gaussian heads of the model's shapes (seeded;
    computed once per shape)."""
    gen = torch.Generator().manual_seed(BASELINE_SEED)
    n = BASELINE_HEADS

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(n, *shape, generator=gen, dtype=dtype)

    f = _unit(sender(rand(d, head_dim), rand(head_dim, d)))
    x = _unit(receiver(kind, rand(d, head_dim), rand(d, head_dim), rand(d, head_dim), rand(head_dim, d)))
    s = pair_scores(f, x)
    return float(s.mean()), float(s.std())


_cache: WeakKeyDictionary[Adapter, dict[Kind, Composition]] = WeakKeyDictionary()  # per served model; weights fixed


def composition(adapter: Adapter, kind: Kind) -> Composition:
    """Composition scores of `kind` between every sender and every later receiver, computed once per model.

    Raises:
        qkv.NotLinear: a norm the weights cannot be folded with.
    """
    found = _cache.setdefault(adapter, {})
    if kind in found:
        return found[kind]
    lay = adapter.layout
    param = next(adapter.model.parameters())
    dtype = torch.promote_types(param.dtype, torch.float32)
    fac = factors(adapter, kind, dtype)
    scores = later_scores(fac.f.to(param.device), fac.x.to(param.device), lay.n_heads).float().cpu()
    mean, std = baseline(kind, lay.d_model, lay.head_dim)
    qk_norm = kind != "v" and any(qkv.qk_norms(adapter, layer) for layer in range(lay.n_layers))
    heads = [(layer, head) for layer in range(lay.n_layers) for head in range(lay.n_heads)]
    found[kind] = Composition(kind, heads, scores, mean, std, qkv.QK_NORM_NOTE if qk_norm else None)
    return found[kind]
