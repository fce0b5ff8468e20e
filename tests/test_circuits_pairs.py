"""Circuits over a set of prompt pairs (/api/circuit_pairs, /api/pair_sets): each edge's mean is the mean of the
single-pair /api/circuit scores, its CI an independent bootstrap with the same seed, the built-in IOI set has
equal token counts and one-token names, the work yields after each pair, and every bad input is one 422."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.corpus.pairs import IOI_PAIRS, MAX_PAIRS, N_BOOT, ioi_pairs
from app.inspect.engine.runs import encode
from app.inspect.engine.steps import Progress
from app.inspect.intervene import circuits
from app.inspect.model.loaded import Loaded
from tests.test_api import assert_error, post
from tests.test_circuits_api import N_EDGES, PAIR

PAIRS = [
    {"clean": PAIR["clean"], "corrupted": PAIR["corrupted"], "answer": " Mary", "wrong": " John"},
    {
        "clean": "When Anna and Paul went to the park, Paul gave a ball to",
        "corrupted": "When Anna and Paul went to the park, Anna gave a ball to",
        "answer": " Anna",
        "wrong": " Paul",
    },
    {
        "clean": "Then, Tom and Lisa had a long argument. Afterwards Lisa said to",
        "corrupted": "Then, Tom and Lisa had a long argument. Afterwards Tom said to",
        "answer": " Tom",
        "wrong": " Lisa",
    },
    {"clean": "The capital of France is", "corrupted": "The capital of Italy is", "answer": " Paris", "wrong": " Rome"},
]


def key(e: dict[str, Any]) -> tuple[str, str, str]:
    return (e["source"], e["target"], e["channel"])


def bootstrap(values: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile CI of the column means, written out: resample the rows (pairs) with replacement."""
    n = values.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, [1 / n] * n, size=N_BOOT)  # (N_BOOT, n)
    means = counts @ values / n
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


@pytest.mark.parametrize(("method", "direction"), [("eap", "denoise"), ("eap-ig", "noise")])
def test_mean_over_pairs_is_the_mean_of_single_pair_circuits(client: TestClient, method: str, direction: str) -> None:
    out = post(client, "/api/circuit_pairs", pairs=PAIRS, method=method, steps=3, direction=direction, top_n=N_EDGES)
    singles = [post(client, "/api/circuit", **p, method=method, steps=3, direction=direction, top_n=0) for p in PAIRS]
    assert out["n_pairs"] == 4 and out["pair_set"] is None and out["n_edges"] == N_EDGES == len(out["edges"])
    assert (
        out["method"] == method and out["direction"] == direction and out["steps"] == (3 if method == "eap-ig" else 1)
    )
    per_pair = [{key(e): e["score"] for e in one["edges"]} for one in singles]
    # float32 runs batched differently (a set's pair vs a cached run) round differently: 1e-5 of the largest edge
    tol = 1e-5 * max(abs(v) for scores in per_pair for v in scores.values())
    for e in out["edges"]:
        expected = [scores[key(e)] for scores in per_pair]
        assert e["scores"] == pytest.approx(expected, rel=1e-5, abs=tol)
        assert e["score"] == pytest.approx(float(np.mean(expected)), rel=1e-5, abs=tol)
        assert e["score"] == pytest.approx(float(np.mean(e["scores"])), rel=1e-12, abs=1e-15)
        assert e["n"] == 4
    means = [abs(e["score"]) for e in out["edges"]]
    assert means == sorted(means, reverse=True) and means[0] > 0
    nodes = [{n["id"]: n["score"] for n in one["node_scores"]} for one in singles]
    for node in out["node_scores"]:
        assert node["score"] == pytest.approx(float(np.mean([n[node["id"]] for n in nodes])), rel=1e-5, abs=tol)
    for i, pair in enumerate(out["pairs"]):
        assert pair["metric"]["clean"] == pytest.approx(singles[i]["metric"]["clean"], abs=1e-6)
        assert pair["metric"]["corrupted"] == pytest.approx(singles[i]["metric"]["corrupted"], abs=1e-6)
        assert pair["n_tokens"] == len(singles[i]["token_ids_clean"]) and pair["answer"] == singles[i]["answer"]
    assert out["metric"]["clean"]["score"] == pytest.approx(np.mean([s["metric"]["clean"] for s in singles]), abs=1e-6)
    # every pair: its two analysed runs, the other run's node outputs, one gradient forward (3 steps in a batch)
    assert out["cost"] == {"forwards": 4 * (2 + 1 + 1), "backwards": 4, "patched_runs": 0}


def test_confidence_intervals_are_a_seeded_bootstrap_over_pairs(client: TestClient) -> None:
    out = post(client, "/api/circuit_pairs", pairs=PAIRS, method="eap", top_n=40, seed=7)
    values = np.array([e["scores"] for e in out["edges"]]).T  # (pairs, edges)
    low, high = bootstrap(values, 7)
    assert [e["ci_low"] for e in out["edges"]] == pytest.approx(low.tolist(), rel=1e-9, abs=1e-12)
    assert [e["ci_high"] for e in out["edges"]] == pytest.approx(high.tolist(), rel=1e-9, abs=1e-12)
    for e in out["edges"]:
        assert e["ci_low"] <= e["score"] <= e["ci_high"] and e["ci_low"] < e["ci_high"]
    nodes = np.array([n["scores"] for n in out["node_scores"]]).T
    n_low, n_high = bootstrap(nodes, 7)
    assert [n["ci_low"] for n in out["node_scores"]] == pytest.approx(n_low.tolist(), rel=1e-9, abs=1e-12)
    assert [n["ci_high"] for n in out["node_scores"]] == pytest.approx(n_high.tolist(), rel=1e-9, abs=1e-12)
    again = post(client, "/api/circuit_pairs", pairs=PAIRS, method="eap", top_n=40, seed=7)
    assert again["edges"] == out["edges"]  # same seed, same answer
    other = post(client, "/api/circuit_pairs", pairs=PAIRS, method="eap", top_n=40, seed=8)
    assert [e["score"] for e in other["edges"]] == [e["score"] for e in out["edges"]]
    assert [e["ci_low"] for e in other["edges"]] != [e["ci_low"] for e in out["edges"]]
    top = post(client, "/api/circuit_pairs", pairs=PAIRS, method="eap", top_n=5, seed=7)["edges"]
    assert top == out["edges"][:5]  # a column's CI does not depend on the others asked with it


