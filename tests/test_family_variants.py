"""Each served family's per-layer variant (what /api/model reports and the page labels) is what capture saw."""

from __future__ import annotations

import pytest
import torch

from app.inspect.model import capture
from app.inspect.model.variants import variants_of
from tests.support.families import SERVED, WINDOW, ids, served


@pytest.mark.parametrize("model_type", SERVED)
def test_layer_variants_are_what_each_layer_ran(model_type: str) -> None:
    loaded = served(model_type)
    with torch.no_grad(), capture.recording() as rec:
        loaded.adapter.backbone()(input_ids=torch.tensor([ids()]), use_cache=False)
    variants = variants_of(loaded.model, loaded.adapter)
    assert len(variants) == loaded.adapter.layout.n_layers
    for layer, variant in enumerate(variants):
        qk = rec.captured[layer]
        assert variant.window == qk.sliding_window, layer
        assert variant.softcap == qk.softcap
        assert variant.sinks == (qk.sinks is not None) == (not qk.rows_sum_to_one)
        assert variant.alibi == (qk.bias is not None)
        assert variant.window in (None, WINDOW)


def test_labels_name_the_variant() -> None:
    gemma2, gpt_oss, llama = served("gemma2"), served("gpt_oss"), served("llama")
    assert [v.label for v in variants_of(gemma2.model, gemma2.adapter)] == [
        f"local {WINDOW}, soft-cap 2",
        "global, soft-cap 2",
        f"local {WINDOW}, soft-cap 2",
    ]
    assert [v.label for v in variants_of(gpt_oss.model, gpt_oss.adapter)][:2] == [
        f"local {WINDOW}, sinks",
        "global, sinks",
    ]
    assert {v.label for v in variants_of(llama.model, llama.adapter)} == {"global"}
