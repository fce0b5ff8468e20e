"""Head-importance rows: the exact single-head ablation sweep and gradient importance, vs plain forwards."""

from __future__ import annotations

from app.inspect.engine.runs import analyse
from app.inspect.intervene.ablation import ablate
from app.inspect.intervene.importance import ablation_sweep, gradient_importance
from app.inspect.model.loaded import Loaded
from bench import flops, inputs, models
from bench.report import Row, seconds
from bench.timing import interleaved, timed


def sweep_row(loaded: Loaded, n: int, reps: int, loop_sample: int | None = None, target: float = 0.3) -> Row:
    """ablation_sweep over every head vs every head ablated one ablate() call at a time, and vs as many forwards.

    Args:
        loop_sample: time the two loops over this many heads and scale up (quick runs only; None = all heads).
    """
    layout = loaded.adapter.layout
    ids = inputs.token_ids(loaded.tokenizer, n)
    x = models.input_ids(loaded, ids)
    run = analyse(loaded, "", token_ids=ids)
    heads = [(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads)]
    looped = heads if loop_sample is None else heads[:: max(len(heads) // loop_sample, 1)]
    scale = len(heads) / len(looped)

    def one_at_a_time() -> None:
        for head in looped:
            ablate(loaded, run, [head], "zero", 10)

    def plain_forwards() -> None:
        for _ in looped:
            models.plain_full(loaded, x)

    if loaded.device.type == "cuda":  # CPU needs no warm-up: the forwards above already ran these kernels
        ablation_sweep(loaded, run)
    sweep = interleaved({"sweep": lambda: ablation_sweep(loaded, run)}, reps, loaded.device, warmup=0)["sweep"]
    models.plain_full(loaded, x)
    plain = timed(plain_forwards, loaded.device) * scale
    loop = timed(one_at_a_time, loaded.device) * scale
    est = "" if loop_sample is None else f" (estimated from {len(looped)})"
    k = len(heads)
    return Row(
        what=f"exact sweep of all {k} single-head ablations (ablation_sweep), {n} tokens",
        measured=seconds(sweep),
        baseline=f"{k} plain SDPA forwards with logits {seconds(plain)}{est}",
        ratio=sweep / plain,
        target=f"≤ {target}× {k} forwards",
        passed=sweep / plain <= target,
        beside=f"one-at-a-time loop of {k} ablate() calls: {seconds(loop)}{est} (sweep is {sweep / loop:.2f}× of it); "
        f"work floor {flops.every_head_from_its_block(loaded, n, lm_head=True):.2f}× (multiply-adds of each head's "
        "run from its block on, LM head at every position, over the forwards')",
    )


def gradient_row(loaded: Loaded, n: int, reps: int, target: float = 3.0) -> Row:
    ids = inputs.token_ids(loaded.tokenizer, n)
    x = models.input_ids(loaded, ids)
    med = interleaved(
        {"plain": lambda: models.plain_full(loaded, x), "grad": lambda: gradient_importance(loaded, ids)},
        reps,
        loaded.device,
    )
    r = med["grad"] / med["plain"]
    return Row(
        what=f"gradient importance (one forward + backward), {n} tokens",
        measured=seconds(med["grad"]),
        baseline=f"plain SDPA forward with logits {seconds(med['plain'])}",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
    )
