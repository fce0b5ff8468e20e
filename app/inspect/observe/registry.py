"""The one registry of head metrics and similarity measures: each defined once, everything else derived.

A head metric is a mean over some query rows of one text (or, for the probe metrics, a score on the
model's own probe). `roles.head_stats` computes every text metric in one pass over the maps, /api/roles
serves this list, /api/heads and /api/overview return one field per entry, corpus jobs keep one
statistic per text metric and find where in a text each head does it most, and the pages build their
metric lists from /api/roles. Adding a metric is one entry here.

A text metric is either
- a row metric: a value per query row from the row's own statistics (its entropy, its largest weight),
  averaged over the rows `rows` selects; or
- a cell metric: the weight a row puts on the cells `cells` names (e.g. the key before the query),
  summed per row and averaged over the rows `rows` selects. The cell with the most weight is where
  a head does it most in a text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

import torch

from app.inspect.model.loaded import Loaded
from app.inspect.observe import metrics, probe

Cells = tuple[torch.Tensor, torch.Tensor]  # (rows relative to the chunk's first, keys), one entry per cell


class Chunk:
    """Query rows [start, stop) of one text (token ids `ids`): what the cell and row selectors look at.

    Everything is computed on first use and kept for the chunk's passes over every layer.
    """

    def __init__(self, ids: torch.Tensor, start: int, stop: int, repeats: bool) -> None:
        self.ids, self.start, self.stop, self.repeats = ids, start, stop, repeats
        self._cells: dict[str, Cells] = {}

    @cached_property
    def q(self) -> torch.Tensor:
        """(c,) the rows' query positions."""
        return torch.arange(self.start, self.stop, device=self.ids.device)

    @cached_property
    def visible(self) -> torch.Tensor:
        """(c,) float: keys each row sees (causal: q + 1)."""
        return (self.q + 1).float()

    @cached_property
    def duplicate(self) -> torch.Tensor:
        """(c, stop) float: 1 at each earlier key holding the query's token (zeros when no token repeats)."""
        if not self.repeats:
            return torch.zeros(self.stop - self.start, self.stop, device=self.ids.device)
        return metrics.duplicate_match(self.ids, self.start, self.stop, self.stop)

    @cached_property
    def repeated(self) -> torch.Tensor:
        """(c,) bool: rows whose token occurred before."""
        return self.duplicate.amax(-1) > 0

    @cached_property
    def all_rows(self) -> torch.Tensor:
        return torch.ones_like(self.q, dtype=torch.bool)

    @cached_property
    def after_first(self) -> torch.Tensor:
        """(c,) bool: rows that see more than one key."""
        return self.q >= 1

    def cells(self, metric: HeadMetric) -> Cells:
        """The cells a cell metric sums in this chunk (computed once, for every layer)."""
        if metric.name not in self._cells:
            assert metric.cells is not None
            self._cells[metric.name] = metric.cells(self)
        return self._cells[metric.name]


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of every head in one chunk: what a row metric reads."""

    entropy: torch.Tensor  # (H, c) nats
    top: torch.Tensor  # (H, c) the row's largest weight
    chunk: Chunk


@dataclass(frozen=True)
class HeadMetric:
    """One per-head score. `name` is its field in every response, `label` its name on screen."""

    name: str
    label: str
    definition: str
    low: float  # the least value it can take
    high: float | None  # the most (None: grows with the text, e.g. entropy up to ln T)
    higher_is_more: bool  # a higher value means more of what the name says
    on: Literal["text", "probe"] = "text"
    rows: Callable[[Chunk], torch.Tensor] | None = None  # (c,) bool: the rows the mean is over
    row: Callable[[RowStats], torch.Tensor] | None = None  # (H, c) a value per row ...
    cells: Callable[[Chunk], Cells] | None = None  # ... or the weight on these cells (all within `rows`)
    top_cell: bool = False  # a row metric whose row's largest weight is where it happens (confidence)
    optional: bool = False  # None (not 0) when no row of a text counts
    summary: bool = False  # in the one-line summary of a head under the grid
    probe: Callable[[Loaded], torch.Tensor] | None = None  # (L, H): a probe metric's scores

    @property
    def has_where(self) -> bool:
        """Whether a text has a cell where the head does this most (a corpus example marks it)."""
        return self.cells is not None or self.top_cell


def _inverse_log_visible(r: RowStats) -> torch.Tensor:
    v = r.chunk.visible
    return torch.where(v > 1, 1 / torch.log(v).clamp_min(metrics.EPS), 0.0)


def _prefix(c: Chunk) -> Cells:
    """The induction target on the text itself: the key after each earlier copy of the query's token."""
    dup = c.duplicate
    shifted = torch.nn.functional.pad(dup[:, :-1], (1, 0)) if dup.shape[1] else dup  # key j + 1 ≤ q: causal
    return metrics.match_cells(shifted)


