"""The induction probe: a seeded random token sequence repeated twice, and every head's score on it.

Olsson et al. (2022) prefix matching measured on the model's own probe, not on a user's text: at a
query in the second copy, the weight on the token that followed the query's earlier occurrence.
"""

from __future__ import annotations

import torch

from app.inspect.engine.runs import analyse
from app.inspect.model.loaded import Loaded
from app.inspect.observe import metrics

PROBE_LENGTH = 50  # random tokens per copy in the induction probe
PROBE_BATCH = 4
PROBE_SEED = 0


def probe_tokens(vocab_size: int, length: int = PROBE_LENGTH, batch: int = PROBE_BATCH) -> torch.Tensor:
    """(batch, 2·length) seeded random token ids, each row a random sequence repeated twice."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    low = min(100, vocab_size // 10)  # skip the first ids: special and byte tokens in most vocabularies
    half = torch.randint(low, vocab_size, (batch, length), generator=gen)
    return torch.cat([half, half], dim=1)


@torch.inference_mode()
def induction_scores(loaded: Loaded) -> torch.Tensor:
    """Induction score of every head (n_layers, n_heads) on the model's probe; mean over rows and probes."""
    layout = loaded.adapter.layout
    probe = probe_tokens(layout.vocab_size)
    total = torch.zeros(layout.n_layers, layout.n_heads)
    rows_total = 0
    for row in probe:
        run = analyse(loaded, "", token_ids=row.tolist())
        for layer in range(layout.n_layers):
            maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)
            mass, rows = metrics.induction_mass(maps, PROBE_LENGTH)
            total[layer] += mass.cpu()
        rows_total += rows
    return total / max(rows_total, 1)
