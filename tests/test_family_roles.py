"""Every family's head metrics are their registry definitions evaluated on the maps the family really computes.

The reference maps come from capture.attention_maps (soft-capping, learned sinks, ALiBi and sliding windows
included; those are checked against eager attention elsewhere), so a fast path that forgets one of them fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from app.inspect.engine.runs import analyse
from app.inspect.model import capture
from app.inspect.observe import metrics, roles
from tests.support.families import SERVED, ids, served


@pytest.mark.parametrize("model_type", SERVED)
def test_head_metrics_equal_their_definitions_on_the_captured_maps(model_type: str) -> None:
    loaded = served(model_type)
    layout = loaded.adapter.layout
    token_ids = ids(14, seed=5)
    token_ids[9:12] = token_ids[2:5]  # a repeated run: duplicate and prefix-matching rows exist
    run = analyse(loaded, "", token_ids=token_ids)
    stats = roles.head_stats(run, layout)
    t = run.n_tokens
    earlier = [[j for j in range(q) if token_ids[j] == token_ids[q]] for q in range(t)]
    repeats = [q for q in range(t) if earlier[q]]
    for layer in range(layout.n_layers):
        maps = capture.attention_maps(run.qk[layer], list(range(layout.n_heads)), layout.group_size)[0].double()
        entropy = -(maps * torch.log(maps + metrics.EPS)).sum(-1)  # (H, T), over the keys the map shows
        want = {
            "entropy": entropy.mean(-1),
            "entropy_ratio": torch.stack([entropy[:, q] / math.log(q + 1) for q in range(1, t)], -1).mean(-1),
            "confidence": maps.amax(-1).mean(-1),
            "previous_token": torch.stack([maps[:, q, q - 1] for q in range(1, t)], -1).mean(-1),
            "self": maps.diagonal(dim1=1, dim2=2).mean(-1),
            "first_token": maps[:, :, 0].mean(-1),
            "duplicate_token": torch.stack([maps[:, q, earlier[q]].sum(-1) for q in repeats], -1).mean(-1),
            "text_induction": torch.stack([maps[:, q, [j + 1 for j in earlier[q]]].sum(-1) for q in repeats], -1).mean(
                -1
            ),
        }
        for name, ref in want.items():
            got = stats[name]
            assert got is not None, name
            torch.testing.assert_close(got[layer].double(), ref, atol=2e-5, rtol=1e-5, msg=f"{name} L{layer}")