def _at(c: Chunk, rows: torch.Tensor, keys: torch.Tensor) -> Cells:
    return rows - c.start, keys


METRICS: list[HeadMetric] = [
    HeadMetric(
        "entropy",
        "entropy",
        "mean attention entropy over query positions, nats",
        0.0,
        None,
        True,
        rows=lambda c: c.all_rows,
        row=lambda r: r.entropy,
        summary=True,
    ),
    HeadMetric(
        "entropy_ratio",
        "entropy ratio",
        "mean entropy / ln(number of visible keys); 1 = uniform",
        0.0,
        1.0,
        True,
        rows=lambda c: c.after_first,
        row=lambda r: r.entropy * _inverse_log_visible(r),
    ),
    HeadMetric(
        "confidence",
        "confidence",
        "mean of each row's largest weight (Voita et al. 2019)",
        0.0,
        1.0,
        True,
        rows=lambda c: c.all_rows,
        row=lambda r: r.top,
        top_cell=True,
    ),
    HeadMetric(
        "previous_token",
        "previous-token",
        "mean weight on the previous token",
        0.0,
        1.0,
        True,
        rows=lambda c: c.after_first,
        cells=lambda c: _at(c, c.q[c.after_first], c.q[c.after_first] - 1),
        summary=True,
    ),
    HeadMetric(
        "self",
        "self",
        "mean weight on the query's own position",
        0.0,
        1.0,
        True,
        rows=lambda c: c.all_rows,
        cells=lambda c: _at(c, c.q, c.q),
    ),
    HeadMetric(
        "first_token",
        "first-token (sink)",
        "mean weight on the first token (attention sink)",
        0.0,
        1.0,
        True,
        rows=lambda c: c.all_rows,
        cells=lambda c: _at(c, c.q, torch.zeros_like(c.q)),
        summary=True,
    ),
    HeadMetric(
        "duplicate_token",
        "duplicate-token",
        "mean weight on earlier copies of the query's token (None if no token repeats)",
        0.0,
        1.0,
        True,
        rows=lambda c: c.repeated,
        cells=lambda c: metrics.match_cells(c.duplicate),
        optional=True,
    ),
    HeadMetric(
        "induction",
        "induction (probe)",
        f"Olsson et al. (2022) prefix matching measured on the model's own probe ({probe.PROBE_BATCH} sequences "
        f"of {probe.PROBE_LENGTH} random tokens, each repeated twice), not on the text: the same for every text",
        0.0,
        1.0,
        True,
        on="probe",
        probe=probe.induction_scores,
        summary=True,
    ),
    HeadMetric(
        "text_induction",
        "induction (this text)",
        "prefix matching on the text itself: mean weight from a token to the token after each earlier "
        "occurrence of it (None if no token repeats)",
        0.0,
        1.0,
        True,
        rows=lambda c: c.repeated,
        cells=_prefix,
        optional=True,
    ),
]


def text_metrics() -> list[HeadMetric]:
    """The metrics measured on a text (what head_stats computes and corpus jobs keep), in registry order."""
    return [m for m in METRICS if m.on == "text"]


def metric(name: str) -> HeadMetric:
    """The registry entry called `name` (KeyError if none)."""
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(name)


# -- head similarity ---------------------------------------------------------------------------------

SimilarityName = Literal["js", "cosine"]  # the names below, as a type (a test keeps the two the same)


@dataclass(frozen=True)
class SimilarityMeasure:
    """One way to compare two heads' maps on the same text."""

    name: str
    label: str
    definition: str
    low: float
    high: float
    higher_is_alike: bool


SIMILARITY: tuple[SimilarityMeasure, ...] = (
    SimilarityMeasure(
        "js",
        "Jensen–Shannon divergence",
        "Jensen–Shannon divergence between the two heads' rows, nats, averaged over query rows (0 = identical)",
        0.0,
        0.6931471805599453,  # ln 2
        False,
    ),
    SimilarityMeasure("cosine", "cosine similarity", "cosine similarity of the flattened maps", 0.0, 1.0, True),
)
SIMILARITY_NAMES: tuple[SimilarityName, ...] = get_args(SimilarityName)
