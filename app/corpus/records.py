"""What measuring a batch of texts produces: the records that corpus jobs store, merge and send (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TextResult:
    """One text's numbers: every metric per head, and where in the text the head does it most."""

    index: int  # the text's index in the dataset
    n_tokens: int
    values: dict[str, np.ndarray]  # metric -> (n_layers, n_heads) float64; NaN = does not count
    where: dict[str, np.ndarray]  # metric -> (n_layers, n_heads, 2) int64 (query_pos, key_pos); -1 = none


@dataclass
class BatchResult:
    texts: list[TextResult]
    similarity_sum: dict[str, np.ndarray]  # "js"/"cosine" -> (n, n) SUM over the batch's texts (mergeable)
