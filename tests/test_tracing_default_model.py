"""Causal tracing on the real default model: the indirect-object prompt of the README."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support.prompts import IOI

pytestmark = pytest.mark.slow


def top_heads(grid: list[list[float]], k: int) -> list[tuple[int, int]]:
    cells = [(v, layer, head) for layer, row in enumerate(grid) for head, v in enumerate(row)]
    return [(layer, head) for _, layer, head in sorted(cells, reverse=True)[:k]]


def test_ioi_patching_and_dla_find_the_same_name_mover(real: TestClient) -> None:
    patch = real.post("/api/patch", json=IOI).json()
    assert patch["clean_logit_diff"] > 2 and patch["corrupted_logit_diff"] < -2  # the model gets IOI right
    dla = real.post("/api/dla", json={"text": IOI["clean"], "target": " Mary", "contrast": " John"}).json()
    total = sum(map(sum, dla["heads"])) + sum(dla["mlp"]) + dla["embed"] + dla["other"]
    assert total == pytest.approx(dla["logit"], abs=1e-3)
    assert dla["logit"] == pytest.approx(patch["clean_logit_diff"], abs=1e-3)
    # a late head that writes " Mary" over " John" directly and carries much of the difference on its own
    assert top_heads(patch["scores"], 1) == top_heads(dla["heads"], 1)
    layer, _ = top_heads(patch["scores"], 1)[0]
    assert layer >= 15 and max(map(max, patch["scores"])) > 0.3


def test_logit_lens_ends_at_the_model_s_answer(real: TestClient) -> None:
    lens = real.post("/api/logit_lens", json={"text": IOI["clean"], "target": " Mary"}).json()
    last = lens["layers"][-1]
    assert last["top_k"][0]["token"] == " Mary" and last["target_rank"] == 1
    assert lens["layers"][0]["target_rank"] > 1  # the first block does not know the answer yet
