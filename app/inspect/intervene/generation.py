"""Continuation of a text by the unchanged model and by the model with heads switched off, as one batch.

Row 0 is the unchanged model (gates all 1); row 1, when heads are given, has them off: "zero" removes a
head's output, "mean" replaces it by the head's mean output over the PROMPT's positions (the cached run's
`head_means`), the same vector at every generated step. Both rows share one forward per step with the KV
cache on, and the head gates apply at every step. Sampling draws one uniform number per step for both
rows and picks by inverse CDF over the vocabulary in id order, so the rows part only where the heads
change the distribution. `steps()` yields one Step per token, so a caller can stream them and run the
work in slices between other requests (the gates are removed before each yield).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from app.inspect.engine.gates import Mode, gate_tensor, head_gates
from app.inspect.model.loaded import Loaded

Head = tuple[int, int]
Stop = Literal["eos", "length"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (temperature 0) or seeded temperature / top-p sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Step:
    """One generated position: per row the new token and its log-prob, None for a row that has stopped."""

    index: int
    token_ids: list[int | None]
    logprobs: list[float | None]


@dataclass
class Continuation:
    """What one row generated, the end-of-text token included when it stopped there."""

    token_ids: list[int]
    logprobs: list[float]  # log p of each token under the model's own distribution (before temperature, top-p)
    stop: Stop


def eos_ids(loaded: Loaded) -> frozenset[int]:
    """The end-of-text ids `generate` stops at: the generation config's, else the tokenizer's."""
    config = getattr(loaded.model, "generation_config", None)
    found: Any = getattr(config, "eos_token_id", None)
    if found is None:
        found = loaded.tokenizer.eos_token_id
    if found is None:
        return frozenset()
    return frozenset([found] if isinstance(found, int) else found)


def choose(logits: torch.Tensor, sampling: Sampling, u: float | None) -> torch.Tensor:
    """The next token of each row: logits (B, V) float32 → ids (B,).

    Greedy: the argmax. Sampling: softmax(logits / temperature), cut to the nucleus (the most probable
    tokens whose mass first reaches top_p), then the first token in id order whose cumulative mass exceeds
    u · (the nucleus' mass). The same u for every row couples them: equal distributions give equal tokens.
    """
    if sampling.greedy:
        return logits.argmax(dim=-1)
    assert u is not None
    # the top logit moved to 0 first, so a tiny temperature gives 0 and −inf (greedy), never inf − inf
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / sampling.temperature, dim=-1)  # (B, V)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the more probable tokens
        keep_sorted = before < sampling.top_p  # always keeps the most probable token
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = u * cdf[:, -1:]  # (B, 1)
    picked = torch.searchsorted(cdf, target, right=True)[:, 0]
    return picked.clamp_max(logits.shape[-1] - 1)


@torch.inference_mode()
def steps(
    loaded: Loaded,
    prompt_ids: list[int],
    max_new_tokens: int,
    heads: Sequence[Head] = (),
    mode: Mode = "zero",
    head_means: dict[int, torch.Tensor] | None = None,
    sampling: Sampling = Sampling(),
    stop_ids: frozenset[int] | None = None,
) -> Generator[Step, None, list[Continuation]]:
    """Generate up to `max_new_tokens` per row, one Step per position; returns each row's Continuation.

    Args:
        loaded: the model.
        prompt_ids: the prompt's token ids.
        max_new_tokens: the most tokens a row generates; a row also stops at an end-of-text token.
        heads: (layer, head) pairs switched off in row 1; no heads means a single row.
        mode: "zero" or "mean" ablation.
        head_means: per layer (n_heads * head_dim,), the prompt's mean head outputs (for mode="mean").
        sampling: greedy, or temperature / top-p with a seed.
        stop_ids: the end-of-text ids (default: the model's, as `generate` uses; empty: never stop early).
    """
    layout = loaded.adapter.layout
    rows = 2 if heads else 1
    gates = gate_tensor(rows, layout.n_layers, layout.n_heads, [[], list(heads)][:rows], device=loaded.device)
    if not heads:
        mode = "zero"  # one row, all gates 1: no means needed
    if stop_ids is None:
        stop_ids = eos_ids(loaded)
    rng = torch.Generator().manual_seed(sampling.seed)
    inputs = torch.tensor([prompt_ids] * rows, device=loaded.device)  # (B, T) on the first step, then (B, 1)
    cache: Any = None
    ids: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    stopped: list[Stop | None] = [None] * rows
    for index in range(max_new_tokens):
        with head_gates(loaded.adapter, gates, mode, head_means):
            out = loaded.adapter.backbone()(input_ids=inputs, cache=cache, use_cache=True)
        cache = out.cache
        logits = next_logits(loaded.adapter.lm_head(), out.last_hidden_state[:, -1]).float()  # (B, V)
        u = None if sampling.greedy else float(torch.rand((), generator=rng))
        picked = choose(logits, sampling, u)  # (B,)
        picked_logp = torch.log_softmax(logits, dim=-1).gather(1, picked[:, None])[:, 0]  # (B,)
        step_ids: list[int | None] = []
        step_logp: list[float | None] = []
        for row, (token, logp) in enumerate(zip(picked.tolist(), picked_logp.tolist(), strict=True)):
            if stopped[row] is not None:
                step_ids.append(None)
                step_logp.append(None)
                continue
            ids[row].append(token)
            logprobs[row].append(logp)
            step_ids.append(token)
            step_logp.append(logp)
            if token in stop_ids:
                stopped[row] = "eos"
        yield Step(index, step_ids, step_logp)
        if all(s is not None for s in stopped):
            break
        inputs = picked[:, None]  # a stopped row keeps decoding in step, unread: the batch stays rectangular
    return [Continuation(ids[r], logprobs[r], stopped[r] or "length") for r in range(rows)]


def next_logits(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) of the last positions' hidden states (B, d).

    One row: the LM head itself, as `generate` computes it. Two rows: the same product written W·hᵀ, which
    reads the vocabulary matrix once; PyTorch's CPU linear for 2 rows takes about 2.5× the time of one
    (measured on the default model's 49k × 576 head), which alone would make the ablated row cost more than
    the rest of its forward.
    """
    if hidden.shape[0] == 1 or not isinstance(lm_head, nn.Linear):
        logits: torch.Tensor = lm_head(hidden)
        return logits
    logits = (lm_head.weight @ hidden.T).T
    return logits if lm_head.bias is None else logits + lm_head.bias


def continuation_text(tokenizer: Any, prompt_ids: list[int], ids: list[int], eos: frozenset[int]) -> str:
    """The text the continuation adds to the prompt (a final end-of-text token left out).

    Decoded together with the prompt, so a character split across the boundary comes out whole.
    """
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    head: str = tokenizer.decode(prompt_ids, clean_up_tokenization_spaces=False)
    full: str = tokenizer.decode(prompt_ids + ids, clean_up_tokenization_spaces=False)
    if full.startswith(head):
        return full[len(head) :]
    tail: str = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    return tail


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two continuations differ (one ending early counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
