"""Head ablation: one gated forward against the cached baseline run, and the batched single-head sweep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from app.inspect.engine.gates import Mode
from app.inspect.engine.nexttoken import next_token
from app.inspect.engine.rows import Base, Batch, gated, run_rows
from app.inspect.engine.runs import Prediction, Run, baseline, baseline_chunks, summarise, targets
from app.inspect.engine.steps import drain
from app.inspect.model import capture
from app.inspect.model.capture import LayerQK
from app.inspect.model.loaded import Loaded

Head = tuple[int, int]


@dataclass
class Comparison:
    """Baseline vs ablated predictions along one text."""

    baseline: Prediction
    ablated: Prediction
    kl_per_position: list[float]  # KL(baseline ‖ ablated) of the next-token distribution, nats, length T
    maps: dict[Head, torch.Tensor]  # requested heads' maps under the ablation, (T, T) each

    @property
    def kl_last(self) -> float:
        return self.kl_per_position[-1]

    @property
    def delta_loss(self) -> float | None:
        if self.baseline.loss is None or self.ablated.loss is None:
            return None
        return self.ablated.loss - self.baseline.loss


@torch.inference_mode()
def compare(
    loaded: Loaded, run: Run, ablated_hidden: torch.Tensor, k: int, maps: dict[Head, torch.Tensor] | None = None
) -> Comparison:
    """Baseline (the run's statistics, cached on it) vs ablated (T, d) hidden states: one LM-head pass."""
    lm_head = loaded.adapter.lm_head()
    base = baseline(lm_head, run)
    abl = next_token(lm_head, ablated_hidden[None], targets(run), reference=baseline_chunks(lm_head, run))
    assert abl.kl is not None
    return Comparison(
        baseline=summarise(base.stats, k),
        ablated=summarise(abl, k),
        kl_per_position=abl.kl[0].tolist(),
        maps=maps or {},
    )


@torch.inference_mode()
def ablate(
    loaded: Loaded,
    run: Run,
    heads: list[Head],
    mode: Mode = "zero",
    k: int = 10,
    map_heads: list[Head] | None = None,
) -> Comparison:
    """Switch `heads` off in one forward and compare with the cached baseline run.

    Args:
        loaded: the model.
        run: the baseline run of the text (from the run cache).
        heads: (layer, head) pairs to ablate.
        mode: "zero" or "mean" (the head's mean output over the text's positions).
        k: size of the next-token top-k.
        map_heads: heads whose maps under the ablation to return.
    """
    layout = loaded.adapter.layout
    want = frozenset(layer for layer, _ in map_heads or [])
    # Nothing before the first switched-off head changes (nor any map asked for there): start at that block.
    first = min([layer for layer, _ in heads] + [layer for layer, _ in map_heads or []], default=0)
    captured: dict[int, LayerQK] = {}
    gates = gated(loaded, _same, mode=mode, means=run.head_means)

    @contextmanager
    def install(batch: Batch[list[Head]]) -> Iterator[None]:
        with capture.recording(layers=want) as rec, gates(batch):
            yield
        captured.update(rec.captured)

    base = Base.of_ids(loaded, run.token_ids, run.layer_inputs)
    start = first if run.layer_inputs else 0
    (hidden,) = drain(run_rows(loaded, base, [heads], lambda _: start, install, lambda hidden, _: [hidden[0]]))
    maps = {
        (layer, head): capture.attention_maps(captured[layer], [head], layout.group_size)[0, 0]
        for layer, head in map_heads or []
    }
    return compare(loaded, run, hidden, k, maps)


def _same(heads: list[Head]) -> list[Head]:
    return heads
