"""/api/overview carries every role score the page can colour by, with the values /api/heads gives for the text."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.inspect.observe.registry import METRICS as ROLES

REPEATS = "The cat sat on the mat. The cat sat on the mat. The cat"
NO_REPEAT = "One two three four"


@pytest.mark.parametrize("text", [REPEATS, NO_REPEAT])
def test_overview_stats_equal_the_heads_scores(client: TestClient, text: str) -> None:
    stats = client.post("/api/overview", json={"text": text, "thumb": 8}).json()["stats"]
    heads = client.post("/api/heads", json={"text": text}).json()["heads"]
    assert set(stats) == {role.name for role in ROLES}  # nothing the page offers needs a second request
    for name, grid in stats.items():
        if grid is None:  # only scores that need a repeated token are missing, and then in both
            assert all(h[name] is None for h in heads), name
            continue
        assert [len(row) for row in grid] == [4, 4]  # the tiny llama: 2 layers × 4 heads
        for h in heads:
            assert grid[h["layer"]][h["head"]] == h[name], (name, h["layer"], h["head"])


def test_text_induction_is_there_only_when_a_token_repeats(client: TestClient) -> None:
    with_repeats = client.post("/api/overview", json={"text": REPEATS}).json()["stats"]["text_induction"]
    assert with_repeats is not None and all(0 <= v <= 1 for row in with_repeats for v in row)
    assert any(v > 0 for row in with_repeats for v in row)
    assert client.post("/api/overview", json={"text": NO_REPEAT}).json()["stats"]["text_induction"] is None
