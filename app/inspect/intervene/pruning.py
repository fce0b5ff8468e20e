"""The pruning curve (Michel et al. 2019, Voita et al. 2019): the loss as heads are zero-ablated one order at a time.

An order lists every head: least to most important by gradient importance, or a seeded random permutation.
Point k of a curve switches off the first n_pruned[k] heads of the order. Every set of heads is one row of
the engine (app.inspect.engine.rows): a gate row, run from the first block it switches off on the run's cached
residual stream. The loss is the mean next-token loss. What crosses the boundary: `Curve`, and generators that
yield `Progress` between forwards (the model worker serves other requests there; nothing is hooked then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from app.inspect.engine import runs
from app.inspect.engine.memo import Key
from app.inspect.engine.nexttoken import Scratch, next_token
from app.inspect.engine.rows import Base, gated, run_rows
from app.inspect.engine.runs import Run, analyse
from app.inspect.engine.steps import Progress, Steps
from app.inspect.intervene.importance import gradient_importance
from app.inspect.model.loaded import Loaded

Order = Literal["importance", "random"]
Head = tuple[int, int]  # (layer, head)
HeadSet = frozenset[Head]
RISE = 0.1  # nats: the loss increase that marks how many heads can go
MEMO = Key[dict[HeadSet, float]]("pruned_losses")  # heads switched off → loss: a second curve reuses rows
GRADIENT_IMPORTANCE = Key[torch.Tensor]("gradient_importance")  # (n_layers, n_heads)


@dataclass(frozen=True)
class Threshold:
    """Along one order: the largest n_pruned before the loss first exceeds the first point's loss + rise.

    `exact`: the next head already crosses (bisected between the curve's points, or adjacent points);
    otherwise the crossing lies somewhere before the next point of the curve.
    """

    n_pruned: int
    loss: float
    exact: bool


@dataclass
class Curve:
    """A pruning curve over one or more orders (importance: one; random: one per seed)."""

    order: Order
    n_pruned: list[int]  # per point; first 0, last every head
    losses: torch.Tensor  # (n_orders, n_points) float64, nats
    orders: list[list[Head]]  # per order, every head, first switched off first
    thresholds: list[Threshold]  # per order
    seeds: list[int]  # random: each order's seed
    n_texts: int = 1
    forwards: float = 0.0  # blocks run / n_layers, summed over rows: the cost in forward-equivalents
    scores: torch.Tensor | None = field(default=None, repr=False)  # importance: (n_layers, n_heads) used

    @property
    def band(self) -> tuple[list[float], list[float], list[float]]:
        """Per point: the mean, min and max loss over the orders (for one order, all three are its loss)."""
        return self.losses.mean(0).tolist(), self.losses.min(0).values.tolist(), self.losses.max(0).values.tolist()

    @property
    def mean_threshold(self) -> float:
        """Heads that can go before the loss rises by `rise`, averaged over the orders."""
        return sum(t.n_pruned for t in self.thresholds) / len(self.thresholds)


def prune_counts(n_heads: int, steps: int) -> list[int]:
    """`steps` numbers of heads from 0 to n_heads, evenly spaced and rounded (fewer when n_heads is small)."""
    counts = torch.linspace(0, n_heads, max(steps, 2), dtype=torch.float64).round().long().tolist()
    return sorted(set(counts))


def importance_order(scores: torch.Tensor) -> list[Head]:
    """Every head, least important first: scores (n_layers, n_heads) ascending, ties in (layer, head) order."""
    n_heads = scores.shape[1]
    flat = torch.argsort(scores.flatten().double(), stable=True).tolist()
    return [(i // n_heads, i % n_heads) for i in flat]


def random_order(n_layers: int, n_heads: int, seed: int) -> list[Head]:
    """A permutation of every head from torch.randperm with its own generator: the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return [(i // n_heads, i % n_heads) for i in torch.randperm(n_layers * n_heads, generator=gen).tolist()]


class Pruner:
    """Losses of one token sequence with sets of heads zero-ablated; each set is computed once (memo)."""

    def __init__(self, loaded: Loaded, run: Run, memo: dict[HeadSet, float] | None = None) -> None:
        self.loaded = loaded
        self.run = run
        self.memo: dict[HeadSet, float] = {} if memo is None else memo
        self.blocks = 0  # blocks run over all rows (cost)
        self.scratch = Scratch()  # one logits buffer for every batched forward
        with torch.inference_mode():
            self.targets = torch.tensor(run.token_ids[1:], device=loaded.device)
            self.base = Base.of_ids(loaded, run.token_ids, runs.layer_inputs(loaded, run))
            if frozenset() not in self.memo:  # the unchanged model: its cached final hidden state, no forward
                self.memo[frozenset()] = float(self._loss(run.hidden[None])[0])

    def _loss(self, hidden: torch.Tensor) -> torch.Tensor:
        """The mean next-token loss of each row of (B, T, d) final hidden states: (B,)."""
        return next_token(self.loaded.adapter.lm_head(), hidden, self.targets, scratch=self.scratch).loss

    def losses(self, sets: Sequence[HeadSet]) -> Steps[Progress, list[float]]:
        """The mean next-token loss with each set of heads off; yields before every batched forward."""
        todo = list(dict.fromkeys(s for s in sets if s not in self.memo))
        found = yield from run_rows(
            self.loaded,
            self.base,
            todo,
            start=first_layer,
            install=gated(self.loaded, sorted),
            read=lambda hidden, batch: self._loss(hidden).double().cpu().tolist(),
        )
        self.memo.update(zip(todo, found, strict=True))
        self.blocks += sum(self.loaded.adapter.layout.n_layers - first_layer(heads) for heads in todo)
        return [self.memo[s] for s in sets]


def first_layer(heads: HeadSet) -> int:
    """The first block a set of heads changes."""
    return min(layer for layer, _ in heads)


def thresholds(counts: list[int], losses: torch.Tensor, rise: float) -> list[tuple[int, int | None]]:
    """Per order (row of losses (n_orders, n_points)): (index of the last point before the loss first exceeds
    the first point's + rise, index of that first point over or None)."""
    out = []
    for row in losses.tolist():
        over = next((i for i, loss in enumerate(row) if loss > row[0] + rise), None)
        out.append((len(counts) - 1 if over is None else over - 1, over))
    return out


Evaluate = Callable[[list[HeadSet]], Steps[Progress, list[float]]]


def _bisect(
    evaluate: Evaluate, orders: list[list[Head]], bounds: list[tuple[int, int]], limit: float
) -> Steps[Progress, list[int]]:
    """Per order, a count n in [lo, hi) with loss(n) ≤ limit < loss(n + 1), given loss(lo) ≤ limit < loss(hi).

    All orders step together: one batched forward per step holds a row per order still open.
    """
    lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
    while any(h - low > 1 for low, h in zip(lo, hi, strict=True)):
        mids = {k: (lo[k] + hi[k]) // 2 for k in range(len(orders)) if hi[k] - lo[k] > 1}
        found = yield from evaluate([frozenset(orders[k][:m]) for k, m in mids.items()])
        for (k, m), loss in zip(mids.items(), found, strict=True):
            lo[k], hi[k] = (m, hi[k]) if loss <= limit else (lo[k], m)
    return lo


def _orders(loaded: Loaded, order: Order, scores: torch.Tensor | None, seeds: list[int]) -> list[list[Head]]:
    layout = loaded.adapter.layout
    if order == "importance":
        assert scores is not None
        return [importance_order(scores)]
    return [random_order(layout.n_layers, layout.n_heads, s) for s in seeds]


def _curve(
    loaded: Loaded,
    evaluate: Evaluate,
    order: Order,
    scores: torch.Tensor | None,
    steps: int,
    seeds: list[int],
    rise: float,
    refine: bool,
) -> Steps[Progress, Curve]:
    """Every point of every order (one batch of sets), then each order's threshold (bisected when `refine`)."""
    layout = loaded.adapter.layout
    counts = prune_counts(layout.n_layers * layout.n_heads, steps)
    orders = _orders(loaded, order, scores, seeds)
    flat = yield from evaluate([frozenset(o[:n]) for o in orders for n in counts])
    losses = torch.tensor(flat, dtype=torch.float64).view(len(orders), len(counts))  # (n_orders, n_points)
    limit = float(losses[0, 0]) + rise  # the first point is the unchanged model in every order
    found: list[Threshold] = []
    for row in losses.tolist():
        over = next((i for i, loss in enumerate(row) if loss > limit), None)
        last = len(counts) - 1 if over is None else over - 1
        exact = over is None or counts[over] - counts[last] == 1
        found.append(Threshold(counts[last], row[last], exact))
    if refine:
        wide = [k for k, t in enumerate(found) if not t.exact]
        bounds = [(found[k].n_pruned, counts[counts.index(found[k].n_pruned) + 1]) for k in wide]
        cut = yield from _bisect(evaluate, [orders[k] for k in wide], bounds, limit)
        cut_losses = yield from evaluate([frozenset(orders[k][:n]) for k, n in zip(wide, cut, strict=True)])
        for k, n, loss in zip(wide, cut, cut_losses, strict=True):  # memoised: no forward
            found[k] = Threshold(n, loss, True)
    return Curve(
        order=order,
        n_pruned=counts,
        losses=losses,
        orders=orders,
        thresholds=found,
        seeds=seeds if order == "random" else [],
        scores=scores,
    )


def text_curve(
    loaded: Loaded,
    run: Run,
    order: Order,
    steps: int = 10,
    seeds: Sequence[int] = range(5),
    rise: float = RISE,
    refine: bool = False,
) -> Steps[Progress, Curve]:
    """The pruning curve of one text (its cached run); losses are memoised on the run for later curves.

    Args:
        loaded: the model.
        run: the text's run (app.inspect.engine.runs.analyse); needs at least 2 tokens.
        order: "importance" (ascending gradient importance on this text) or "random" (one order per seed).
        steps: points on the curve, from 0 heads off to every head off.
        seeds: random orders' seeds.
        rise: the loss increase over the first point that marks each order's threshold.
        refine: bisect each threshold to one head (a forward per step) instead of the curve's resolution.
    """
    scores = None
    if order == "importance":
        yield Progress(0, 0)
        scores = run.memo.get(GRADIENT_IMPORTANCE)
        if scores is None:
            scores = run.memo.put(GRADIENT_IMPORTANCE, gradient_importance(loaded, run.token_ids))
    memo = run.memo.get(MEMO)
    pruner = Pruner(loaded, run, memo if memo is not None else run.memo.put(MEMO, {}))
    curve = yield from _curve(loaded, pruner.losses, order, scores, steps, list(seeds), rise, refine)
    curve.forwards = pruner.blocks / loaded.adapter.layout.n_layers
    return curve


def dataset_curve(
    loaded: Loaded,
    token_lists: list[list[int]],
    order: Order,
    steps: int = 10,
    seeds: Sequence[int] = range(5),
    rise: float = RISE,
) -> Steps[Progress, Curve]:
    """The pruning curve of a set of texts: importance and loss are means over the texts (each ≥ 2 tokens).

    Importance is each text's gradient importance averaged over the texts (a corpus job's `importance`
    mean); a point's loss is the mean over texts of each text's mean next-token loss. Texts are analysed
    one at a time and dropped after their rows, so memory holds one text's residual stream. Thresholds
    are at the curve's resolution (bisecting would analyse every text again per step).
    """
    if not token_lists or any(len(ids) < 2 for ids in token_lists):
        raise ValueError("every text needs at least 2 tokens")
    layout = loaded.adapter.layout
    scores = None
    if order == "importance":
        total = torch.zeros(layout.n_layers, layout.n_heads)
        for i, ids in enumerate(token_lists):
            yield Progress(i, len(token_lists))
            total += gradient_importance(loaded, ids)
        scores = total / len(token_lists)
    blocks = 0

    def mean_losses(sets: list[HeadSet]) -> Steps[Progress, list[float]]:
        nonlocal blocks
        total = torch.zeros(len(sets), dtype=torch.float64)
        for ids in token_lists:
            yield Progress(0, len(sets))
            pruner = Pruner(loaded, analyse(loaded, "", token_ids=ids))
            found = yield from pruner.losses(sets)
            total += torch.tensor(found, dtype=torch.float64)
            blocks += pruner.blocks
        return (total / len(token_lists)).tolist()

    curve = yield from _curve(loaded, mean_losses, order, scores, steps, list(seeds), rise, refine=False)
    curve.n_texts = len(token_lists)
    curve.forwards = blocks / layout.n_layers
    return curve
