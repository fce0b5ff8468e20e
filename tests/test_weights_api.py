"""The "why a head attends" endpoints through the app: contract fields, agreement between them, every 422."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from tests.test_api import assert_error, post

TEXT = "The cat sat on the mat. The cat sat"


def test_composition_contract(client: TestClient) -> None:
    out = client.get("/api/composition", params={"kind": "q"}).json()
    assert out["kind"] == "q" and out["note"] is None
    heads = [(h["layer"], h["head"]) for h in out["senders"]]
    assert heads == [(layer, head) for layer in range(2) for head in range(4)] and out["receivers"] == out["senders"]
    for (a, _), row in zip(heads, out["scores"], strict=True):
        assert [v is None for v in row] == [b <= a for b, _ in heads]  # null unless the receiver is later
        assert all(0 <= v <= 1 for v in row if v is not None)
    assert 0 < out["baseline"] < 1 and out["baseline_std"] > 0
    assert client.get("/api/composition").json()["kind"] == "k"  # the default kind: K-composition


def test_head_circuits_contract(client: TestClient) -> None:
    out = client.get("/api/head_circuits", params={"layer": 1, "head": 3, "token_ids": [262, 3797]}).json()
    assert (out["layer"], out["head"], out["kv_head"]) == (1, 3, 1)
    assert len(out["qk_singular_values"]) == len(out["ov_singular_values"]) == 8
    assert out["qk_singular_values"] == sorted(out["qk_singular_values"], reverse=True)
    for side in ("qk", "ov"):  # the effective rank the page states: the fewest values holding 90% of Σσ²
        sv = out[f"{side}_singular_values"]
        r = out[f"{side}_effective_rank"]
        total = sum(s * s for s in sv)
        assert 1 <= r <= len(sv) and sum(s * s for s in sv[:r]) >= 0.9 * total > sum(s * s for s in sv[: r - 1])
    assert "90%" in out["effective_rank_definition"]
    assert -1 <= out["copying_score"] <= 1 and "eigenvalues" in out["copying_definition"]
    assert [r["token"] for r in out["token_map"]] == [{"token": " the", "id": 262}, {"token": " cat", "id": 3797}]
    assert all(len(r["top"]) == 5 and r["self_rank"] >= 1 for r in out["token_map"])
    assert out["positional"]["defined"] is False and "rotary" in out["positional"]["reason"]
    comp = client.get("/api/composition", params={"kind": "k"}).json()
    top = out["top_senders"]["k"][0]
    column = [row[4 + 3] for row in comp["scores"][:4]]  # senders in layer 0 into L1H3
    assert top["score"] == pytest.approx(max(column), abs=1e-5)
    assert set(out["baseline"]) == {"q", "k", "v"}
    assert out["baseline"]["k"] == pytest.approx(comp["baseline"])
    default = client.get("/api/head_circuits", params={"layer": 0, "head": 0}).json()
    assert len(default["token_map"]) == 8 and default["top_senders"] == {"q": [], "k": [], "v": []}


def test_head_circuits_learned_positions(gpt2_client: TestClient) -> None:
    pos = gpt2_client.get("/api/head_circuits", params={"layer": 1, "head": 0}).json()["positional"]
    assert pos["defined"] and len(pos["offset_mass"]) == 8 and pos["previous_token"] == pos["offset_mass"][1]


def test_qk_attribution_contract(client: TestClient) -> None:
    out = post(client, "/api/qk_attribution", text=TEXT, layer=1, head=2, query_pos=-1, key_pos=3)
    n = len(out["token_ids"])
    assert (out["query_pos"], out["key_pos"], out["kv_head"]) == (n - 1, 3, 1)
    assert out["total"] == pytest.approx(out["score"], abs=1e-4)
    nodes = [s["node"] for s in out["query_sums"]]
    assert nodes == ["emb", "L0H0", "L0H1", "L0H2", "L0H3", "M0", "bias"] == [s["node"] for s in out["key_sums"]]
    assert sum(s["value"] for s in out["query_sums"]) == pytest.approx(out["total"], abs=1e-4)
    assert sum(s["value"] for s in out["key_sums"]) == pytest.approx(out["total"], abs=1e-4)
    values = [abs(t["value"]) for t in out["terms"]]
    assert len(values) == 20 and values == sorted(values, reverse=True)
    assert out["softcap"] is None and out["capped_score"] == out["score"] and out["masked"] is False
    assert 0 < out["weight"] < 1 and out["row"] is None and out["rope"].startswith("rotary")
    attention = post(client, "/api/attention", text=TEXT, heads=[{"layer": 1, "head": 2}])["maps"][0]["weights"]
    assert out["weight"] == pytest.approx(attention[n - 1][3], abs=1e-6)


def test_qk_attribution_row_and_default_key(client: TestClient) -> None:
    out = post(client, "/api/qk_attribution", text=TEXT, layer=1, head=0, query_pos=5, row=True, row_top=2)
    row = out["row"]
    assert [k["key_pos"] for k in row] == list(range(6))
    assert out["key_pos"] == max(range(6), key=lambda j: row[j]["weight"])  # default: the most attended key
    assert row[out["key_pos"]]["score"] == pytest.approx(out["score"], abs=1e-5)
    assert math.fsum(k["weight"] for k in row) == pytest.approx(1.0, abs=1e-5)
    assert all(len(k["terms"]) == len(k["query_nodes"]) == len(k["key_nodes"]) == 2 for k in row)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"layer": 2}, "layer 2 out of range"),
        ({"head": -1}, "head -1 out of range"),
        ({"query_pos": 3, "key_pos": 4}, "after query_pos"),
        ({"key_pos": 40}, "out of range"),
        ({"top": 0}, None),
        ({"text": ""}, None),
        ({"extra": 1}, None),
    ],
)
def test_qk_attribution_errors(client: TestClient, change: dict[str, object], needle: str | None) -> None:
    body = {"text": TEXT, "layer": 1, "head": 0, "query_pos": -1, "key_pos": 0} | change
    err = assert_error(client.post("/api/qk_attribution", json=body), 422)
    if needle:
        assert needle in err["detail"]


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/api/composition", {"kind": "x"}, None),
        ("/api/head_circuits", {"layer": 0, "head": 4}, "head 4 out of range"),
        ("/api/head_circuits", {"layer": 5, "head": 0}, "layer 5 out of range"),
        ("/api/head_circuits", {"layer": 0, "head": 0, "token_ids": [10**6]}, "token id 1000000 out of range"),
        ("/api/head_circuits", {"layer": 0}, None),
    ],
)
def test_weight_endpoint_errors(client: TestClient, path: str, params: dict[str, object], needle: str | None) -> None:
    err = assert_error(client.get(path, params=params), 422)
    if needle:
        assert needle in err["detail"]