def test_builtin_ioi_pairs(client: TestClient, tiny_loaded: dict[str, Loaded]) -> None:
    tokenizer = tiny_loaded["llama"].tokenizer
    sets = client.get("/api/pair_sets").json()
    assert sets["max_pairs"] == MAX_PAIRS
    [found] = sets["sets"]
    assert found["id"] == IOI_PAIRS and found["n_pairs"] == len(found["pairs"]) == 32
    assert found["pairs"][0] == {k: PAIR[k] for k in ("clean", "corrupted", "answer", "wrong")}
    assert len({(p["clean"], p["corrupted"]) for p in found["pairs"]}) == 32
    for p in found["pairs"]:
        assert len(encode(tokenizer, p["clean"])) == len(encode(tokenizer, p["corrupted"]))
        for name in (p["answer"], p["wrong"]):
            assert len(tokenizer(name, add_special_tokens=False)["input_ids"]) == 1
        # the subject's second mention is the indirect object in the corrupted prompt, nothing else changes
        a, b = p["answer"].strip(), p["wrong"].strip()
        assert p["clean"].count(b) == 2 and p["corrupted"].count(a) == 2 and p["corrupted"].count(b) == 1
        head = p["clean"].rsplit(b, 1)[0]
        assert p["corrupted"] == head + a + p["clean"].rsplit(b, 1)[1]
    out = post(client, "/api/circuit_pairs", pair_set=IOI_PAIRS, method="eap", top_n=10)
    assert out["pair_set"] == IOI_PAIRS and out["n_pairs"] == 32
    assert [p["clean"] for p in out["pairs"]] == [p["clean"] for p in found["pairs"]]
    assert all(e["n"] == 32 and len(e["scores"]) == 32 for e in out["edges"])


def test_ioi_pairs_skip_names_that_are_not_one_token(tiny_loaded: dict[str, Loaded]) -> None:
    tokenizer = tiny_loaded["llama"].tokenizer

    def split_mary(text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids: list[int] = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return {"input_ids": [*ids, 0] if text == " Mary" else ids}

    found = ioi_pairs(split_mary)
    assert len(found) == 32 and all("Mary" not in p.clean for p in found)


def test_pairs_run_one_pair_per_step(tiny_loaded: dict[str, Loaded]) -> None:
    loaded = tiny_loaded["llama"]
    ids = [encode(loaded.tokenizer, p) for p in (PAIR["clean"], PAIR["corrupted"])]
    answer, wrong = (loaded.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    pair = circuits.Pair(ids[0], ids[1], len(ids[0]) - 1, answer, wrong)
    steps = circuits.attribute_pairs(loaded, [pair] * 3, "denoise")
    assert next(steps) == Progress(1, 3) and next(steps) == Progress(2, 3)
    steps.close()  # a cancel between pairs: nothing runs after it
    with pytest.raises(StopIteration):
        next(steps)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"pairs": [PAIRS[0], {**PAIRS[1], "corrupted": "When Anna went to the park, Anna gave a ball to"}]},
            "pair 2: ",
        ),
        ({"pairs": [PAIRS[0], PAIRS[1], {**PAIRS[2], "answer": " Maryland Mary"}]}, "pair 3: answer"),
        ({"pairs": [PAIRS[0], {**PAIRS[1], "wrong": None}]}, "pair 2: no wrong token"),
        ({"pairs": [PAIRS[0]], "position": 40}, "pair 1: position"),
        ({"pairs": PAIRS * 17}, f"at most {MAX_PAIRS}"),
        ({"pairs": []}, "empty"),
        ({}, "one of them"),
        ({"pairs": PAIRS, "pair_set": IOI_PAIRS}, "one of them"),
        ({"pair_set": "builtin:nope"}, "unknown set"),
    ],
)
def test_rejects(client: TestClient, change: dict[str, Any], needle: str) -> None:
    detail = assert_error(client.post("/api/circuit_pairs", json=change), 422, "invalid_input")["detail"]
    assert needle in detail
    if needle == "pair 2: ":
        assert "same number" in detail and "corrupted is" in detail


@pytest.mark.parametrize(
    "body",
    [
        {"pairs": PAIRS, "top_n": 0},
        {"pairs": PAIRS, "method": "acdc"},
        {"pairs": [{**PAIRS[0], "extra": 1}]},
        {"pairs": [{k: v for k, v in PAIRS[0].items() if k != "answer"}]},
        {"pairs": "all"},
    ],
)
def test_rejects_bad_requests(client: TestClient, body: dict[str, Any]) -> None:
    assert_error(client.post("/api/circuit_pairs", json=body), 422)
