"""Per-head role scores over a whole run, computed layer by layer in query-row chunks.

Scores (each an average over query positions of the user's text):
- entropy: mean row entropy in nats; entropy_ratio: mean of entropy / ln(#visible keys).
- confidence: mean of the row's largest weight (Voita et al. 2019).
- previous_token: mean a[q, q−1]; self: mean a[q, q]; first_token: mean a[q, 0] (attention sink).
- duplicate_token: mean attention mass on earlier occurrences of the query's own token, over
  positions whose token occurred before (None when no token repeats).
- induction: Olsson et al. (2022) prefix matching, measured on the model's own probe (a seeded
  sequence of random tokens repeated twice), not on the user's text.
- text_induction: the same prefix matching on the user's text itself: mean attention mass on the
  tokens right after earlier occurrences of the query's token, over positions whose token occurred
  before (None when no token repeats). On the probe's second copy it equals `induction`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.inspect.engine.memo import Key
from app.inspect.engine.runs import Run, analyse
from app.inspect.model.capture import LayerQK
from app.inspect.model.families import Layout
from app.inspect.model.loaded import Loaded
from app.inspect.observe import metrics

ROW_CHUNK = 128  # most query rows per step: a chunk of c rows also scores the c²/2 masked cells above its diagonal
BLOCK = 1 << 20  # scores per step (4 MB): small enough to stay in cache across a chunk's passes
PROBE_LENGTH = 50  # random tokens per copy in the induction probe
PROBE_BATCH = 4
PROBE_SEED = 0


@dataclass(frozen=True)
class Role:
    """One per-head role score: `name` is its field in /api/heads and /api/overview, `label` its name on screen."""

    name: str
    label: str
    description: str


# The one list of role scores: the API documents and serves it (GET /api/roles), the page reads it.
ROLES: tuple[Role, ...] = (
    Role("entropy", "entropy", "mean attention entropy over query positions, nats"),
    Role("entropy_ratio", "entropy ratio", "mean entropy / ln(number of visible keys); 1 = uniform"),
    Role("confidence", "confidence", "mean of each row's largest weight (Voita et al. 2019)"),
    Role("previous_token", "previous-token", "mean weight on the previous token"),
    Role("self", "self", "mean weight on the query's own position"),
    Role("first_token", "first-token (sink)", "mean weight on the first token (attention sink)"),
    Role(
        "duplicate_token",
        "duplicate-token",
        "mean weight on earlier copies of the query's token (None if no token repeats)",
    ),
    Role(
        "induction",
        "induction (probe)",
        f"Olsson et al. (2022) prefix matching measured on the model's own probe ({PROBE_BATCH} sequences of "
        f"{PROBE_LENGTH} random tokens, each repeated twice), not on the text: the same for every text",
    ),
    Role(
        "text_induction",
        "induction (this text)",
        "prefix matching on the text itself: mean weight from a token to the token after each earlier "
        "occurrence of it (None if no token repeats)",
    ),
)


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
    text_induction: torch.Tensor | None = None  # prefix matching on the text; None when no token repeats


def prefix_match(token_ids: torch.Tensor, start: int, stop: int, n_keys: int) -> torch.Tensor:
    """(stop − start, n_keys) float: 1 at key j + 1 for each earlier j < q holding q's token, else 0.

    The induction target (Olsson et al. 2022) measured on the text itself: the token that followed an
    earlier occurrence of the current token. Rows are the same as metrics.duplicate_match's, shifted one key.
    """
    dup = metrics.duplicate_match(token_ids, start, stop, n_keys)  # (c, n_keys): earlier copies j < q
    return torch.nn.functional.pad(dup[:, :-1], (1, 0)) if n_keys else dup  # key j + 1 ≤ q: still causal


def bin_edges(t: int, s: int) -> list[int]:
    """Edges of s near-equal bins over t positions: bin j covers [e_j, e_{j+1})."""
    return [(j * t) // s for j in range(s + 1)]


def key_bin_matrix(t: int, edges: list[int], device: torch.device) -> torch.Tensor:
    """(T, s) one-hot: key k belongs to bin j. rows @ it sums rows over key bins in one GEMM."""
    bins = torch.bucketize(torch.arange(t, device=device), torch.tensor(edges[1:-1], device=device), right=True)
    return torch.nn.functional.one_hot(bins, len(edges) - 1).float()


CELL_SCORES = ("previous", "self", "first", "duplicate", "prefix")  # scores that sum a map's weight at cells


@dataclass
class Cells:
    """The (row, key) cells each CELL_SCORES score sums in one chunk: maps[:, rows, keys] @ weights sums them all."""

    rows: torch.Tensor  # (N,) rows relative to the chunk's first
    keys: torch.Tensor  # (N,)
    weights: torch.Tensor  # (N, len(CELL_SCORES)) one-hot: which score each cell adds to
    repeat_rows: int  # rows whose token occurred before (the rows the duplicate and prefix scores average over)


def role_cells(ids: torch.Tensor, start: int, stop: int, repeats: bool) -> Cells:
    """Cells of query rows [start, stop) of a text with token ids `ids`: q−1, q, key 0 and, when some token
    repeats, each earlier copy of q's token and the token after each (a few per row: gathered, not a pass)."""
    q = torch.arange(start, stop, device=ids.device)
    parts = [(q[q >= 1] - start, q[q >= 1] - 1), (q - start, q), (q - start, torch.zeros_like(q))]
    repeat_rows = 0
    if repeats:
        duplicate = metrics.duplicate_match(ids, start, stop, stop)
        repeat_rows = int(duplicate.amax(-1).sum())
        parts.append(metrics.match_cells(duplicate))
        parts.append(metrics.match_cells(prefix_match(ids, start, stop, stop)))
    which = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(parts)])
    weights = torch.nn.functional.one_hot(which, len(CELL_SCORES)).float()
    return Cells(torch.cat([r for r, _ in parts]), torch.cat([k for _, k in parts]), weights, repeat_rows)


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
    KV head are scored in one GEMM against it, with the scaling and the causal bias fused in.

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
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=qk.scaling)  # (kv, g·c, stop)
    return metrics.softmax_stats(scores.view(-1, stop - start, stop))  # (H, c, stop): head = kv·g + j


