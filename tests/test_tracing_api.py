"""The causal-tracing endpoints through the app: contract fields, agreement with the other endpoints, every 422."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.test_api import assert_error, post

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
PATCH = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " Mary", "wrong": " John"}
TEXT = "The cat sat on the mat. The cat sat"


def test_patch_contract(client: TestClient) -> None:
    out = post(client, "/api/patch", **PATCH)
    n = len(out["token_ids_clean"])
    assert out["token_ids_clean"][9] == 1757 and out["token_ids_corrupted"][9] == 5335
    assert len(out["tokens_corrupted"]) == n and out["position"] == n - 1 and out["direction"] == "denoise"
    assert out["answer"] == {"token": " Mary", "id": 5335} and out["wrong"] == {"token": " John", "id": 1757}
    assert len(out["scores"]) == 2 and all(len(row) == 4 for row in out["scores"])
    assert out["position_scores"] == [] and out["residual_scores"] is None
    assert out["clean_logit_diff"] != out["corrupted_logit_diff"]
    by_id = post(client, "/api/patch", **{**PATCH, "answer": None, "answer_id": 5335})
    assert by_id["scores"] == out["scores"]


def test_patch_options(client: TestClient) -> None:
    out = post(
        client,
        "/api/patch",
        **PATCH,
        position=10,
        direction="noise",
        by_position=[{"layer": 1, "head": 2}],
        residual=True,
    )
    n = len(out["token_ids_clean"])
    assert out["position"] == 10 and out["direction"] == "noise"
    [ps] = out["position_scores"]
    assert (ps["layer"], ps["head"]) == (1, 2) and len(ps["scores"]) == n
    assert all(s == 1 for s in ps["scores"][11:])  # after the position read: no effect, which noising scores 1
    assert len(out["residual_scores"]) == 2 and all(len(row) == n for row in out["residual_scores"])
    assert out["residual_scores"][0][9] == pytest.approx(0.0, abs=1e-5)  # noising the only differing token: all gone


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"corrupted": "When Mary and John went to the shop, John gave a drink to Mary"}, "14 tokens"),
        ({"answer": " Maryland Mary"}, "is 2 tokens [' Maryland', ' Mary']"),
        ({"answer_id": 5335}, "not both"),
        ({"answer": None}, "answer_id"),
        ({"wrong": None, "wrong_id": 10_000_000}, "out of range"),
        ({"position": 14}, "out of range"),
        ({"position": -15}, "out of range"),
        ({"corrupted": CLEAN}, "nothing to recover"),
        ({"wrong": " Mary"}, "same token"),
        ({"by_position": [{"layer": 2, "head": 0}]}, "layer 2"),
    ],
)
def test_patch_rejects(client: TestClient, change: dict[str, Any], needle: str) -> None:
    body = {k: v for k, v in {**PATCH, **change}.items() if v is not None}
    detail = assert_error(client.post("/api/patch", json=body), 422, "invalid_input")["detail"]
    assert needle in detail


def test_patch_limits_per_position_work(client: TestClient) -> None:
    long = " ".join(["word"] * 600)
    body = {"clean": long, "corrupted": long, "answer": " word", "wrong": " the", "residual": True}
    assert "too much work" in assert_error(client.post("/api/patch", json=body), 422)["detail"]


def test_dla_parts_sum_to_the_logit(client: TestClient) -> None:
    out = post(client, "/api/dla", text=TEXT, contrast=" dog")
    assert out["position"] == len(out["token_ids"]) - 1 and out["contrast"]["token"] == " dog"
    total = sum(map(sum, out["heads"])) + sum(out["mlp"]) + out["embed"] + out["other"]
    assert total == pytest.approx(out["logit"], abs=1e-3)
    lens = post(client, "/api/logit_lens", text=TEXT, top_k=1)
    assert out["target"] == lens["target"]  # both default to the model's own top-1
    at = post(client, "/api/dla", text=TEXT, position=2, target_id=7)
    assert at["position"] == 2 and at["target"]["id"] == 7 and at["contrast"] is None


def test_logit_lens_last_layer_is_the_model_s_prediction(client: TestClient) -> None:
    out = post(client, "/api/logit_lens", text=TEXT, top_k=3, target=" mat")
    ablate = post(client, "/api/ablate", text=TEXT, top_k=3)
    last = out["layers"][-1]
    assert [t["id"] for t in last["top_k"]] == [t["id"] for t in ablate["baseline"]["top_k"]]
    for got, want in zip(last["top_k"], ablate["baseline"]["top_k"], strict=True):
        assert got["prob"] == pytest.approx(want["prob"], rel=1e-5)
    assert [row["layer"] for row in out["layers"]] == [0, 1] and out["grid"] is None
    assert out["target"]["token"] == " mat" and all(row["target_rank"] >= 1 for row in out["layers"])


def test_logit_lens_gives_the_target_logit_and_the_embeddings_reading(client: TestClient) -> None:
    """Each block's raw logit of the target, and the stream before block 0 (the embeddings) read the same way:
    TransformerLens's accumulated residual has n_layers + 1 entries, the first the embeddings."""
    out = post(client, "/api/logit_lens", text=TEXT, top_k=3, target=" mat")
    loaded = client.app.state.service.model  # type: ignore[attr-defined]
    target = out["target"]["id"]
    ids = torch.tensor([out["token_ids"]])
    with torch.no_grad():
        own = loaded.model(ids).logits[0, -1].float()  # (V,) the model's own logits after the text
        emb = loaded.model.get_input_embeddings()(ids)[0, -1:]  # (1, d): the llama adds nothing before block 0
        early = loaded.adapter.lm_head()(loaded.adapter.final_norm()(emb))[0].float()  # (V,)
    assert out["layers"][-1]["target_logit"] == pytest.approx(float(own[target]), abs=1e-4)
    assert all(math.isfinite(row["target_logit"]) for row in out["layers"])
    e = out["embed"]
    assert e["target_logit"] == pytest.approx(float(early[target]), abs=1e-4)
    assert e["target_prob"] == pytest.approx(float(torch.softmax(early, -1)[target]), rel=1e-4)
    assert e["target_rank"] == 1 + int((early > early[target]).sum())
    assert [t["id"] for t in e["top_k"]] == torch.topk(early, 3).indices.tolist()
    assert [row["layer"] for row in out["layers"]] == [0, 1]  # still one entry per block


