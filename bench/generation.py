"""Generation rows (issue 12): greedy continuations by generation.steps against transformers' `generate`
(SDPA, the same model and weights) timed in the same run."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.inspect.engine.steps import drain
from app.inspect.intervene import generation
from app.inspect.model.loaded import Loaded
from bench import inputs, models
from bench.report import Row, seconds
from bench.timing import interleaved

PROMPT_TOKENS = 32
NEW_TOKENS = 64


def heads(loaded: Loaded) -> list[tuple[int, int]]:
    """The README's France heads (L23H4, L0H4) where the model has them, else the last and first layer's head 0."""
    layout = loaded.adapter.layout
    if layout.n_layers > 23 and layout.n_heads > 4:
        return [(23, 4), (0, 4)]
    return [(layout.n_layers - 1, 0), (0, 0)]


def rows(loaded: Loaded, reps: int) -> list[Callable[[], list[Row]]]:
    """64 greedy tokens after a 32-token prompt: without ablation, and baseline + ablated as one batch of two."""

    def measure() -> list[Row]:
        ids = inputs.token_ids(loaded.tokenizer, PROMPT_TOKENS)
        x = models.input_ids(loaded, ids)
        never: frozenset[int] = frozenset()  # both sides make all 64 tokens

        @torch.inference_mode()
        def reference() -> None:
            with models.attention(loaded, "sdpa"):
                out = loaded.model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS

        def one() -> None:
            drain(generation.steps(loaded, ids, NEW_TOKENS, stop_ids=never))

        def both() -> None:
            drain(generation.steps(loaded, ids, NEW_TOKENS, heads(loaded), stop_ids=never))

        med = interleaved({"generate": reference, "one": one, "both": both}, reps, loaded.device)
        ref = f"transformers generate (SDPA, greedy) {seconds(med['generate'])}"
        return [
            Row(
                what=f"{NEW_TOKENS} greedy tokens after {PROMPT_TOKENS} (generation.steps, KV cache, no ablation)",
                measured=seconds(med["one"]),
                baseline=ref,
                ratio=med["one"] / med["generate"],
                target="≤ 1.1×",
                passed=med["one"] / med["generate"] <= 1.1,
            ),
            Row(
                what=f"{NEW_TOKENS} greedy tokens, baseline + ablated together (one batch of two, 2 heads off)",
                measured=seconds(med["both"]),
                baseline=ref,
                ratio=med["both"] / med["generate"],
                target="≤ 1.4×",
                passed=med["both"] / med["generate"] <= 1.4,
            ),
        ]

    return [measure]
