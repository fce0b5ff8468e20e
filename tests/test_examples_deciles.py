"""Decile examples: texts drawn from each decile of a head's per-text scores, checked against quantiles of the
one-text scores computed here, and the same draw under the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.corpus.sampling import deciles
from app.inspect.model.loaded import Loaded
from tests.test_jobs import dataset, open_client, wait_state

WORDS = "the cat dog sat on a mat and then ran to see bird red blue one two three Mary John gave"


def corpus(n: int, seed: int = 3) -> list[str]:
    """n short texts of common words, some with repeats (so prefix matching counts on some)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS.split(), size=int(rng.integers(4, 14)))) for _ in range(n)]


TEXTS = corpus(30)


def one_head(answer: dict[str, Any], layer: int, head: int) -> dict[str, Any]:
    found: dict[str, Any] = next(h for h in answer["heads"] if h["layer"] == layer and h["head"] == head)
    return found


def bounds_of(scores: np.ndarray) -> np.ndarray:
    return np.quantile(scores[~np.isnan(scores)], np.linspace(0, 1, 11))


def test_each_drawn_score_lies_in_its_decile_and_the_draw_is_seeded() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=95), [np.nan] * 5, [0.5] * 10])  # ties and texts that do not count
    drawn = deciles(scores, k=3, seed=11)
    edges = bounds_of(scores)
    np.testing.assert_allclose(drawn.bounds, edges)
    per = np.bincount([d for _, d, _ in drawn.rows], minlength=10)
    assert per.max() <= 3 and per.sum() >= 25  # every decile holds about 10 texts: 3 each, ties may empty one
    for row, d, score in drawn.rows:
        assert score == scores[row] and not np.isnan(score)
        assert edges[d] <= score <= edges[d + 1]
    assert [r for r, _, _ in drawn.rows] == [r for r, _, _ in deciles(scores, 3, 11).rows]
    assert [r for r, _, _ in drawn.rows] != [r for r, _, _ in deciles(scores, 3, 12).rows]
    everything = deciles(scores, k=1000, seed=0)  # a k past every decile's size takes each text once
    assert sorted(r for r, _, _ in everything.rows) == sorted(np.flatnonzero(~np.isnan(scores)).tolist())
    assert [d for _, d, _ in everything.rows] == sorted((d for _, d, _ in everything.rows), reverse=True)
    assert deciles(np.full(4, np.nan), 2, 0).rows == []


@pytest.fixture(scope="module")
def finished(tiny_loaded: dict[str, Loaded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    data_dir: Path = tmp_path_factory.mktemp("deciles") / "data"
    for client in open_client(tiny_loaded["llama"], data_dir):
        r = client.post("/api/jobs", json={"dataset": dataset(client, TEXTS), "analyses": ["roles"], "seed": 5})
        job = wait_state(client, r.json()["id"], {"done", "failed"})
        assert job["state"] == "done", job
        yield client, job["id"]


def test_decile_examples_fall_in_the_deciles_of_the_one_text_scores(finished: tuple[TestClient, str]) -> None:
    client, job = finished
    layer, head, metric = 1, 2, "previous_token"
    one_text = np.array(
        [one_head(client.post("/api/heads", json={"text": t}).json(), layer, head)[metric] for t in TEXTS]
    )
    # each text's own /api/heads score: the job is not asked
    edges = bounds_of(one_text)
    url = f"/api/jobs/{job}/heads/{layer}/{head}/examples"
    got = client.get(url, params={"metric": metric, "sample": "deciles", "k": 2, "seed": 9}).json()
    assert got["sample"] == "deciles" and got["seed"] == 9
    np.testing.assert_allclose(got["bounds"], edges, atol=1e-5)
    examples = got["examples"]
    assert 15 <= len(examples) <= 20 and {e["decile"] for e in examples} >= {0, 9}
    for e in examples:
        assert e["score"] == pytest.approx(one_text[e["text_index"]], abs=1e-5)
        assert edges[e["decile"]] - 1e-5 <= e["score"] <= edges[e["decile"] + 1] + 1e-5
        assert e["text"] == TEXTS[e["text_index"]] and e["tokens"]
        assert 0 <= e["key_pos"] <= e["query_pos"] < len(e["tokens"])
    again = client.get(url, params={"metric": metric, "sample": "deciles", "k": 2, "seed": 9}).json()
    assert again == got
    other = client.get(url, params={"metric": metric, "sample": "deciles", "k": 2, "seed": 10}).json()
    assert [e["text_index"] for e in other["examples"]] != [e["text_index"] for e in examples]
    default_seed = client.get(url, params={"metric": metric, "sample": "deciles"}).json()
    assert default_seed["seed"] == 5  # the job's


def test_top_stays_the_default_and_bad_requests_are_422(finished: tuple[TestClient, str]) -> None:
    client, job = finished
    url = f"/api/jobs/{job}/heads/0/1/examples"
    top = client.get(url, params={"metric": "self", "k": 3}).json()
    assert top["sample"] == "top" and all(e["decile"] is None for e in top["examples"])
    scores = [e["score"] for e in top["examples"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    for params in ({"sample": "median"}, {"sample": "deciles", "k": 0}, {"sample": "deciles", "metric": "nope"}):
        r = client.get(url, params=params)
        assert r.status_code == 422 and set(r.json()) == {"error", "detail"}, r.text
    r = client.get(f"/api/jobs/{job}/heads/9/0/examples", params={"sample": "deciles"})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