def test_logit_lens_grid_equals_per_position_lens(client: TestClient) -> None:
    out = post(client, "/api/logit_lens", text=TEXT, grid=True)
    g = out["grid"]
    n = len(out["token_ids"])
    assert len(g["top_ids"]) == 2 and all(len(row) == n for row in g["top_ids"])
    for pos in (0, 4, n - 1):
        at = post(client, "/api/logit_lens", text=TEXT, position=pos, top_k=1)
        for layer, row in enumerate(at["layers"]):
            assert g["top_ids"][layer][pos] == row["top_k"][0]["id"]
            assert g["top_tokens"][layer][pos] == row["top_k"][0]["token"]
            assert g["top_probs"][layer][pos] == pytest.approx(row["top_k"][0]["prob"], rel=1e-5)


def test_attention_from_rows_equal_attention_rows(client: TestClient) -> None:
    svc = client.app.state.service  # type: ignore[attr-defined]
    post(client, "/api/attention", text=TEXT, layers=[0, 1])
    misses = svc.cache.misses
    out = post(client, "/api/attention_from", text=TEXT, query_pos=-3)
    assert svc.cache.misses == misses  # read off the cached run
    n = len(out["token_ids"])
    assert out["query_pos"] == n - 3
    maps = post(client, "/api/attention", text=TEXT, layers=[0, 1])["maps"]
    for m in maps:
        row = out["weights"][m["layer"]][m["head"]]
        assert row == pytest.approx(m["weights"][n - 3], abs=1e-6)
        assert math.isclose(sum(row), 1.0, abs_tol=1e-5) and all(v == 0 for v in row[n - 2 :])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/attention_from", {"text": TEXT, "query_pos": 10}),
        ("/api/dla", {"text": TEXT, "position": -11}),
        ("/api/dla", {"text": TEXT, "target": " Mary", "target_id": 5}),
        ("/api/dla", {"text": TEXT, "contrast": "two words"}),
        ("/api/logit_lens", {"text": TEXT, "target_id": 50257}),
        ("/api/logit_lens", {"text": TEXT, "top_k": 51}),
    ],
)
def test_rejects(client: TestClient, path: str, body: dict[str, Any]) -> None:
    assert_error(client.post(path, json=body), 422)
