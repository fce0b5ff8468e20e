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
from app.inspect.loading import Loaded
from app.inspect.runs import Run, analyse

ROW_CHUNK = 256  # query rows per step: bounds memory at n_heads · ROW_CHUNK · T floats
PROBE_LENGTH = 50  # random tokens per copy in the induction probe
PROBE_BATCH = 4
PROBE_SEED = 0


@dataclass
class HeadStats:
    """Role scores of every head, each tensor (n_layers, n_heads)."""

    entropy: torch.Tensor
    entropy_ratio: torch.Tensor
    confidence: torch.Tensor
    previous_token: torch.Tensor
    self_attention: torch.Tensor
    first_token: torch.Tensor
    duplicate_token: torch.Tensor | None


@torch.inference_mode()
def head_stats(run: Run, layout: Layout) -> HeadStats:
    """Role scores of every head of a run (cached on the run)."""
    cached = run.extras.get("head_stats")
    if isinstance(cached, HeadStats):
        return cached
    shape = (layout.n_layers, layout.n_heads)
    sums = {name: torch.zeros(shape) for name in ("ent", "ratio", "conf", "prev", "self", "first", "dup")}
    n_dup_rows = 0
    t = run.n_tokens
    ids = torch.tensor(run.token_ids, device=run.hidden.device)
    heads = list(range(layout.n_heads))
    for layer in range(layout.n_layers):
        n_dup_rows = 0
        for start in range(0, t, ROW_CHUNK):
            maps = run.maps(layer, heads, layout.group_size, slice(start, start + ROW_CHUNK))  # (H, c, T)
            ent, ratio = metrics.entropy_stats(maps, start)
            sums["ent"][layer] += ent.cpu()
            sums["ratio"][layer] += ratio.cpu()
            sums["conf"][layer] += maps.amax(-1).sum(-1).cpu()
            sums["prev"][layer] += metrics.diagonal_sum(maps, 1, start).cpu()
            sums["self"][layer] += metrics.diagonal_sum(maps, 0, start).cpu()
            sums["first"][layer] += maps[..., 0].sum(-1).cpu()
            dup, rows = metrics.duplicate_mass(maps, ids, start)
            sums["dup"][layer] += dup.cpu()
            n_dup_rows += rows
        sums["dup"][layer] /= max(n_dup_rows, 1)
    stats = HeadStats(
        entropy=sums["ent"] / t,
        entropy_ratio=sums["ratio"] / max(t - 1, 1),
        confidence=sums["conf"] / t,
        previous_token=sums["prev"] / max(t - 1, 1),
        self_attention=sums["self"] / t,
        first_token=sums["first"] / t,
        duplicate_token=sums["dup"] if n_dup_rows else None,
    )
    run.extras["head_stats"] = stats
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
    heads = list(range(layout.n_heads))
    for row in probe:
        run = analyse_ids(loaded, row.tolist())
        for layer in range(layout.n_layers):
            maps = run.maps(layer, heads, layout.group_size)
            mass, rows = metrics.induction_mass(maps, PROBE_LENGTH)
            total[layer] += mass.cpu()
        rows_total += rows
    return total / max(rows_total, 1)


def analyse_ids(loaded: Loaded, ids: list[int]) -> Run:
    """Analyse a sequence given as token ids (decoded to text for the run's record)."""
    return analyse(loaded, "", token_ids=ids)
