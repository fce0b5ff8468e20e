"""Per-head role scores over a whole run, computed layer by layer in query-row chunks.

Scores (each an average over query positions of the user's text):
- entropy: mean row entropy in nats; entropy_ratio: mean of entropy / ln(#visible keys).
- confidence: mean of the row's largest weight (Voita et al. 2019).
- previous_token: mean a[q, q−1]; self: mean a[q, q]; first_token: mean a[q, 0] (attention sink).
- duplicate_token: mean attention mass on earlier occurrences of the query's own token, over
  positions whose token occurred before (None when no token repeats).
- induction: Olsson et al. (2022) prefix matching, measured on the model's own probe (a seeded
  sequence of random tokens repeated twice), not on the user's text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.inspect import metrics
from app.inspect.adapters import Layout
from app.inspect.capture import LayerQK
from app.inspect.loading import Loaded
from app.inspect.runs import Run, analyse

ROW_CHUNK = 256  # query rows per step: bounds memory at n_heads · ROW_CHUNK · T floats
PROBE_LENGTH = 50  # random tokens per copy in the induction probe
PROBE_BATCH = 4
PROBE_SEED = 0


@dataclass
class HeadStats:
    """Role scores of every head, each tensor (n_layers, n_heads), and optional map thumbnails."""

    entropy: torch.Tensor
    entropy_ratio: torch.Tensor
    confidence: torch.Tensor
    previous_token: torch.Tensor
    self_attention: torch.Tensor
    first_token: torch.Tensor
    duplicate_token: torch.Tensor | None
    thumbnails: torch.Tensor | None = None  # (n_layers, n_heads, s, s): block means of each map


def bin_edges(t: int, s: int) -> list[int]:
    """Edges of s near-equal bins over t positions: bin j covers [e_j, e_{j+1})."""
    return [(j * t) // s for j in range(s + 1)]


def _key_bins(maps: torch.Tensor, edges: list[int]) -> torch.Tensor:
    """Sum of each row over key bins, via a cumulative sum: (..., c, S) → (..., c, s); keys ≥ S count as 0."""
    cs = maps.cumsum(-1)  # (..., c, S): cs[..., k] = Σ_{≤k}
    ends = torch.tensor(edges[1:], device=maps.device).clamp(max=maps.shape[-1]) - 1
    at = cs[..., ends]  # (..., c, s): mass up to the end of each bin
    return torch.diff(at, dim=-1, prepend=torch.zeros_like(at[..., :1]))


def _chunk(qk: LayerQK, group_size: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps, entropies and largest weights of every head for query rows [start, stop) of a batch-1 run.

    Causal rows never see keys ≥ stop, so only keys [0, stop) are scored: half the work of full rows.

    Returns:
        (maps (H, c, stop), entropy (H, c), confidence (H, c)).
    """
    q = qk.q[0, :, start:stop].float() * qk.scaling  # (H, c, D)
    kv = torch.arange(q.shape[0], device=q.device) // group_size
    k = qk.k[0, kv, :stop].float()  # (H, stop, D)
    scores = torch.matmul(q, k.transpose(-1, -2))  # (H, c, stop)
    if qk.mask is None:  # causal: only the diagonal block [start, stop)² has keys to hide
        c = stop - start
        above = torch.ones(c, c, dtype=torch.bool, device=q.device).triu_(1)
        scores[..., start:].masked_fill_(above, metrics.MASKED)
    elif qk.mask.dtype == torch.bool:
        scores.masked_fill_(~qk.mask[0, 0, start:stop, :stop], metrics.MASKED)
    else:
        scores += qk.mask[0, 0, start:stop, :stop].float()
    return metrics.softmax_stats(scores)


