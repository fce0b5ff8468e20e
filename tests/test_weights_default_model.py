"""Why the default model's induction head attends: K-composition from its previous-token head, from the weights
and on a repeated sentence (README, "Why a head attends")."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

PREVIOUS, INDUCTION = (16, 0), (17, 4)


def test_induction_head_reads_the_previous_token_head_on_its_key_side(real: TestClient) -> None:
    comp = real.get("/api/composition", params={"kind": "k"}).json()
    heads = [(h["layer"], h["head"]) for h in comp["senders"]]
    column = [row[heads.index(INDUCTION)] for row in comp["scores"]]
    assert max((v, h) for v, h in zip(column, heads, strict=True) if v is not None)[1] == PREVIOUS
    assert column[heads.index(PREVIOUS)] > 3 * comp["baseline"]

    words = " apple river candle orbit velvet hammer tiger lemon castle mirror planet garden violin rocket"
    text = words + "." + words  # 14 words, ".", the 14 again: from the last word, induction looks at "."
    layer, head = INDUCTION
    sums: dict[str, float] = {}
    for query in range(16, 29):  # each word of the second copy and the word after its first occurrence
        body = {"text": text, "layer": layer, "head": head, "query_pos": query, "key_pos": query - 14}
        out = real.post("/api/qk_attribution", json=body).json()
        assert out["token_ids"][:14] == out["token_ids"][15:] and out["tokens"][14] == "."
        assert out["total"] == pytest.approx(out["score"], abs=1e-3)
        for s in out["key_sums"]:
            sums[s["node"]] = sums.get(s["node"], 0.0) + s["value"]
    top_key_node = max(sums, key=lambda node: abs(sums[node]))
    assert top_key_node == "L16H0" and sums["L16H0"] > 0
    circuits = real.get("/api/head_circuits", params={"layer": layer, "head": head}).json()
    first = circuits["top_senders"]["k"][0]
    assert (first["layer"], first["head"]) == PREVIOUS
    assert first["score"] == pytest.approx(column[heads.index(PREVIOUS)], abs=1e-5)
