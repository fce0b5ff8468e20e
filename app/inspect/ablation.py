"""Head ablation: one gated forward against the cached baseline run, and the batched single-head sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.inspect import capture
from app.inspect.gates import Mode, gate_tensor, head_gates
from app.inspect.loading import Loaded
from app.inspect.resume import starting_at
from app.inspect.runs import LOGIT_CHUNK, Prediction, Run, baseline_logprobs, summarise, target_logprobs

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
    """Baseline (the run's hidden state) vs ablated (T, d) hidden states, in one pass over LM-head chunks."""
    lm_head = loaded.adapter.lm_head()
    picked_base: list[torch.Tensor] = []
    picked_abl: list[torch.Tensor] = []
    kl: list[torch.Tensor] = []
    starts = range(0, run.n_tokens, LOGIT_CHUNK)
    base = abl = torch.empty(0)
    for start, base in zip(starts, baseline_logprobs(lm_head, run), strict=True):
        abl = torch.log_softmax(lm_head(ablated_hidden[start : start + LOGIT_CHUNK]).float(), dim=-1)  # (c, V)
        kl.append((base.exp() * (base - abl)).sum(-1).clamp_min(0.0))
        picked_base.append(target_logprobs(base, run.token_ids, start))
        picked_abl.append(target_logprobs(abl, run.token_ids, start))
    return Comparison(
        baseline=summarise(picked_base, base[-1], k),
        ablated=summarise(picked_abl, abl[-1], k),
        kl_per_position=torch.cat(kl).tolist(),
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