@torch.inference_mode()
def head_stats(run: Run, layout: Layout, thumb: int | None = None) -> HeadStats:
    """Role scores of every head of a run, and (if `thumb`) thumb×thumb block-mean thumbnails of every map.

    One pass over every layer in query-row chunks; nothing larger than n_heads × ROW_CHUNK × T is
    held at once. Cached on the run per thumbnail size.
    """
    key = f"head_stats:{thumb}"
    cached = run.extras.get(key)
    if isinstance(cached, HeadStats):
        return cached
    shape = (layout.n_layers, layout.n_heads)
    sums = {name: torch.zeros(shape) for name in ("ent", "ratio", "conf", "prev", "self", "first", "dup")}
    t = run.n_tokens
    s = min(thumb, t) if thumb else 0
    edges = bin_edges(t, s) if s else []
    thumbs = torch.zeros(layout.n_layers, layout.n_heads, s, s) if s else None
    device = run.hidden.device
    row_bin = torch.bucketize(torch.arange(t), torch.tensor(edges[1:-1]), right=True).to(device) if s else None
    ids = torch.tensor(run.token_ids, device=device)
    # where each chunk's queries repeat an earlier token: the same for every layer, so built once
    matches = (
        [metrics.duplicate_match(ids, a, min(a + ROW_CHUNK, t), min(a + ROW_CHUNK, t)) for a in range(0, t, ROW_CHUNK)]
        if len(set(run.token_ids)) < t
        else []
    )
    n_dup_rows = 0
    for layer in range(layout.n_layers):
        n_dup_rows = 0
        layer_thumb = torch.zeros(layout.n_heads, s, s, device=device) if s else None
        for chunk, start in enumerate(range(0, t, ROW_CHUNK)):
            stop = min(start + ROW_CHUNK, t)
            maps, ent, conf = _chunk(run.qk[layer], layout.group_size, start, stop)  # (H, c, stop), (H, c)
            visible = torch.arange(start + 1, stop + 1, device=device, dtype=torch.float32)
            ratio = torch.where(visible > 1, ent / torch.log(visible).clamp_min(metrics.EPS), torch.zeros_like(ent))
            sums["ent"][layer] += ent.sum(-1).cpu()
            sums["ratio"][layer] += ratio.sum(-1).cpu()
            sums["conf"][layer] += conf.sum(-1).cpu()
            sums["prev"][layer] += metrics.diagonal_sum(maps, 1, start).cpu()
            sums["self"][layer] += metrics.diagonal_sum(maps, 0, start).cpu()
            sums["first"][layer] += maps[..., 0].sum(-1).cpu()
            if matches:  # the duplicate-token pass only when some token occurs twice
                sums["dup"][layer] += (maps * matches[chunk]).sum((-1, -2)).cpu()
                n_dup_rows += int(matches[chunk].amax(-1).sum())
            if layer_thumb is not None and row_bin is not None:
                binned = _key_bins(maps, edges)  # (H, c, s); keys ≥ stop hold no weight
                layer_thumb.index_add_(1, row_bin[start : start + maps.shape[1]], binned)
        sums["dup"][layer] /= max(n_dup_rows, 1)
        if thumbs is not None and layer_thumb is not None:
            widths = torch.tensor(edges[1:], dtype=torch.float32) - torch.tensor(edges[:-1], dtype=torch.float32)
            thumbs[layer] = layer_thumb.cpu() / (widths[:, None] * widths[None, :])
    stats = HeadStats(
        entropy=sums["ent"] / t,
        entropy_ratio=sums["ratio"] / max(t - 1, 1),
        confidence=sums["conf"] / t,
        previous_token=sums["prev"] / max(t - 1, 1),
        self_attention=sums["self"] / t,
        first_token=sums["first"] / t,
        duplicate_token=sums["dup"] if n_dup_rows else None,
        thumbnails=thumbs,
    )
    run.extras[key] = stats
    return stats


def probe_tokens(vocab_size: int, length: int = PROBE_LENGTH, batch: int = PROBE_BATCH) -> torch.Tensor:
    """(batch, 2·length) seeded random token ids, each row a random sequence repeated twice."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    low = min(100, vocab_size // 10)  # skip the first ids: special and byte tokens in most vocabularies
    half = torch.randint(low, vocab_size, (batch, length), generator=gen)
    return torch.cat([half, half], dim=1)


@torch.inference_mode()
def induction_scores(loaded: Loaded) -> torch.Tensor:
    """Induction score of every head (n_layers, n_heads) on the model's probe; mean over rows and probes."""
    layout = loaded.adapter.layout
    probe = probe_tokens(layout.vocab_size)
    total = torch.zeros(layout.n_layers, layout.n_heads)
    rows_total = 0
    for row in probe:
        run = analyse_ids(loaded, row.tolist())
        for layer in range(layout.n_layers):
            maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
            mass, rows = metrics.induction_mass(maps, PROBE_LENGTH)
            total[layer] += mass.cpu()
        rows_total += rows
    return total / max(rows_total, 1)


def analyse_ids(loaded: Loaded, ids: list[int]) -> Run:
    """Analyse a sequence given as token ids (decoded to text for the run's record)."""
    return analyse(loaded, "", token_ids=ids)
