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

from app.inspect import metrics
from app.inspect.adapters import Layout
from app.inspect.capture import LayerQK
from app.inspect.loading import Loaded
from app.inspect.runs import Run, analyse

ROW_CHUNK = 256  # most query rows per step: bounds memory at n_heads · ROW_CHUNK · T floats
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
    """(T, s) one-hot: key k belongs to bin j. maps @ it sums each row over key bins in one GEMM."""
    bins = torch.bucketize(torch.arange(t, device=device), torch.tensor(edges[1:-1], device=device), right=True)
    return torch.nn.functional.one_hot(bins, len(edges) - 1).float()


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
    """Query rows per step: about BLOCK scores at once, so a chunk's passes stay in cache."""
    return max(16, min(ROW_CHUNK, BLOCK // max(n_heads * t, 1)))


@torch.inference_mode()
def head_stats(run: Run, layout: Layout, thumb: int | None = None, visit: ChunkVisitor | None = None) -> HeadStats:
    """Role scores of every head of a run, and (if `thumb`) thumb×thumb block-mean thumbnails of every map.

    One pass over every layer in query-row chunks of about BLOCK scores; nothing larger than
    n_heads × ROW_CHUNK × T is held at once. Cached on the run per thumbnail size. `visit`, if given,
    sees every chunk's maps in the same pass (corpus mode finds where each head does each role there).
    """
    key = f"head_stats:{thumb}"
    cached = run.extras.get(key)
    if isinstance(cached, HeadStats) and visit is None:
        return cached
    shape = (layout.n_layers, layout.n_heads)
    sums = {name: torch.zeros(shape) for name in ("ent", "ratio", "conf", "prev", "self", "first", "dup", "ind")}
    t = run.n_tokens
    s = min(thumb, t) if thumb else 0
    edges = bin_edges(t, s) if s else []
    device = run.hidden.device
    key_bins = key_bin_matrix(t, edges, device) if s else None  # (T, s)
    thumbs = torch.zeros(layout.n_layers, layout.n_heads, s, s, device=device) if s else None
    ids = torch.tensor(run.token_ids, device=device)
    repeats = len(set(run.token_ids)) < t
    n_dup_rows = 0
    c = rows_per_chunk(layout.n_heads, t)
    for start in range(0, t, c):  # chunks outer: the bias and duplicate masks are built once, for every layer
        stop = min(start + c, t)
        bias = causal_bias(start, stop, layout.group_size, device)
        match = metrics.duplicate_match(ids, start, stop, stop) if repeats else None  # (c, stop)
        prefix = prefix_match(ids, start, stop, stop) if repeats else None  # (c, stop)
        if match is not None:
            n_dup_rows += int(match.amax(-1).sum())
        visible = torch.arange(start + 1, stop + 1, device=device, dtype=torch.float32)
        inv_uniform = torch.where(visible > 1, 1 / torch.log(visible).clamp_min(metrics.EPS), 0.0)
        row_bins = key_bins[start:stop].argmax(-1) if key_bins is not None else None  # each row's bin
        for layer in range(layout.n_layers):
            maps, ent, conf = _chunk(run.qk[layer], layout.group_size, start, stop, bias)  # (H, c, stop), (H, c)
            if visit is not None:
                visit(layer, start, maps)
            sums["ent"][layer] += ent.sum(-1).cpu()
            sums["ratio"][layer] += (ent * inv_uniform).sum(-1).cpu()
            sums["conf"][layer] += conf.sum(-1).cpu()
            sums["prev"][layer] += metrics.diagonal_sum(maps, 1, start).cpu()
            sums["self"][layer] += metrics.diagonal_sum(maps, 0, start).cpu()
            sums["first"][layer] += maps[..., 0].sum(-1).cpu()
            if match is not None:  # the duplicate-token pass only when some token occurs twice
                sums["dup"][layer] += torch.linalg.vecdot(maps, match).sum(-1).cpu()
            if prefix is not None:
                sums["ind"][layer] += torch.linalg.vecdot(maps, prefix).sum(-1).cpu()
            if thumbs is not None and key_bins is not None and row_bins is not None:
                binned = torch.matmul(maps, key_bins[:stop])  # (H, c, s): keys ≥ stop hold no weight
                thumbs[layer].index_add_(1, row_bins, binned)
    if thumbs is not None:
        widths = torch.tensor(edges[1:], dtype=torch.float32) - torch.tensor(edges[:-1], dtype=torch.float32)
        thumbs = thumbs.cpu() / (widths[:, None] * widths[None, :])
    sums["dup"] /= max(n_dup_rows, 1)
    sums["ind"] /= max(n_dup_rows, 1)  # prefix-match rows are the duplicate rows: q's token occurred before
    stats = HeadStats(
        entropy=sums["ent"] / t,
        entropy_ratio=sums["ratio"] / max(t - 1, 1),
        confidence=sums["conf"] / t,
        previous_token=sums["prev"] / max(t - 1, 1),
        self_attention=sums["self"] / t,
        first_token=sums["first"] / t,
        duplicate_token=sums["dup"] if n_dup_rows else None,
        thumbnails=thumbs,
        text_induction=sums["ind"] if n_dup_rows else None,
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
        run = analyse(loaded, "", token_ids=row.tolist())
        for layer in range(layout.n_layers):
            maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
            mass, rows = metrics.induction_mass(maps, PROBE_LENGTH)
            total[layer] += mass.cpu()
        rows_total += rows
    return total / max(rows_total, 1)
