"""Pure functions over attention maps: entropy, role scores, head similarity.

Maps are float tensors (..., T, T): row = query position, column = key position,
rows sum to 1, zeros above the diagonal. Every score is an average over query
positions, so a head's score is comparable across texts of different lengths.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-12  # Clark et al. (2019) smoothing: 0·log 0 taken as 0 via log(a + eps)


MASKED = -1e30  # a masked score: exp underflows to exactly 0, and 0 · MASKED stays finite (unlike −inf)


def softmax_stats(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax of attention scores with each row's entropy and largest weight, in few passes.

    With m = max s, p = softmax(s) and Z = Σ exp(s − m): max p = 1/Z and
    H = log Z − Σ p·(s − m) = m − Σ p·s − log(max p). No log over the whole row is needed,
    which keeps per-head statistics cheap next to the forward.

    Args:
        scores: (..., S) scaled q·k with masked entries set to MASKED.

    Returns:
        (probs (..., S), entropy in nats (...), largest weight (...)).
    """
    m = scores.amax(-1)
    probs = torch.softmax(scores, dim=-1)
    top = probs.amax(-1)
    expected = torch.linalg.vecdot(probs, scores)
    entropy = (m - expected - torch.log(top)).clamp_min(0.0)
    return probs, entropy, top


def duplicate_match(token_ids: torch.Tensor, start: int, stop: int, n_keys: int) -> torch.Tensor:
    """(stop − start, n_keys) float: 1 where key k < query q holds the same token as q, else 0."""
    q = torch.arange(start, stop, device=token_ids.device)
    same = token_ids[q][:, None] == token_ids[:n_keys][None, :]
    earlier = torch.arange(n_keys, device=token_ids.device)[None, :] < q[:, None]
    return (same & earlier).float()


def match_cells(match: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, keys) of the nonzero cells of a (c, n_keys) match, row-major: what duplicate_match marks, as indices."""
    rows, keys = match.nonzero(as_tuple=True)
    return rows, keys


def induction_mass(maps: torch.Tensor, period: int, row_offset: int = 0) -> tuple[torch.Tensor, int]:
    """Olsson et al. (2022) prefix matching on a sequence repeated with `period`.

    At query q ≥ period (second copy), the induction target is key q − period + 1: the
    token that followed the earlier occurrence of the current token.

    Returns:
        (Σ of a[q, q − period + 1] over such rows, shape (...), number of such rows).
    """
    t_q = maps.shape[-2]
    q = torch.arange(t_q, device=maps.device) + row_offset
    valid = q >= period
    rows = torch.arange(t_q, device=maps.device)[valid]
    picked = maps[..., rows, q[valid] - period + 1]
    return picked.sum(-1), int(valid.sum())


def js_divergence_matrix(maps: torch.Tensor, row_chunk: int = 64) -> torch.Tensor:
    """Pairwise Jensen–Shannon divergence (nats) between heads, averaged over query rows (Clark et al. 2019).

    Args:
        maps: (H, T, T) attention maps of H heads on the same text.
        row_chunk: query rows per step (bounds memory at H²·row_chunk·T).

    Returns:
        (H, H) symmetric, zero diagonal, every entry in [0, ln 2].
    """
    n, t, _ = maps.shape
    total = torch.zeros(n, n, dtype=torch.float64, device=maps.device)
    plogp = maps * torch.log(maps + EPS)  # (H, T, T)
    for start in range(0, t, row_chunk):
        p = maps[:, start : start + row_chunk]  # (H, c, T)
        own = plogp[:, start : start + row_chunk].sum(-1)  # (H, c): −entropy of each row
        for i in range(n):  # pairs (i, j ≥ i); mirrored below
            m = 0.5 * (p[i : i + 1] + p[i:])  # (H − i, c, T)
            cross = (m * torch.log(m + EPS)).sum(-1)  # (H − i, c): −H(M)
            js = cross.neg() - 0.5 * (own[i : i + 1].neg() + own[i:].neg())  # H(M) − (H(P)+H(Q))/2
            total[i, i:] += js.double().sum(-1)
    upper = torch.triu(total / t)
    js = (upper + upper.T).clamp(0.0, math.log(2))
    js.fill_diagonal_(0.0)
    return js.float()


def cosine_matrix(maps: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of flattened maps: (H, T, T) → (H, H), 1 on the diagonal."""
    flat = maps.reshape(maps.shape[0], -1).double()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(EPS)
    sim = (unit @ unit.T).clamp(-1.0, 1.0)
    sim.fill_diagonal_(1.0)
    out: torch.Tensor = sim.float()
    return out


def cluster_order(distance: torch.Tensor) -> list[int]:
    """Leaf order of average-linkage hierarchical clustering, so similar heads sit together."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    d = distance.double().cpu().numpy()
    if d.shape[0] < 3:
        return list(range(d.shape[0]))
    d = 0.5 * (d + d.T)
    d[range(len(d)), range(len(d))] = 0.0
    condensed = squareform(d.clip(min=0.0), checks=False)
    return [int(i) for i in leaves_list(linkage(condensed, method="average", optimal_ordering=True))]
