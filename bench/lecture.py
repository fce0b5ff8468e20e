"""Pruning-curve row: a curve of 10 points × (importance + 5 random orders) at 512 tokens vs one plain forward."""

from __future__ import annotations

import statistics

from app.inspect.engine.runs import Run, analyse
from app.inspect.engine.steps import drain
from app.inspect.intervene.pruning import GRADIENT_IMPORTANCE, MEMO, Curve, text_curve
from app.inspect.model.loaded import Loaded
from bench import inputs, models
from bench.report import Row, seconds
from bench.timing import timed


def _both(loaded: Loaded, run: Run, steps: int, seeds: int) -> list[Curve]:
    """The page's two requests on a cached run, from scratch (no memoised rows, no cached gradient)."""
    run.memo.pop(MEMO)
    run.memo.pop(GRADIENT_IMPORTANCE)
    return [
        drain(text_curve(loaded, run, "importance", steps)),
        drain(text_curve(loaded, run, "random", steps, range(seeds))),
    ]


def curve_row(loaded: Loaded, n: int = 512, steps: int = 10, seeds: int = 5, reps: int = 1, target: float = 3.0) -> Row:
    """Both curves (gradient importance included) vs one plain SDPA forward with logits, on the same cached run."""
    ids = inputs.token_ids(loaded.tokenizer, n)
    x = models.input_ids(loaded, ids)
    run = analyse(loaded, "", token_ids=ids)
    models.plain_full(loaded, x)
    curves: list[Curve] = []

    def curve() -> None:
        curves[:] = _both(loaded, run, steps, seeds)

    took = statistics.median(timed(curve, loaded.device) for _ in range(reps))
    plain = statistics.median(timed(lambda: models.plain_full(loaded, x), loaded.device) for _ in range(3))
    blocks = sum(c.forwards for c in curves)
    rows = 1 + seeds
    return Row(
        what=f"pruning curve, {steps} points × (importance + {seeds} random orders), {n} tokens",
        measured=seconds(took),
        baseline=f"plain SDPA forward with logits {seconds(plain)}",
        ratio=took / plain,
        target=f"≤ {target}×",
        passed=took / plain <= target,
        beside=f"{rows}×{steps} points are {blocks:.1f} forwards of decoder blocks after resuming (+ gradient "
        f"importance): {took / max(blocks, 1e-9) / plain:.2f}× a plain forward per forward-equivalent",
    )
