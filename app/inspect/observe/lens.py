"""Logit lens: the residual stream after each block, read through the final norm and the LM head.

The stream after block l is the cached input of block l+1; after the last block it is the run's own
final hidden state, so the last entry is the model's next-token distribution. The stream before block 0
(the embeddings, as block 0 receives them) is read the same way, as TransformerLens's accumulated residual
begins. adapter.lm_head() includes the model's readout (a logit scale, a final soft-cap), so every block is
read as the model reads its last one. No forward runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from app.inspect.engine import runs
from app.inspect.engine.nexttoken import Scratch
from app.inspect.engine.runs import LOGIT_CHUNK, Run
from app.inspect.model.loaded import Loaded


@dataclass
class LensLayer:
    """One block's reading at one position."""

    top_ids: list[int]
    top_probs: list[float]
    target_prob: float
    target_rank: int  # 1-based: 1 + how many tokens have a larger logit
    target_logit: float  # the target's raw logit (after the model's readout scale and soft-cap, if any)


@dataclass
class Grid:
    """Top-1 of every block at every position, each (n_layers, n_tokens)."""

    top_ids: torch.Tensor
    top_probs: torch.Tensor


def normed_after(loaded: Loaded, run: Run, layer: int, rows: slice) -> torch.Tensor:
    """The residual stream after block `layer` at positions `rows`, through the final norm: (t, d_model)."""
    if layer == loaded.adapter.layout.n_layers - 1:
        return run.hidden[rows]
    normed: torch.Tensor = loaded.adapter.final_norm()(run.layer_inputs[layer + 1][0, rows])
    return normed


@torch.inference_mode()
def final_logits(loaded: Loaded, run: Run, position: int) -> torch.Tensor:
    """The model's own next-token logits at `position` (≥ 0): (vocab,), float32."""
    adapter = loaded.adapter
    logits: torch.Tensor = adapter.lm_head()(run.hidden[position : position + 1]).float()[0]
    return logits


@torch.inference_mode()
def lens_logits(loaded: Loaded, run: Run, position: int) -> torch.Tensor:
    """LM-head logits of every block's stream at `position` (≥ 0): (n_layers, vocab), float32."""
    n_layers = loaded.adapter.layout.n_layers
    rows = slice(position, position + 1)
    hidden = torch.cat([normed_after(loaded, run, layer, rows) for layer in range(n_layers)])  # (L, d)
    logits: torch.Tensor = loaded.adapter.lm_head()(hidden).float()
    return logits


def _readings(logits: torch.Tensor, target: int, k: int) -> list[LensLayer]:
    """One LensLayer per row of (N, V) logits."""
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)
    ranks = 1 + (logits > logits[:, target : target + 1]).sum(-1)  # (N,)
    return [
        LensLayer(
            top_ids=top.indices[row].tolist(),
            top_probs=top.values[row].tolist(),
            target_prob=float(probs[row, target]),
            target_rank=int(ranks[row]),
            target_logit=float(logits[row, target]),
        )
        for row in range(logits.shape[0])
    ]


@torch.inference_mode()
def lens(loaded: Loaded, run: Run, position: int, target: int, k: int) -> list[LensLayer]:
    """Per block at `position`: top-k tokens and probabilities, the target's probability, rank and logit.

    Args:
        loaded: the model.
        run: the analysed text.
        position: query position, 0 ≤ position < n_tokens.
        target: the token id to follow through the blocks.
        k: how many top tokens per block.
    """
    return _readings(lens_logits(loaded, run, position), target, k)


@torch.inference_mode()
def embeddings_lens(loaded: Loaded, run: Run, position: int, target: int, k: int) -> LensLayer:
    """The stream before block 0 (the embeddings as block 0 receives them) at `position`, read as `lens` reads a block.

    Args:
        loaded: the model.
        run: the analysed text (its block inputs are recorded if the run has none yet).
        position: query position, 0 ≤ position < n_tokens.
        target: the token id to follow.
        k: how many top tokens.
    """
    stream = runs.layer_inputs(loaded, run)[0][0, position : position + 1]  # (1, d_model)
    logits: torch.Tensor = loaded.adapter.lm_head()(loaded.adapter.final_norm()(stream)).float()  # (1, V)
    return _readings(logits, target, k)[0]


def _top1_chunks(loaded: Loaded, run: Run, layer: int, scratch: Scratch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, probs) of the top-1 token of block `layer`'s stream, one chunk of LOGIT_CHUNK positions at a time."""
    lm_head = loaded.adapter.lm_head()
    for start in range(0, run.n_tokens, LOGIT_CHUNK):
        hidden = normed_after(loaded, run, layer, slice(start, start + LOGIT_CHUNK))
        logits = scratch.logits(lm_head, hidden)  # (c, V): every layer's chunks in one buffer (nexttoken.Scratch)
        best, ids = logits.max(dim=-1)
        # p(top) = 1 / Σ_v exp(logit_v − best), in place in the chunk's own logits: no fresh (c, V) tensor
        yield ids, logits.sub_(best[:, None]).exp_().sum(-1).reciprocal()


@torch.inference_mode()
def grid(loaded: Loaded, run: Run) -> Grid:
    """The top-1 token and its probability for every block and position, computed in position chunks."""
    n_layers = loaded.adapter.layout.n_layers
    ids = torch.empty(n_layers, run.n_tokens, dtype=torch.long)
    probs = torch.empty(n_layers, run.n_tokens)
    scratch = Scratch()
    for layer in range(n_layers):
        start = 0
        for chunk_ids, chunk_probs in _top1_chunks(loaded, run, layer, scratch):
            ids[layer, start : start + chunk_ids.shape[0]] = chunk_ids.cpu()
            probs[layer, start : start + chunk_ids.shape[0]] = chunk_probs.cpu()
            start += chunk_ids.shape[0]
    return Grid(top_ids=ids, top_probs=probs)
