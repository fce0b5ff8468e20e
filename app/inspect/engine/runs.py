"""A Run: one analysed text (tokens, captured queries/keys, final hidden state) and the LRU cache of runs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.inspect.engine.hooks import recording_block_inputs, recording_head_outputs
from app.inspect.engine.memo import Key, Memo
from app.inspect.engine.nexttoken import LOGIT_CHUNK as LOGIT_CHUNK  # re-exported: the logit lens chunks alike
from app.inspect.engine.nexttoken import NextToken, Reference, next_token, references
from app.inspect.model import capture
from app.inspect.model.capture import LayerQK
from app.inspect.model.loaded import Loaded


@dataclass
class Run:
    """Everything one forward of one text leaves behind; maps are derived from it on demand."""

    model_name: str
    text: str
    token_ids: list[int]
    tokens: list[str]
    qk: dict[int, LayerQK]  # per layer, batch 1
    hidden: torch.Tensor  # (T, d_model), after the final norm
    head_means: dict[int, torch.Tensor]  # per layer, (n_heads * head_dim,): mean head output over positions
    layer_inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # per layer (1, T, d): block input
    memo: Memo = field(default_factory=Memo)  # what analyses derive from the run and keep (counted by the cache)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def maps(self, layer: int, heads: list[int], group_size: int, rows: slice | None = None) -> torch.Tensor:
        """Attention maps (len(heads), Tq, T) of some query heads of one layer, float32."""
        return capture.attention_maps(self.qk[layer], heads, group_size, rows)[0]

    @property
    def nbytes(self) -> int:
        size = sum(qk.nbytes for qk in self.qk.values())
        size += self.hidden.numel() * self.hidden.element_size()
        size += sum(x.numel() * x.element_size() for x in self.layer_inputs.values())
        return size + sum(m.numel() * m.element_size() for m in self.head_means.values()) + self.memo.nbytes


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """Display strings: each token decoded alone (" capital", not "Ġcapital")."""
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids exactly as the tokenizer gives them with its default special tokens."""
    ids: list[int] = tokenizer(text)["input_ids"]
    return ids


@torch.inference_mode()
def analyse(loaded: Loaded, text: str, token_ids: list[int] | None = None) -> Run:
    """Run the model once on `text`, keeping queries/keys of every layer, head means and the final hidden state.

    Args:
        loaded: the model.
        text: the input; tokenized with default special tokens.
        token_ids: the ids of `text` when already tokenized (or a probe's ids, with text "").
    """
    ids = encode(loaded.tokenizer, text) if token_ids is None else token_ids
    input_ids = torch.tensor([ids], device=loaded.device)
    inputs: dict[int, torch.Tensor] = {}
    means: dict[int, torch.Tensor] = {}  # per layer, each head's mean output over positions
    with (
        capture.recording() as rec,
        recording_head_outputs(loaded.adapter, means, keep=lambda x: x.detach().mean(dim=1)[0]),
        recording_block_inputs(loaded.adapter, inputs),
    ):
        out = loaded.adapter.backbone()(input_ids=input_ids, use_cache=False)
    hidden = out.last_hidden_state[0]  # (T, d_model)
    return Run(
        model_name=loaded.name,
        text=text,
        token_ids=ids,
        tokens=token_strings(loaded.tokenizer, ids),
        qk=rec.captured,
        hidden=hidden,
        head_means=means,
        layer_inputs=inputs,
    )


@dataclass
class Prediction:
    """What the model predicts along a text: per-token log-probs, mean loss, next-token top-k."""

    token_logprobs: list[float]  # log p(token i+1 | tokens ≤ i), length T-1
    loss: float | None  # mean next-token cross-entropy (nats); None for a one-token text
    top_k: list[tuple[int, float]]  # (id, prob) for the token after the text
    last_logprobs: torch.Tensor  # (vocab,) log-softmax after the last token


def summarise(stats: NextToken, k: int) -> Prediction:
    """A Prediction from the next-token statistics of one row (B = 1)."""
    logprobs, last = stats.target_logprobs[0], stats.last_logprobs[0]  # (T-1,), (vocab,)
    top = torch.topk(last.exp(), min(k, last.shape[0]))
    return Prediction(
        token_logprobs=logprobs.tolist(),
        loss=float(stats.loss[0]) if logprobs.numel() else None,
        top_k=list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
        last_logprobs=last,
    )