ChunkVisitor = Callable[[int, int, torch.Tensor], None]  # (layer, first row, maps (H, c, stop)) of each chunk


def rows_per_chunk(n_heads: int, t: int) -> int:
    """Query rows per step: about BLOCK scores at once (a chunk's passes stay in cache), a multiple of 16.

    Measured on the default model (2 CPU cores): at 512 tokens 128 rows take 0.73× the time of 227, at 2,048
    tokens 64 rows 0.9× that of 56 — fewer masked cells, GEMM-friendly shapes, few enough Python steps.
    """
    return max(16, min(ROW_CHUNK, 16 * round(BLOCK / max(n_heads * t, 1) / 16)))


@torch.inference_mode()
def head_stats(run: Run, layout: Layout, thumb: int | None = None, visit: ChunkVisitor | None = None) -> HeadStats:
    """Role scores of every head of a run, and (if `thumb`) thumb×thumb block-mean thumbnails of every map.

    One pass over every layer in query-row chunks of about BLOCK scores; nothing larger than
    n_heads × ROW_CHUNK × T is held at once. Cached on the run per thumbnail size. `visit`, if given,
    sees every chunk's maps in the same pass (corpus mode finds where each head does each role there).
    """
    key = Key[HeadStats](f"head_stats:{thumb}")
    cached = run.memo.get(key)
    if isinstance(cached, HeadStats) and visit is None:
        return cached
    t = run.n_tokens
    s = min(thumb, t) if thumb else 0
    edges = bin_edges(t, s) if s else []
    device = run.hidden.device
    key_bins = key_bin_matrix(t, edges, device) if s else None  # (T, s)
    thumbs = torch.zeros(layout.n_layers, layout.n_heads, s, s, device=device) if s else None
    ids = torch.tensor(run.token_ids, device=device)
    repeats = len(set(run.token_ids)) < t
    row_sums = torch.zeros(layout.n_layers, layout.n_heads, 3, device=device)  # Σ entropy, Σ ratio, Σ top weight
    cell_sums = torch.zeros(layout.n_layers, layout.n_heads, len(CELL_SCORES), device=device)
    n_dup_rows = 0
    c = rows_per_chunk(layout.n_heads, t)
    for start in range(0, t, c):  # chunks outer: masks and cell lists are built once, for every layer
        stop = min(start + c, t)
        bias = causal_bias(start, stop, layout.group_size, device)
        cells = role_cells(ids, start, stop, repeats)
        n_dup_rows += cells.repeat_rows
        visible = torch.arange(start + 1, stop + 1, device=device, dtype=torch.float32)
        inv_uniform = torch.where(visible > 1, 1 / torch.log(visible).clamp_min(metrics.EPS), 0.0)
        row_weights = torch.stack([torch.ones_like(inv_uniform), inv_uniform], dim=1)  # (c, 2)
        segments = row_segments(edges, start, stop) if s else []
        for layer in range(layout.n_layers):
            maps, ent, conf = _chunk(run.qk[layer], layout.group_size, start, stop, bias)  # (H, c, stop), (H, c)
            if visit is not None:
                visit(layer, start, maps)
            row_sums[layer, :, :2] += ent @ row_weights
            row_sums[layer, :, 2] += conf.sum(-1)
            cell_sums[layer] += maps[:, cells.rows, cells.keys] @ cells.weights  # one gather for every cell score
            if thumbs is not None and key_bins is not None:
                # sum each row bin's rows first (one pass), then bin the few summed rows' keys with a small GEMM
                rows = bin_rows(maps, segments)  # (H, nb, stop)
                first_bin = segments[0][0]
                thumbs[layer, :, first_bin : first_bin + len(segments)] += torch.matmul(rows, key_bins[:stop])
    if thumbs is not None:
        widths = torch.tensor(edges[1:], dtype=torch.float32) - torch.tensor(edges[:-1], dtype=torch.float32)
        thumbs = thumbs.cpu() / (widths[:, None] * widths[None, :])
    row_sums, cell_sums = row_sums.cpu(), cell_sums.cpu()
    score = dict(zip(CELL_SCORES, cell_sums.unbind(-1), strict=True))
    dup_rows = max(n_dup_rows, 1)  # prefix-match rows are the duplicate rows: q's token occurred before
    stats = HeadStats(
        entropy=row_sums[..., 0] / t,
        entropy_ratio=row_sums[..., 1] / max(t - 1, 1),
        confidence=row_sums[..., 2] / t,
        previous_token=score["previous"] / max(t - 1, 1),
        self_attention=score["self"] / t,
        first_token=score["first"] / t,
        duplicate_token=score["duplicate"] / dup_rows if n_dup_rows else None,
        thumbnails=thumbs,
        text_induction=score["prefix"] / dup_rows if n_dup_rows else None,
    )
    run.memo.put(key, stats)
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
        run = analyse(loaded, "", token_ids=row.tolist())
        for layer in range(layout.n_layers):
            maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
            mass, rows = metrics.induction_mass(maps, PROBE_LENGTH)
            total[layer] += mass.cpu()
        rows_total += rows
    return total / max(rows_total, 1)
