"""Head ablation: one gated forward against the cached baseline run, and the batched single-head sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.inspect import capture
from app.inspect.gates import Mode, gate_tensor, head_gates
from app.inspect.loading import Loaded
from app.inspect.nexttoken import next_token
from app.inspect.resume import starting_at
from app.inspect.runs import Prediction, Run, baseline, baseline_chunks, summarise, targets

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
    gates = gate_tensor(1, layout.n_layers, layout.n_heads, [heads], device=loaded.device)
    want = frozenset(layer for layer, _ in map_heads or [])
    input_ids = torch.tensor([run.token_ids], device=loaded.device)
    # Nothing before the first switched-off head changes (nor any map asked for there): start at that block.
    first = min([layer for layer, _ in heads] + [layer for layer, _ in map_heads or []], default=0)
    start = first if run.layer_inputs else 0
    with (
        capture.recording(layers=want) as rec,
        head_gates(loaded.adapter, gates, mode, run.head_means),
        starting_at(loaded.adapter, start, run.layer_inputs.get(start, run.hidden)),
    ):
        hidden = loaded.adapter.backbone()(input_ids=input_ids, use_cache=False).last_hidden_state[0]
    maps = {
        (layer, head): capture.attention_maps(rec.captured[layer], [head], layout.group_size)[0, 0]
        for layer, head in map_heads or []
    }
    return compare(loaded, run, hidden, k, maps)
