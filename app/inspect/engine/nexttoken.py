"""Next-token statistics of final hidden states, one LM-head chunk of positions at a time.

The one place that turns hidden states into log p(next token), mean losses, the distribution after
the last token and KL(baseline ‖ other) per position. Prediction (runs.predict), ablation
(ablation.compare), the single-head sweep, gradient importance, pruning and corpus jobs all read
them here. A chunk holds LOGIT_CHUNK positions of every row, so a long text or a wide batch never
holds more than one chunk of vocabulary-wide rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

LOGIT_CHUNK = 512  # positions per LM-head chunk: bounds the (rows, chunk, vocab) logits in memory


@dataclass
class NextToken:
    """Next-token statistics of B rows of one text (B = 1 for a single run)."""

    target_logprobs: torch.Tensor  # (B, T-1): log p(token t+1 | tokens ≤ t)
    last_logprobs: torch.Tensor  # (B, vocab): log p(· | the whole text)
    kl: torch.Tensor | None = None  # (B, T): KL(reference ‖ row) per position, nats; None without a reference

    @property
    def loss(self) -> torch.Tensor:
        """(B,) mean next-token cross-entropy, nats; 0 for a one-token text."""
        return -self.target_logprobs.sum(1) / max(self.target_logprobs.shape[1], 1)


Reference = tuple[torch.Tensor, torch.Tensor]  # a baseline chunk's (log-probs, probs), (c, vocab) each


class Scratch:
    """One buffer for LM-head logits, reused by every chunk of a loop of next-token passes (the sweep, pruning).

    On CPU a fresh vocabulary-wide tensor is fresh memory: 113 MB of logits for 9 rows of 64 tokens is 28k page
    faults, and a 64-token sweep spent 1.7 s of kernel time on them. The logits written here are bit-identical to
    the head's own (tested).
    Only a plain float32 Linear head on CPU with gradients off writes here; any other head computes as usual.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def logits(self, lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """(…, vocab) float32 logits of `hidden`: in the reused buffer where this head can write there, else fresh."""
        weight = getattr(lm_head, "weight", None)
        usable = (
            type(lm_head) is nn.Linear
            and isinstance(weight, torch.Tensor)
            and weight.dtype == hidden.dtype == torch.float32
            and hidden.device.type == "cpu"
            and not torch.is_grad_enabled()
        )
        if not usable or weight is None:
            fresh: torch.Tensor = lm_head(hidden).float()
            return fresh
        shape = (*hidden.shape[:-1], weight.shape[0])
        size = math.prod(shape)
        if self._buffer is None or self._buffer.numel() < size:
            self._buffer = None  # free the old one first
            self._buffer = torch.empty(size)
        out = self._buffer[:size].view(shape)
        flat, out2d = hidden.reshape(-1, hidden.shape[-1]), out.view(-1, shape[-1])
        bias = getattr(lm_head, "bias", None)
        # the calls torch's own linear makes for this input, so the bits are the same (tested)
        if isinstance(bias, torch.Tensor) and hidden.is_contiguous():
            torch.addmm(bias, flat, weight.t(), out=out2d)
        else:
            torch.mm(flat, weight.t(), out=out2d)
            if isinstance(bias, torch.Tensor):
                out2d += bias
        return out


def logprob_chunks(lm_head: nn.Module, hidden: torch.Tensor, scratch: Scratch | None = None) -> Iterator[torch.Tensor]:
    """log-softmax of the LM head's logits, float32, (B, c, vocab) per chunk of (B, T, d) hidden states.

    One fused log-softmax per chunk: every caller gets bit-identical values for identical hidden
    states. On CPU without a gradient it is written over the logits (bit-identical, tested): a fresh
    vocabulary-wide tensor costs more in page faults there than the softmax itself. With `scratch` the
    logits themselves are written into its reused buffer; each chunk is then valid until the next one.
    """
    for start in range(0, hidden.shape[1], LOGIT_CHUNK):
        rows = hidden[:, start : start + LOGIT_CHUNK]
        logits = scratch.logits(lm_head, rows) if scratch is not None else lm_head(rows).float()  # (B, c, V)
        if logits.requires_grad or logits.device.type != "cpu":
            yield torch.log_softmax(logits, dim=-1)
        else:
            yield torch.log_softmax(logits, dim=-1, out=logits)


def references(lm_head: nn.Module, hidden: torch.Tensor) -> Iterator[Reference]:
    """(log-probs, probs) per chunk of one row's (T, d) hidden states: what a KL against them needs."""
    for logp in logprob_chunks(lm_head, hidden[None]):
        yield logp[0], logp[0].exp()


def next_token(
    lm_head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    reference: Iterable[Reference] | None = None,
    keep: list[Reference] | None = None,
    scratch: Scratch | None = None,
) -> NextToken:
    """Next-token statistics of (B, T, d) final hidden states of one text, in one pass over LM-head chunks.

    Args:
        lm_head: the unembedding.
        hidden: (B, T, d_model) states after the final norm.
        targets: (T-1,) the text's next tokens (ids 1..T-1).
        reference: the baseline's (log-probs, probs) per chunk, (c, vocab) each (as `references` gives
            them): KL(reference ‖ row) is then computed at every position (inference only).
        keep: when given (B = 1, no reference), each chunk's (log-probs, probs) are appended to it.
        scratch: a buffer to reuse for the logits (not with `keep`, which holds on to every chunk).
    """
    assert keep is None or reference is None, "a compared row's log-probs are overwritten by the KL"
    assert keep is None or scratch is None, "kept chunks would be overwritten by the next one"
    b = hidden.shape[0]
    picked: list[torch.Tensor] = []
    kl: list[torch.Tensor] = []
    refs = iter(reference) if reference is not None else None
    last = torch.empty(0)
    for start, logp in zip(
        range(0, hidden.shape[1], LOGIT_CHUNK), logprob_chunks(lm_head, hidden, scratch), strict=True
    ):
        tgt = targets[start : start + logp.shape[1]]  # (≤ c,)
        picked.append(logp[:, : tgt.shape[0]].gather(2, tgt[None, :, None].expand(b, -1, 1))[..., 0])
        last = logp[:, -1].clone()  # (B, V): before the KL overwrites logp
        if keep is not None:
            keep.append((logp[0], logp[0].exp()))
        if refs is not None:
            kl.append(_kl(next(refs), logp))
    return NextToken(
        target_logprobs=torch.cat(picked, dim=1),
        last_logprobs=last,
        kl=torch.cat(kl, dim=1) if refs is not None else None,
    )


def _kl(base: Reference, logp: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ row) per position, (B, c), from the base's (log p, p), (c, V) each, and logp (B, c, V) = log q.

    Σ_v p_v (log p_v − log q_v), the terms written over logp (a fresh vocabulary-wide tensor costs more
    in page faults than the arithmetic) and summed by torch's pairwise sum (a BLAS dot product is
    faster but ~5× less accurate in float32). Identical log-probs give exactly 0.
    """
    base_logp, base_p = base
    terms = torch.sub(base_logp, logp, out=logp).mul_(base_p)  # (B, c, V): p (log p − log q)
    return terms.sum(-1).clamp_min(0.0)
