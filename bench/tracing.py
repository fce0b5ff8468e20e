"""Causal-tracing rows (issue 10): every head patched, DLA, one position's logit lens and the full lens grid,
each against plain forwards with logits timed in the same process."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.inspect.engine.runs import Run, analyse
from app.inspect.intervene import patching
from app.inspect.model.loaded import Loaded
from app.inspect.observe import dla, lens
from bench import flops, inputs, models
from bench.report import Row, seconds
from bench.timing import interleaved


def prompts(loaded: Loaded, n: int) -> tuple[Run, Run, int, int]:
    """Clean = n tokens of the prose; corrupted = the same with the middle token replaced; answer/wrong = the
    clean run's top two next tokens (so the two logit differences differ)."""
    ids = inputs.token_ids(loaded.tokenizer, n)
    swapped = list(ids)
    swapped[n // 2] = ids[n // 2 - 1] if ids[n // 2 - 1] != ids[n // 2] else ids[0]
    clean, corrupted = analyse(loaded, "", token_ids=ids), analyse(loaded, "", token_ids=swapped)
    top = torch.topk(lens.final_logits(loaded, clean, n - 1), 2).indices.tolist()
    return clean, corrupted, top[0], top[1]


def patch_row(loaded: Loaded, n: int, reps: int, target: float = 0.35) -> Row:
    """patching.patch over every head (head outputs captured afresh each time) vs as many plain forwards."""
    layout = loaded.adapter.layout
    k = layout.n_layers * layout.n_heads
    clean, corrupted, answer, wrong = prompts(loaded, n)
    x = models.input_ids(loaded, clean.token_ids)

    def sweep() -> None:
        clean.memo.pop(patching.HEAD_OUTPUTS)  # count the capture forward too
        patching.patch(loaded, clean, corrupted, n - 1, answer, wrong)

    if loaded.device.type == "cuda":
        sweep()
    took = interleaved({"patch": sweep}, reps, loaded.device, warmup=0)["patch"]
    forward = interleaved({"plain": lambda: models.plain_full(loaded, x)}, max(reps, 3), loaded.device)["plain"]
    plain = forward * k
    return Row(
        what=f"activation patching of all {k} heads (patch, denoise, clean diff cached), {n} tokens",
        measured=seconds(took),
        baseline=f"{k} plain SDPA forwards with logits {seconds(plain)} (median forward × {k})",
        ratio=took / plain,
        target=f"≤ {target}× {k} forwards",
        passed=took / plain <= target,
        beside=f"work floor {flops.every_head_from_its_block(loaded, n, lm_head=False):.2f}× (multiply-adds of each "
        "head's run from its block on, over the forwards')",
    )


def against_forward(
    loaded: Loaded, n: int, reps: int, what: str, fn: Callable[[Run], object], target: float, floor: str = ""
) -> Row:
    """A computation on an analysed text of n tokens vs one plain forward with logits (`floor`: its work floor)."""
    ids = inputs.token_ids(loaded.tokenizer, n)
    run = analyse(loaded, "", token_ids=ids)
    x = models.input_ids(loaded, ids)
    med = interleaved(
        {"plain": lambda: models.plain_full(loaded, x), "it": lambda: fn(run)},
        reps,
        loaded.device,
    )
    r = med["it"] / med["plain"]
    return Row(
        what=f"{what}, {n} tokens",
        measured=seconds(med["it"]),
        baseline=f"plain SDPA forward with logits {seconds(med['plain'])}",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
        beside=floor,
    )


def rows(loaded: Loaded, reps: int) -> list[Callable[[], Row]]:
    """The tracing rows, as steps for bench.__main__ (each builds its inputs when it runs)."""
    n = 512

    def top1(run: Run) -> int:
        return int(lens.final_logits(loaded, run, n - 1).argmax())

    return [
        lambda: patch_row(loaded, 64, reps),
        lambda: patch_row(loaded, 512, 1),
        lambda: against_forward(
            loaded,
            n,
            reps,
            "direct logit attribution (dla.attribute) of the top-1 at the last position",
            lambda run: dla.attribute(loaded, run, n - 1, top1(run)),
            0.1,
        ),
        lambda: against_forward(
            loaded,
            n,
            reps,
            "logit lens at one position (lens.lens, top 5)",
            lambda run: lens.lens(loaded, run, n - 1, top1(run), 5),
            0.05,
        ),
        lambda: against_forward(
            loaded,
            n,
            max(reps // 2, 1),
            "full logit-lens grid (lens.grid)",
            lambda run: lens.grid(loaded, run),
            1.5,
            f"work floor {flops.lens_grid(loaded, n):.2f}× (multiply-adds of the LM head at every block and position, "
            "over the forward's)",
        ),
    ]
