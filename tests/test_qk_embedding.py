"""The Q/K joint embedding (AttentionViz): its PCA against numpy's SVD of queries and keys captured here text by
text, the key translation against every attention row, points against the tokenizer, and the seeded, bounded
reservoir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.corpus import qk_space
from app.corpus.sampling import Reservoir
from app.inspect.engine import runs
from app.inspect.engine.steps import drain
from app.inspect.model.capture import attention_maps
from app.inspect.model.loaded import Loaded
from tests.test_examples_deciles import corpus
from tests.test_jobs import dataset, open_client, wait_state

TEXTS = corpus(12, seed=8)
MAX_TOKENS = 10
LAYER, HEAD = 1, 3  # the tiny llama has 2 KV heads: query head 3 reads KV head 1


@pytest.fixture(scope="module")
def answer(tiny_loaded: dict[str, Loaded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    data_dir: Path = tmp_path_factory.mktemp("qk") / "data"
    for client in open_client(tiny_loaded["llama"], data_dir):
        body = {"dataset": dataset(client, TEXTS), "analyses": ["roles"], "max_tokens": MAX_TOKENS, "seed": 4}
        job = wait_state(client, client.post("/api/jobs", json=body).json()["id"], {"done", "failed"})
        assert job["state"] == "done", job
        r = client.get(f"/api/jobs/{job['id']}/heads/{LAYER}/{HEAD}/qk_embedding")
        assert r.status_code == 200, r.text
        yield client, job["id"], r.json()


def captured(loaded: Loaded, text: str) -> tuple[list[int], torch.Tensor, torch.Tensor, Any]:
    """The text alone (batch 1, no padding), cut to MAX_TOKENS: ids, the head's q (T, D) and its KV head's k."""
    ids = runs.encode(loaded.tokenizer, text)[:MAX_TOKENS]
    qk = runs.analyse(loaded, "", token_ids=ids).qk[LAYER]
    group = loaded.adapter.layout.group_size
    return ids, qk.q[0, HEAD].double(), qk.k[0, HEAD // group].double(), qk


def test_pca_is_numpy_svd_of_the_normalised_queries_and_keys(
    answer: tuple[TestClient, str, dict[str, Any]], tiny_loaded: dict[str, Loaded]
) -> None:
    _, _, got = answer
    loaded = tiny_loaded["llama"]
    points = got["points"]
    m = got["n_positions"]
    assert got["method"] == "pca" and got["kv_head"] == 1 and len(points) == 2 * m
    total = sum(min(len(runs.encode(loaded.tokenizer, t)), MAX_TOKENS) for t in TEXTS)
    assert got["positions_seen"] == total and m == total  # fewer positions than the cap: all of them
    assert [p["kind"] for p in points] == ["query"] * m + ["key"] * m
    q, k = [], []
    per_text = {i: captured(loaded, t) for i, t in enumerate(TEXTS)}
    for p in points[:m]:
        _, tq, tk, _ = per_text[p["text_index"]]
        q.append(tq[p["position"]].numpy())
        k.append(tk[p["position"]].numpy())
    qa, ka = np.array(q), np.array(k)
    scale = np.sqrt(np.linalg.norm(ka, axis=1).mean() / np.linalg.norm(qa, axis=1).mean())
    shift = (qa * scale).mean(0) - (ka / scale).mean(0)
    assert got["scale"] == pytest.approx(scale, rel=1e-5)
    np.testing.assert_allclose(got["key_shift"], shift, atol=1e-5)
    stacked = np.concatenate([qa * scale, ka / scale + shift])
    centred = stacked - stacked.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T  # (2m, 2)
    xy = np.array([[p["x"], p["y"]] for p in points])
    want *= np.sign((want * xy).sum(0))  # an axis's sign is a convention: align each with the answer's
    np.testing.assert_allclose(xy, want, atol=1e-4)
    np.testing.assert_allclose(got["explained"], s[:2] ** 2 / (s**2).sum(), atol=1e-6)
    qc, kc = xy[:m].mean(0), xy[m:].mean(0)
    np.testing.assert_allclose(qc, kc, atol=1e-5)  # one centroid after the translation


def softmax_rows(scaling: float) -> Any:
    def rows(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        causal = torch.ones(len(q), len(k), dtype=torch.bool).tril()
        return torch.softmax((q @ k.T * scaling).masked_fill(~causal, float("-inf")), dim=-1)

    return rows


def test_the_key_translation_leaves_every_attention_row_unchanged(
    answer: tuple[TestClient, str, dict[str, Any]], tiny_loaded: dict[str, Loaded]
) -> None:
    _, _, got = answer
    scale, shift = got["scale"], torch.tensor(got["key_shift"], dtype=torch.float64)
    assert shift.abs().max() > 1e-3  # the translation does something here
    for text in TEXTS[:5]:
        ids, q, k, qk = captured(tiny_loaded["llama"], text)
        model_map = attention_maps(qk, [HEAD], tiny_loaded["llama"].adapter.layout.group_size)[0, 0].double()
        rows = softmax_rows(qk.scaling)

        torch.testing.assert_close(rows(q, k), model_map, atol=1e-5, rtol=0)
        torch.testing.assert_close(rows(q * scale, k / scale + shift), model_map, atol=1e-5, rtol=0)
        if len(ids) > 2:  # the same shift on the queries instead would change the rows: the check can fail
            assert (rows(q + shift, k) - model_map).abs().max() > 1e-4


def test_points_map_back_to_their_text_and_position(
    answer: tuple[TestClient, str, dict[str, Any]], tiny_loaded: dict[str, Loaded]
) -> None:
    _, _, got = answer
    tokenizer = tiny_loaded["llama"].tokenizer
    points = got["points"]
    for p in [points[0], points[7], points[len(points) // 2 + 3], points[-1]]:
        ids = tokenizer(TEXTS[p["text_index"]])["input_ids"][:MAX_TOKENS]
        assert p["token"] == tokenizer.decode([ids[p["position"]]], clean_up_tokenization_spaces=False)
        assert p["before"] == "".join(
            tokenizer.decode([i], clean_up_tokenization_spaces=False)
            for i in ids[max(0, p["position"] - 6) : p["position"]]
        )


def test_a_repeat_is_cached_and_bad_heads_are_422(answer: tuple[TestClient, str, dict[str, Any]]) -> None:
    client, job, got = answer
    jobs = client.app.state.jobs  # type: ignore[attr-defined]
    assert jobs.samples.get((job, len(TEXTS), LAYER)) is not None
    again = client.get(f"/api/jobs/{job}/heads/{LAYER}/{HEAD}/qk_embedding", params={"color": "token"}).json()
    assert again["points"] == got["points"] and again["color"] == "token"
    for path in ("2/0/qk_embedding", "0/4/qk_embedding", "0/0/qk_embedding?color=pink"):
        r = client.get(f"/api/jobs/{job}/heads/{path}")
        assert r.status_code == 422 and set(r.json()) == {"error", "detail"}, r.text
    assert client.get("/api/jobs/job_nope/heads/0/0/qk_embedding").status_code == 404


def test_the_reservoir_is_seeded_bounded_and_uniform() -> None:
    sizes = [int(n) for n in np.random.default_rng(1).integers(1, 200, size=300)]

    def fill(seed: int, order: list[int], cap: int = 500) -> Reservoir:
        r = Reservoir(cap, seed)
        for i in order:
            r.offer(i, np.arange(sizes[i]), {"id": np.arange(sizes[i]) + 1000 * i})
            assert len(r) <= cap and all(v.shape[0] == len(r) for v in r.payload.values())
        r.sorted()
        return r

    a = fill(0, list(range(300)))
    b = fill(0, list(reversed(range(300))))  # another order: the same sample
    c = fill(1, list(range(300)))
    assert len(a) == 500 and a.seen == sum(sizes)
    np.testing.assert_array_equal(a.text_index, b.text_index)
    np.testing.assert_array_equal(a.position, b.position)
    np.testing.assert_array_equal(a.payload["id"], a.position + 1000 * a.text_index)  # payload rows follow
    assert not np.array_equal(a.position, c.position)
    # uniform: each text holds about its share of the sample (binomial, 5 sigma over 300 texts)
    share = np.bincount(a.text_index, minlength=300) / 500
    expected = np.array(sizes) / sum(sizes)
    assert np.abs(share - expected).max() < 5 * np.sqrt(expected.max() / 500)


def test_sampling_from_the_model_keeps_at_most_cap_positions_with_their_vectors(
    tiny_loaded: dict[str, Loaded],
) -> None:
    loaded = tiny_loaded["llama"]
    items = [(i, runs.encode(loaded.tokenizer, t)) for i, t in enumerate(TEXTS)]
    sample = drain(qk_space.sample_steps(loaded, items, [0], cap=20, seed=2))
    assert len(sample) == 20 and sample.seen == sum(len(ids) for _, ids in items)
    assert set(sample.payload) == {"token", "q0", "k0"}
    for row in (0, 9, 19):
        i, pos = int(sample.text_index[row]), int(sample.position[row])
        qk = runs.analyse(loaded, "", token_ids=items[i][1]).qk[0]
        assert sample.payload["token"][row] == items[i][1][pos]
        np.testing.assert_allclose(sample.payload["q0"][row], qk.q[0, :, pos].numpy(), atol=1e-5)
        np.testing.assert_allclose(sample.payload["k0"][row], qk.k[0, :, pos].numpy(), atol=1e-5)
