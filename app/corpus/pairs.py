"""Prompt pairs for circuits over a set: the built-in pair sets, and the mean with a bootstrap CI over pairs.

builtin:ioi-pairs   the IOI templates of builtin.py, each with four ordered name pairs (32 pairs). The corrupted
                    prompt swaps the subject's second mention for the indirect object; answer = the indirect
                    object, wrong = the subject. Only names that are one token after a space under the served
                    tokenizer are used, so both prompts of a pair have the same number of tokens.

What crosses the boundary: pair set ids and their pairs (strings) in, per-pair scores (pairs × items) in and
their mean, 95% percentile-bootstrap CI and count out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.corpus.builtin import IOI_TEMPLATES, PEOPLE, SEED
from app.corpus.stats import bootstrap_ci
from app.errors import InvalidInput
from app.inspect.engine.runs import encode

IOI_PAIRS = "builtin:ioi-pairs"
MAX_PAIRS = 64  # a pair set is measured in one request (sliced on the model worker), never as a corpus job
IOI_NAMES_PER_TEMPLATE = 4
N_BOOT = 1000
CI_COLUMNS = 4096  # columns bootstrapped at once: (N_BOOT, CI_COLUMNS) float64 resample means, 32 MB


@dataclass(frozen=True)
class PromptPair:
    """A prompt pair as text: the metric is logit(answer) − logit(wrong) (logit(answer) when wrong is None)."""

    clean: str
    corrupted: str
    answer: str
    wrong: str | None


def ioi_pairs(tokenizer: Any) -> list[PromptPair]:
    """The IOI pair set: each template with its own IOI_NAMES_PER_TEMPLATE ordered name pairs (Mary/John first)."""
    names = [name for name in PEOPLE if len(tokenizer(f" {name}", add_special_tokens=False)["input_ids"]) == 1]
    ordered = [(a, b) for a in names for b in names if a != b and (a, b) != ("Mary", "John")]
    random.Random(SEED).shuffle(ordered)
    if {"Mary", "John"} <= set(names):
        ordered.insert(0, ("Mary", "John"))  # the classic example comes first
    out = []
    for i, template in enumerate(IOI_TEMPLATES):
        head, tail = template.rsplit("{b}", 1)  # the subject's second mention
        for a, b in ordered[i * IOI_NAMES_PER_TEMPLATE : (i + 1) * IOI_NAMES_PER_TEMPLATE]:
            clean = template.format(a=a, b=b)
            corrupted = f"{head}{{a}}{tail}".format(a=a, b=b)
            if len(encode(tokenizer, clean)) == len(encode(tokenizer, corrupted)):
                out.append(PromptPair(clean, corrupted, f" {a}", f" {b}"))
    return out


PAIR_SETS: dict[str, tuple[str, Callable[[Any], list[PromptPair]]]] = {
    IOI_PAIRS: (
        "IOI: 8 templates × 4 name pairs; corrupted swaps the subject's second mention for the other name",
        ioi_pairs,
    ),
}


def pair_set(name: str, tokenizer: Any) -> list[PromptPair]:
    """The pairs of a built-in set under `tokenizer`; 422 naming the sets for an unknown id."""
    if name not in PAIR_SETS:
        raise InvalidInput(f"pair_set: unknown set {name!r}; the built-in sets are {', '.join(PAIR_SETS)}")
    return PAIR_SETS[name][1](tokenizer)


@dataclass
class Spread:
    """Per column of a (pairs, K) array: the mean over pairs, its 95% percentile-bootstrap CI, and the pairs."""

    mean: np.ndarray  # (K,)
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: int


def spread(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Spread:
    """Mean over the rows (pairs) and a seeded bootstrap CI of it, per column, as app.corpus.stats computes it.

    Columns are bootstrapped CI_COLUMNS at a time; each call draws the same resamples from the seed (they depend
    on the number of pairs alone), so a column's CI does not depend on which other columns come with it.
    """
    n_pairs, k = values.shape
    values = values.astype(np.float64)
    low, high = np.empty(k), np.empty(k)
    ones = np.ones((n_pairs, min(k, CI_COLUMNS)))
    for lo in range(0, k, CI_COLUMNS):
        part = values[:, lo : lo + CI_COLUMNS]
        low[lo : lo + part.shape[1]], high[lo : lo + part.shape[1]] = bootstrap_ci(
            part, ones[:, : part.shape[1]], seed, n_boot
        )
    return Spread(values.mean(0), low, high, n_pairs)
