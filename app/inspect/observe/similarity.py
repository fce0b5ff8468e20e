"""Head-similarity matrices over a run: which heads attend alike (head redundancy / collapse).

`similarity_steps` computes one in steps (Jensen–Shannon over a few query rows each), for work that the model
worker runs in slices (a corpus job measures every text's matrix); `head_similarity` runs those steps at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from app.inspect.engine.runs import Run
from app.inspect.engine.steps import Progress, Steps, drain
from app.inspect.model.families import Layout
from app.inspect.observe import metrics
from app.inspect.observe.registry import SimilarityName

MAX_CELLS = 32_000_000  # maps kept at once: heads × rows × T floats
MAX_JS_WORK = 1_000_000_000  # pairwise JS terms: pairs × rows × T
JS_STEP_WORK = 250_000_000  # pairwise JS terms of one step: about a forward of 256 tokens of the default model


@dataclass
class Similarity:
    heads: list[tuple[int, int]]  # in matrix order
    matrix: torch.Tensor  # (n, n)
    collapse: dict[int, float]  # per layer: mean pairwise value among that layer's heads
    query_rows: int


def query_rows(n_heads: int, t: int, metric: SimilarityName) -> torch.Tensor:
    """Query positions to average over: all of them, or an even spread when the work would be too large."""
    budget = MAX_CELLS // max(n_heads * t, 1)
    if metric == "js":
        budget = min(budget, MAX_JS_WORK // max(n_heads * n_heads // 2 * t, 1))
    rows = max(1, min(t, budget))
    if rows >= t:
        return torch.arange(t)
    spread: torch.Tensor = torch.linspace(0, t - 1, rows).round().long().unique()  # type: ignore[no-untyped-call]
    return spread


def head_similarity(
    run: Run, layout: Layout, heads: list[tuple[int, int]], metric: SimilarityName, order: Literal["layer", "cluster"]
) -> Similarity:
    """Pairwise similarity of `heads`' maps on the run's text.

    Args:
        run: the analysed text.
        layout: the model's head layout.
        heads: (layer, head) pairs, in layer order.
        metric: "js" (Jensen–Shannon divergence, nats, averaged over query rows) or "cosine" (of flattened maps).
        order: "layer" keeps `heads` order; "cluster" reorders by hierarchical clustering.
    """
    return drain(similarity_steps(run, layout, heads, metric, order))


def similarity_steps(
    run: Run,
    layout: Layout,
    heads: list[tuple[int, int]],
    metric: SimilarityName,
    order: Literal["layer", "cluster"],
    step_work: int = JS_STEP_WORK,
) -> Steps[Progress, Similarity]:
    """head_similarity in steps: yields Progress(query rows done, rows) between steps of at most `step_work`
    pairwise JS terms (pairs × rows × T); the divergence averages over rows, so the steps' sums add up."""
    with torch.inference_mode():
        rows = query_rows(len(heads), run.n_tokens, metric).to(run.hidden.device)
        parts = []
        for layer in dict.fromkeys(ly for ly, _ in heads):
            in_layer = [h for ly, h in heads if ly == layer]
            maps = run.maps(layer, in_layer, layout.group_size)  # (h, T, T)
            parts.append(maps[:, rows])
        maps = torch.cat(parts)  # (n, rows, T)
    if metric == "js":
        n, n_rows, t = maps.shape
        per_step = max(1, step_work // max(n * n // 2 * t, 1))
        total = torch.zeros(n, n, dtype=torch.float64, device=maps.device)
        for start in range(0, n_rows, per_step):
            if start:
                yield Progress(start, n_rows)
            with torch.inference_mode():
                chunk = maps[:, start : start + per_step]  # (n, c, T)
                total += metrics.js_divergence_matrix(chunk).double() * chunk.shape[1]
        matrix = (total / n_rows).float()
        distance = matrix
    with torch.inference_mode():
        if metric != "js":
            matrix = metrics.cosine_matrix(maps)
            distance = 1 - matrix
        collapse = {}
        for layer in dict.fromkeys(ly for ly, _ in heads):
            idx = [i for i, (ly, _) in enumerate(heads) if ly == layer]
            if len(idx) > 1:
                block = matrix[idx][:, idx]
                off = ~torch.eye(len(idx), dtype=torch.bool, device=block.device)
                collapse[layer] = float(block[off].mean())
        if order == "cluster":
            perm = metrics.cluster_order(distance)
            heads = [heads[i] for i in perm]
            matrix = matrix[perm][:, perm]
    return Similarity(heads=heads, matrix=matrix.cpu(), collapse=collapse, query_rows=int(rows.numel()))
