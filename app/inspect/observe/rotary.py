"""The rotation RoPE applied at each position, identified from a run's own queries and keys before and after it.

RoPE turns pairs of head dimensions by an angle set by the position: halves (dim k with k + r/2, Llama, NeoX)
or neighbours (2k with 2k + 1, GPT-J, Cohere) over the first r dims (partial rotary), the rest unchanged. It
is the same fixed linear map for every head's query and key at one position, so it is found from the vectors
themselves: with u the recomputed vectors before the rotation and v the captured ones after it, each pair's
(cos, sin) is the least-squares fit over every query and key head at the position, and the pairing is the
candidate that reproduces v best. This needs no family code (local/global bases, scaling and YaRN's factor on
cos/sin are fitted like the rest); a model without RoPE fits cos 1, sin 0. `Rotation.error` says how well v is
reproduced; callers refuse a fit that does not reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SELECT_POSITIONS = 4  # the pairing is chosen on the last few positions (the largest angles)


@dataclass(frozen=True)
class Pairing:
    """Which dims RoPE turns together: `a[i]` with `b[i]`; every other dim passes through."""

    a: torch.Tensor  # (pairs,) long
    b: torch.Tensor  # (pairs,) long
    label: str


@dataclass(frozen=True)
class Rotation:
    """The rotation at each of P positions: dims (a, b) ← (c·a − s·b, s·a + c·b)."""

    pairing: Pairing
    cos: torch.Tensor  # (P, pairs)
    sin: torch.Tensor  # (P, pairs)
    error: float  # max |rotated u − v| / (1 + max |v|) over the vectors it was fitted on

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The rotation of x (…, P, head_dim), position by position."""
        a, b = self.pairing.a, self.pairing.b
        xa, xb = x[..., a], x[..., b]
        out = x.clone()
        out[..., a] = self.cos * xa - self.sin * xb
        out[..., b] = self.sin * xa + self.cos * xb
        return out


def pairings(head_dim: int, rotary_dims: list[int]) -> list[Pairing]:
    """Candidates, simplest first: no rotation, then halves and neighbours over each of `rotary_dims` (even,
    ≤ head_dim) from the fewest dims up."""
    empty = torch.zeros(0, dtype=torch.long)
    out = [Pairing(empty, empty, "none")]
    for r in sorted({r for r in rotary_dims if 0 < r <= head_dim and r % 2 == 0}):
        half = torch.arange(r // 2)
        out.append(Pairing(half, half + r // 2, f"rotary, halves, {r} of {head_dim} dims"))
        out.append(Pairing(2 * half, 2 * half + 1, f"rotary, neighbours, {r} of {head_dim} dims"))
    return out


def _fit(pairing: Pairing, u: torch.Tensor, v: torch.Tensor) -> Rotation:
    """Least-squares (cos, sin) per position and pair, u and v (P, m, head_dim): m vectors share each rotation."""
    a, b = pairing.a, pairing.b
    ua, ub, va, vb = u[..., a], u[..., b], v[..., a], v[..., b]  # (P, m, pairs)
    den = (ua.pow(2) + ub.pow(2)).sum(1)  # (P, pairs)
    ok = den > torch.finfo(u.dtype).tiny
    safe = torch.where(ok, den, torch.ones_like(den))
    cos = torch.where(ok, (va * ua + vb * ub).sum(1) / safe, torch.ones_like(den))
    sin = torch.where(ok, (vb * ua - va * ub).sum(1) / safe, torch.zeros_like(den))
    rot = Rotation(pairing, cos[:, None], sin[:, None], 0.0)
    err = float((rot.apply(u) - v).abs().max()) / (1 + float(v.abs().max())) if v.numel() else 0.0
    return Rotation(pairing, cos, sin, err)


def identify(u: torch.Tensor, v: torch.Tensor, rotary_dims: list[int]) -> Rotation:
    """The rotation taking u to v at each position, u and v (P, m, head_dim) (m = every query and key head).

    The pairing is chosen on the last SELECT_POSITIONS positions (the simplest that fits as well as any); then
    (cos, sin) are fitted at every position.
    """
    head_dim = u.shape[-1]
    candidates = pairings(head_dim, [*rotary_dims, head_dim])
    tail = slice(max(0, u.shape[0] - SELECT_POSITIONS), None)
    errors = [_fit(p, u[tail], v[tail]).error for p in candidates]
    # the simplest candidate as good as the best: neighbours over more dims than RoPE turns fit too (cos 1, sin 0)
    best = next(p for p, e in zip(candidates, errors, strict=True) if e <= 2 * min(errors) + 1e-6)
    return _fit(best, u, v)


def rotary_dims(config: object, head_dim: int) -> list[int]:
    """Rotated dims the config names (partial rotary), then every halving of head_dim: candidates for `identify`."""
    dims = []
    params = getattr(config, "rope_parameters", None)
    factors = [getattr(config, n, None) for n in ("partial_rotary_factor", "rotary_pct")]
    if isinstance(params, dict):
        factors.append(params.get("partial_rotary_factor"))
    dims += [int(head_dim * f) for f in factors if isinstance(f, float | int) and 0 < f <= 1]
    rotary_dim = getattr(config, "rotary_dim", None)
    if isinstance(rotary_dim, int):
        dims.append(rotary_dim)
    r = head_dim
    while r >= 2:
        dims.append(r)
        r //= 2
    return dims
