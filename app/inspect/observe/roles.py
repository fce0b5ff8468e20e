"""Every head's text metrics (the registry's) over a whole run, computed layer by layer in query-row chunks.

What each score means is defined once, in `registry.METRICS`; this module computes all of them in one
pass over the maps, and finds where in the text each head does each most (`Where`, for corpus examples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.inspect.engine.memo import Key
from app.inspect.engine.runs import Run
from app.inspect.model.capture import LayerQK
from app.inspect.model.families import Layout
from app.inspect.observe import metrics, registry
from app.inspect.observe.registry import Chunk, HeadMetric, RowStats

ROW_CHUNK = 128  # most query rows per step: a chunk of c rows also scores the c²/2 masked cells above its diagonal
BLOCK = 1 << 20  # scores per step (4 MB): small enough to stay in cache across a chunk's passes


@dataclass
class HeadStats:
    """Every text metric of every head: name → (n_layers, n_heads), None for an optional metric no row
    of the text counts towards; and optional map thumbnails."""

    scores: dict[str, torch.Tensor | None]
    thumbnails: torch.Tensor | None = None  # (n_layers, n_heads, s, s): block means of each map

    def __getitem__(self, name: str) -> torch.Tensor | None:
        return self.scores[name]


def every_score(stats: HeadStats, probed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """Every registry metric, in registry order: the text's from `stats`, the probe's from `probed`."""
    return {m.name: probed[m.name] if m.on == "probe" else stats[m.name] for m in registry.METRICS}


def bin_edges(t: int, s: int) -> list[int]:
    """Edges of s near-equal bins over t positions: bin j covers [e_j, e_{j+1})."""
    return [(j * t) // s for j in range(s + 1)]


def key_bin_matrix(t: int, edges: list[int], device: torch.device) -> torch.Tensor:
    """(T, s) one-hot: key k belongs to bin j. rows @ it sums rows over key bins in one GEMM."""
    bins = torch.bucketize(torch.arange(t, device=device), torch.tensor(edges[1:-1], device=device), right=True)
    return torch.nn.functional.one_hot(bins, len(edges) - 1).float()


def row_segments(edges: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(bin, first row, end row) of each row bin that rows [start, stop) meet, rows relative to `start`."""
    out = []
    for j in range(len(edges) - 1):
        a, b = max(edges[j], start), min(edges[j + 1], stop)
        if a < b:
            out.append((j, a - start, b - start))
    return out


def bin_rows(maps: torch.Tensor, segments: list[tuple[int, int, int]]) -> torch.Tensor:
    """(H, nb, stop): the rows of maps (H, c, stop) summed within each segment (one sum when all are equal)."""
    width = segments[0][2] - segments[0][1]
    if segments[0][1] == 0 and segments[-1][2] == maps.shape[1] and all(b - a == width for _, a, b in segments):
        return maps.view(maps.shape[0], len(segments), width, maps.shape[2]).sum(2)
    return torch.stack([maps[:, a:b].sum(1) for _, a, b in segments], dim=1)


def causal_bias(start: int, stop: int, group_size: int, device: torch.device) -> torch.Tensor:
    """(group_size·c, stop) additive mask for query rows [start, stop): MASKED above the diagonal, else 0."""
    bias = torch.zeros(stop - start, stop, device=device)
    bias[:, start:] = torch.ones(stop - start, stop - start, device=device).triu_(1) * metrics.MASKED
    return bias.repeat(group_size, 1)