@dataclass
class Baseline:
    """The unablated run's next-token statistics, and its (log-probs, probs) per LM-head chunk when they fit."""

    stats: NextToken  # B = 1
    chunks: list[Reference] | None  # (log-probs, probs) per LM-head chunk, (c, vocab) each; None: not kept


BASELINE = Key[Baseline]("baseline")
# Keep a run's baseline (log-probs, probs) when they fit (512 tokens of a 49k vocabulary: 200 MB): a toggle
# then costs one LM head and, per position, a subtraction, a product and a sum in place.
BASELINE_CACHE_BYTES = 256 << 20


def targets(run: Run) -> torch.Tensor:
    """The run's next tokens, ids 1..T-1, (T-1,) on the model's device."""
    return torch.tensor(run.token_ids[1:], device=run.hidden.device)


@torch.inference_mode()
def baseline(lm_head: nn.Module, run: Run) -> Baseline:
    """The run's next-token statistics, computed once and kept on the run (shared by prediction, ablation, sweep).

    Its (log-probs, probs) are kept too when they fit in BASELINE_CACHE_BYTES; otherwise `baseline_chunks`
    computes them a chunk at a time, so a long text never holds more than one chunk of vocabulary-wide rows.
    """
    cached = run.memo.get(BASELINE)
    if cached is not None:
        return cached
    vocab = int(lm_head.weight.shape[0])  # type: ignore[index]
    keep: list[Reference] | None = [] if run.n_tokens * vocab * 8 <= BASELINE_CACHE_BYTES else None
    return run.memo.put(BASELINE, Baseline(next_token(lm_head, run.hidden[None], targets(run), keep=keep), keep))


def baseline_chunks(lm_head: nn.Module, run: Run) -> Iterable[Reference]:
    """The run's next-token (log-probs, probs) per LM-head chunk, (c, vocab) each: kept ones, or computed again."""
    kept = baseline(lm_head, run).chunks
    return kept if kept is not None else references(lm_head, run.hidden)


def predict(lm_head: nn.Module, run: Run, k: int) -> Prediction:
    """What the model predicts along the run's text (from its baseline statistics, cached on the run)."""
    return summarise(baseline(lm_head, run).stats, k)


class RunCache:
    """LRU of runs keyed by (model name, text), bounded by entries and bytes. Thread-safe."""

    def __init__(self, max_entries: int = 16, max_bytes: int = 2 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._runs: OrderedDict[tuple[str, str], Run] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0  # runs asked for and not found (tests check that follow-ups reuse the cached run)

    def get(self, model_name: str, text: str) -> Run | None:
        with self._lock:
            run = self._runs.get((model_name, text))
            if run is None:
                self.misses += 1
                return None
            self._runs.move_to_end((model_name, text))
            return run

    def put(self, run: Run) -> None:
        with self._lock:
            self._runs[(run.model_name, run.text)] = run
            self._runs.move_to_end((run.model_name, run.text))
            run.memo.on_grow = self._trim  # a run that grows (derived data kept on it) counts at once
            self._evict()

    def _trim(self) -> None:
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used runs until the rest fit (the newest always stays); caller holds the lock."""
        while len(self._runs) > 1 and (
            len(self._runs) > self.max_entries or sum(r.nbytes for r in self._runs.values()) > self.max_bytes
        ):
            _, dropped = self._runs.popitem(last=False)
            dropped.memo.on_grow = None  # no longer this cache's to count

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()

    def __len__(self) -> int:
        return len(self._runs)


def layer_inputs(loaded: Loaded, run: Run) -> dict[int, torch.Tensor]:
    """The residual stream entering every block for the run's text, (1, T, d_model) each (kept on the run)."""
    if not run.layer_inputs:
        with torch.inference_mode(), recording_block_inputs(loaded.adapter, run.layer_inputs):
            loaded.adapter.backbone()(input_ids=torch.tensor([run.token_ids], device=loaded.device), use_cache=False)
    return run.layer_inputs
