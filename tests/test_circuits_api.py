"""The circuit endpoints through the app: /api/circuit's contract (edges sorted, node scores the sums of their
edges, metrics those of /api/patch, the faithfulness curve), /api/path_patch ("all" is the other run, none this
run, one edge what the curve's first point says), and every 422."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.clients import make_client
from tests.support.families import by_type, save
from tests.test_api import assert_error, post

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
PAIR = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " Mary", "wrong": " John"}
N_EDGES = 8 * 1 + 5 + 8 * 6 + 10 + 11  # tiny llama: 2 layers, 4 heads, 2 KV heads, sequential blocks


def test_circuit_contract(client: TestClient) -> None:
    out = post(client, "/api/circuit", **PAIR, method="eap", top_n=0)
    patch = post(client, "/api/patch", **PAIR)
    assert out["metric"]["clean"] == pytest.approx(patch["clean_logit_diff"], abs=1e-5)
    assert out["metric"]["corrupted"] == pytest.approx(patch["corrupted_logit_diff"], abs=1e-5)
    assert out["method"] == "eap" and out["steps"] == 1 and out["direction"] == "denoise"
    assert out["n_edges"] == N_EDGES == len(out["edges"])
    assert out["parallel_blocks"] is False and "sequential" in out["wiring"]
    assert out["cost"] == {"forwards": 2, "backwards": 1, "patched_runs": 0} and out["faithfulness"] is None
    scores = [abs(e["score"]) for e in out["edges"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert {e["channel"] for e in out["edges"]} == {"q", "k", "v", "in"}
    assert len({(e["source"], e["target"], e["channel"]) for e in out["edges"]}) == N_EDGES
    nodes = {n["id"]: n["score"] for n in out["node_scores"]}
    assert list(nodes) == ["emb", *(f"L0H{h}" for h in range(4)), "M0", *(f"L1H{h}" for h in range(4)), "M1"]
    for node, score in nodes.items():
        assert score == pytest.approx(sum(e["score"] for e in out["edges"] if e["source"] == node), abs=1e-6)
    top = post(client, "/api/circuit", **PAIR, method="eap", top_n=5)["edges"]
    assert top == out["edges"][:5]


def test_circuit_faithfulness_is_exact_patching_of_the_top_edges(client: TestClient) -> None:
    out = post(client, "/api/circuit", **PAIR, steps=3, top_n=3, faithfulness=True)
    assert out["method"] == "eap-ig" and out["steps"] == 3 and out["cost"]["backwards"] == 1
    curve = out["faithfulness"]
    assert [p["n_edges"] for p in curve] == [1, 2, 5, 10, 20, 50, N_EDGES]
    assert curve[-1]["metric"] == pytest.approx(out["metric"]["clean"], abs=1e-5)  # every edge: the clean run
    assert curve[-1]["recovered"] == pytest.approx(1.0, abs=1e-3)
    first = out["edges"][0]
    one = post(client, "/api/path_patch", **PAIR, edges=[{k: first[k] for k in ("source", "target", "channel")}])
    assert one["metric"] == pytest.approx(curve[0]["metric"], abs=1e-6)
    gap = abs(out["metric"]["clean"] - out["metric"]["corrupted"])  # `recovered` is a metric difference over this
    assert one["recovered"] == pytest.approx(curve[0]["recovered"], abs=2e-6 / gap)  # rows batched otherwise
    chosen = post(client, "/api/circuit", **PAIR, faithfulness=True, faithfulness_n=[3, 1])["faithfulness"]
    assert [p["n_edges"] for p in chosen] == [3, 1]
    assert chosen[1]["metric"] == pytest.approx(curve[0]["metric"], abs=1e-6)


def test_path_patch_all_is_the_other_run_and_none_this_run(client: TestClient) -> None:
    every = post(client, "/api/path_patch", **PAIR, edges="all")
    assert every["n_edges"] == N_EDGES and every["metric"] == pytest.approx(every["metric_clean"], abs=1e-5)
    assert every["recovered"] == pytest.approx(1.0, abs=1e-3)  # float32, of a difference of 1e-3
    none = post(client, "/api/path_patch", **PAIR, edges=[])
    assert none["metric"] == none["metric_corrupted"] and none["recovered"] == 0.0 and none["n_edges"] == 0
    noise = post(client, "/api/path_patch", **PAIR, edges="all", direction="noise", position=10)
    assert noise["position"] == 10 and noise["metric"] == pytest.approx(noise["metric_corrupted"], abs=1e-5)
    twice = post(client, "/api/path_patch", **PAIR, edges=[{"source": "L0H1", "target": "M1", "channel": "in"}] * 2)
    assert twice["n_edges"] == 1
    alone = post(client, "/api/circuit", **{**PAIR, "wrong": None}, method="eap", top_n=1)
    assert alone["wrong"] is None and alone["metric"]["clean"] != pytest.approx(every["metric_clean"])


@pytest.mark.parametrize(
    ("path", "change", "needle"),
    [
        ("/api/circuit", {"corrupted": "When Mary and John went to the shop, John gave a drink to Mary"}, "14 tokens"),
        ("/api/circuit", {"answer": " Maryland Mary"}, "is 2 tokens"),
        ("/api/circuit", {"answer": None}, "answer_id"),
        ("/api/circuit", {"wrong": " Mary"}, "same token"),
        ("/api/circuit", {"position": 14}, "out of range"),
        ("/api/circuit", {"faithfulness": True, "faithfulness_n": [0]}, "faithfulness_n"),
        ("/api/path_patch", {"corrupted": "Mary and John", "edges": "all"}, "same number"),
        ("/api/path_patch", {"edges": [{"source": "L7H0", "target": "logits", "channel": "in"}]}, "layers 0..1"),
        ("/api/path_patch", {"edges": [{"source": "L0X1", "target": "logits", "channel": "in"}]}, "unknown node"),
        ("/api/path_patch", {"edges": [{"source": "L1H0", "target": "L0H2", "channel": "q"}]}, "runs backwards"),
        ("/api/path_patch", {"edges": [{"source": "L1H0", "target": "L1H2", "channel": "q"}]}, "runs backwards"),
        ("/api/path_patch", {"edges": [{"source": "L0H0", "target": "L1KV0", "channel": "q"}]}, "channels are k, v"),
        ("/api/path_patch", {"edges": [{"source": "L0KV0", "target": "M1", "channel": "in"}]}, "sends nothing"),
    ],
)
def test_rejects(client: TestClient, path: str, change: dict[str, Any], needle: str) -> None:
    body = {k: v for k, v in {**PAIR, "edges": [], **change}.items() if v is not None}
    if path == "/api/circuit":
        body.pop("edges")
    detail = assert_error(client.post(path, json=body), 422, "invalid_input")["detail"]
    assert needle in detail


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/circuit", {**PAIR, "method": "acdc"}),
        ("/api/circuit", {**PAIR, "steps": 0}),
        ("/api/circuit", {**PAIR, "top_n": -1}),
        ("/api/path_patch", {**PAIR}),
        ("/api/path_patch", {**PAIR, "edges": "some"}),
        ("/api/path_patch", {**PAIR, "edges": [{"source": "emb", "target": "logits"}]}),
    ],
)
def test_rejects_bad_requests(client: TestClient, path: str, body: dict[str, Any]) -> None:
    assert_error(client.post(path, json=body), 422)


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = save(by_type("olmo2"), tmp_path_factory.mktemp("olmo2") / "tiny-olmo2")
    yield from make_client(str(path))


def test_a_family_whose_blocks_are_not_understood_is_refused(olmo2: TestClient) -> None:
    for path in ("/api/circuit", "/api/path_patch"):
        body = {**PAIR, "edges": "all"} if path == "/api/path_patch" else PAIR
        detail = assert_error(olmo2.post(path, json=body), 422, "invalid_input")["detail"]
        assert "olmo2" in detail and "normalises the attention and MLP outputs" in detail


def test_circuit_node_edges_per_position(client: TestClient) -> None:
    out = post(client, "/api/circuit", **PAIR, method="eap", top_n=0, node="L1KV1", position=12)
    n = len(out["token_ids_clean"])
    edges = {(e["source"], e["target"], e["channel"]): e["score"] for e in out["edges"]}
    found = out["node_edges"]
    assert len(found) == 2 * 6 and {e["target"] for e in found} == {"L1KV1"}  # k and v from emb, L0 heads, M0
    for e in found:
        assert len(e["scores"]) == n and all(v == 0 for v in e["scores"][13:])
        assert sum(e["scores"]) == pytest.approx(e["score"], abs=1e-6)
        assert e["score"] == pytest.approx(edges[(e["source"], e["target"], e["channel"])], abs=1e-9)
    assert post(client, "/api/circuit", **PAIR, method="eap", top_n=1)["node_edges"] is None
    detail = assert_error(client.post("/api/circuit", json={**PAIR, "node": "L1KV5"}), 422, "invalid_input")["detail"]
    assert "KV head" in detail