def _chunk(
    qk: LayerQK, group_size: int, start: int, stop: int, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps, entropies and largest weights of every head for query rows [start, stop) of a batch-1 run.

    Causal rows never see keys ≥ stop, so only keys [0, stop) are scored. The query heads that share a
    KV head are scored in one GEMM against it, with the scaling and the causal bias fused in. Everything the
    layer adds to q·kᵀ is applied as capture.attention_maps does: a soft-cap, an ALiBi bias, learned sinks
    (a row then sums to less than 1, and its entropy is over the keys the map shows).

    Returns:
        (maps (H, c, stop), entropy (H, c), confidence (H, c)).
    """
    n_kv, t, d = qk.k.shape[1], qk.q.shape[2], qk.q.shape[3]
    q = qk.q[0].view(n_kv, group_size, t, d)[:, :, start:stop].reshape(n_kv, -1, d).float()  # (kv, g·c, D)
    k = qk.k[0, :, :stop].float()  # (kv, stop, D)
    if qk.mask is not None:  # padding or a sliding window: the run's own mask
        mask = qk.mask[0, 0, start:stop, :stop]
        own = torch.where(mask, 0.0, metrics.MASKED) if mask.dtype == torch.bool else mask.float()
        bias = own.repeat(group_size, 1)
    if qk.softcap is None:
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=qk.scaling)  # (kv, g·c, stop)
    else:  # Gemma 2: the cap bends the scores before the mask is added
        scores = torch.tanh(torch.bmm(q, k.transpose(1, 2)) * (qk.scaling / qk.softcap)) * qk.softcap + bias
    scores = scores.view(-1, stop - start, stop)  # (H, c, stop): head = kv·g + j
    if qk.bias is not None:  # ALiBi: one value per head and key
        scores = scores + qk.bias[0, :, :, :stop].float()
    if qk.sinks is None:
        return metrics.softmax_stats(scores)
    # GPT-OSS: the sink is one more logit in each row's softmax; the map (and every score) is over the keys only
    sink = qk.sinks.float().view(-1, 1, 1).expand(-1, stop - start, 1)
    maps = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    entropy = -(maps * torch.log(maps + metrics.EPS)).sum(-1)
    return maps, entropy, maps.amax(-1)


ChunkVisitor = Callable[[int, Chunk, torch.Tensor], None]  # (layer, its rows, maps (H, c, stop)) of each chunk


def rows_per_chunk(n_heads: int, t: int) -> int:
    """Query rows per step: about BLOCK scores at once (a chunk's passes stay in cache), a multiple of 16.

    Measured on the default model (2 CPU cores): at 512 tokens 128 rows take 0.73× the time of 227, at 2,048
    tokens 64 rows 0.9× that of 56 — fewer masked cells, GEMM-friendly shapes, few enough Python steps.
    """
    return max(16, min(ROW_CHUNK, 16 * round(BLOCK / max(n_heads * t, 1) / 16)))


@torch.inference_mode()
def head_stats(run: Run, layout: Layout, thumb: int | None = None, visit: ChunkVisitor | None = None) -> HeadStats:
    """Every text metric of every head of a run, and (if `thumb`) thumb×thumb block-mean thumbnails of every map.

    One pass over every layer in query-row chunks of about BLOCK scores; nothing larger than
    n_heads × ROW_CHUNK × T is held at once. Cached on the run per thumbnail size. `visit`, if given,
    sees every chunk's maps in the same pass (corpus mode finds where each head does each metric there).
    """
    key = Key[HeadStats](f"head_stats:{thumb}")
    cached = run.memo.get(key)
    if isinstance(cached, HeadStats) and visit is None:
        return cached
    measured = registry.text_metrics()
    t = run.n_tokens
    s = min(thumb, t) if thumb else 0
    edges = bin_edges(t, s) if s else []
    device = run.hidden.device
    key_bins = key_bin_matrix(t, edges, device) if s else None  # (T, s)
    thumbs = torch.zeros(layout.n_layers, layout.n_heads, s, s, device=device) if s else None
    ids = torch.tensor(run.token_ids, device=device)
    repeats = len(set(run.token_ids)) < t
    sums = torch.zeros(layout.n_layers, layout.n_heads, len(measured), device=device)  # Σ over counted rows
    counts = torch.zeros(len(measured), device=device)  # counted rows of each metric
    by_row = [(i, m.row) for i, m in enumerate(measured) if m.row is not None]
    c = rows_per_chunk(layout.n_heads, t)
    for start in range(0, t, c):  # chunks outer: masks and cell lists are built once, for every layer
        stop = min(start + c, t)
        chunk = Chunk(ids, start, stop, repeats)
        bias = causal_bias(start, stop, layout.group_size, device)
        rows = torch.stack([_rows(m, chunk) for m in measured], dim=1).float()  # (c, M)
        counts += rows.sum(0)
        cell_rows, cell_keys, cell_weights = _cells(measured, chunk)
        segments = row_segments(edges, start, stop) if s else []
        for layer in range(layout.n_layers):
            maps, ent, conf = _chunk(run.qk[layer], layout.group_size, start, stop, bias)  # (H, c, stop), (H, c)
            if visit is not None:
                visit(layer, chunk, maps)
            row_stats = RowStats(ent, conf, chunk)
            for i, value in by_row:
                sums[layer, :, i] += value(row_stats) @ rows[:, i]
            sums[layer] += maps[:, cell_rows, cell_keys] @ cell_weights  # one gather for every cell metric
            if thumbs is not None and key_bins is not None:
                # sum each row bin's rows first (one pass), then bin the few summed rows' keys with a small GEMM
                binned = bin_rows(maps, segments)  # (H, nb, stop)
                first_bin = segments[0][0]
                thumbs[layer, :, first_bin : first_bin + len(segments)] += torch.matmul(binned, key_bins[:stop])
    if thumbs is not None:
        widths = torch.tensor(edges[1:], dtype=torch.float32) - torch.tensor(edges[:-1], dtype=torch.float32)
        thumbs = thumbs.cpu() / (widths[:, None] * widths[None, :])
    sums, counts = sums.cpu(), counts.cpu()
    scores: dict[str, torch.Tensor | None] = {}
    for i, m in enumerate(measured):
        n = int(counts[i])
        scores[m.name] = sums[..., i] / max(n, 1) if n or not m.optional else None
    stats = HeadStats(scores, thumbnails=thumbs)
    run.memo.put(key, stats)
    return stats


def _rows(m: HeadMetric, chunk: Chunk) -> torch.Tensor:
    assert m.rows is not None, f"{m.name}: a text metric says which rows it averages over"
    return m.rows(chunk)


def _cells(measured: list[HeadMetric], chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every cell metric's cells in one list: (rows, keys) and (N, M) one-hot weights, metric i in column i."""
    parts = [(i, chunk.cells(m)) for i, m in enumerate(measured) if m.cells is not None]
    device = chunk.ids.device
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, len(measured), device=device)
    which = torch.cat([torch.full_like(rows, i) for i, (rows, _) in parts])
    weights = torch.nn.functional.one_hot(which, len(measured)).float()
    return torch.cat([r for _, (r, _) in parts]), torch.cat([k for _, (_, k) in parts]), weights


class Where:
    """Where in one text each head does each metric most: a head_stats visitor, so in the same pass.

    A cell metric: its cell with the most weight; a row metric with `top_cell` (confidence): the row with
    the largest top weight, and that weight's key; other metrics have no cell (−1). Query 0 (all its
    weight on itself) is skipped when the text has more tokens. Ties: the first.
    """

    def __init__(self, n_tokens: int, layout: Layout, device: torch.device) -> None:
        self.t = n_tokens
        self.located = [m for m in registry.text_metrics() if m.has_where]
        shape = (layout.n_layers, layout.n_heads)
        self.best = {m.name: torch.full(shape, -torch.inf, device=device) for m in self.located}
        self.cells = {m.name: torch.full((*shape, 2), -1, dtype=torch.long, device=device) for m in self.located}
        self.shape = shape

    def __call__(self, layer: int, chunk: Chunk, maps: torch.Tensor) -> None:
        """Update with one chunk of one layer: maps (H, c, stop)."""
        first = 1 if self.t > 1 else 0  # query 0 only in a one-token text
        for m in self.located:
            if m.cells is not None:
                rows, keys = chunk.cells(m)
                keep = rows + chunk.start >= first
                rows, keys = rows[keep], keys[keep]
                if rows.numel():
                    self._update(layer, m.name, maps[:, rows, keys], rows + chunk.start, keys)
            else:
                top, top_key = maps.max(-1)  # (H, c)
                top = top.masked_fill(chunk.q < first, -torch.inf)
                self._update(layer, m.name, top, chunk.q, top_key)

    def _update(self, layer: int, metric: str, values: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> None:
        """values (H, n) at cells (queries (n,), keys (n,) or (H, n)): keep each head's largest so far."""
        value, i = values.max(-1)  # (H,): the first largest
        key = keys.gather(-1, i[:, None])[:, 0] if keys.dim() == 2 else keys[i]
        better = value > self.best[metric][layer]
        self.best[metric][layer] = torch.where(better, value, self.best[metric][layer])
        cell = torch.stack([queries[i], key], -1)  # (H, 2)
        self.cells[metric][layer] = torch.where(better[:, None], cell, self.cells[metric][layer])

    def result(self) -> dict[str, torch.Tensor]:
        """text metric -> (n_layers, n_heads, 2) long (query_pos, key_pos); −1 where the metric has no cell."""
        none = torch.full((*self.shape, 2), -1, dtype=torch.long)
        return {m.name: self.cells[m.name].cpu() if m.name in self.cells else none for m in registry.text_metrics()}


def where(run: Run, layout: Layout) -> dict[str, torch.Tensor]:
    """Where each head does each text metric most in the run's text (see Where), by one head_stats pass."""
    found = Where(run.n_tokens, layout, run.hidden.device)
    head_stats(run, layout, visit=found)
    return found.result()
