"""A soft-capped local/global family (tiny Gemma 2) and the families with their own attention code (BLOOM, MPT,
Falcon) served through the real loading path and the JSON API: /api/model lists each layer's variant, /api/dla
explains the pre-cap logit and reports the capped one, the lens, patching, ablation and generation answer (no 422)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.support.clients import make_client
from tests.support.families import WINDOW, by_type, save

TEXT = "The cat sat on the mat because the cat was tired"


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = save(by_type("gemma2"), tmp_path_factory.mktemp("gemma2") / "tiny-gemma2")
    yield from make_client(str(path))


def test_model_lists_each_layer_s_variant(gemma2: TestClient) -> None:
    r = gemma2.get("/api/model")
    assert r.status_code == 200, r.text
    assert r.json()["layer_variants"] == [
        {"layer": 0, "label": f"local {WINDOW}, soft-cap 2", "window": WINDOW, "softcap": 2.0, "sinks": False},
        {"layer": 1, "label": "global, soft-cap 2", "window": None, "softcap": 2.0, "sinks": False},
        {"layer": 2, "label": f"local {WINDOW}, soft-cap 2", "window": WINDOW, "softcap": 2.0, "sinks": False},
    ]


def test_dla_explains_the_pre_cap_logit_and_reports_the_capped_one(gemma2: TestClient) -> None:
    r = gemma2.post("/api/dla", json={"text": TEXT})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["final_softcap"] == 5.0
    assert d["model_logit"] == pytest.approx(5.0 * math.tanh(d["logit"] / 5.0), abs=1e-5)
    total = sum(map(sum, d["heads"])) + sum(d["mlp"]) + d["embed"] + d["other"]
    assert total == pytest.approx(d["logit"], abs=1e-3)


def test_lens_and_patching_are_served(gemma2: TestClient) -> None:
    lens = gemma2.post("/api/logit_lens", json={"text": TEXT})
    assert lens.status_code == 200, lens.text
    body = {"clean": "The cat sat on the mat", "corrupted": "The dog sat on the mat", "answer": " and", "wrong": " the"}
    patch = gemma2.post("/api/patch", json=body)
    assert patch.status_code == 200, patch.text
    assert len(patch.json()["scores"]) == 3


@pytest.fixture(scope="module", params=["bloom", "mpt", "falcon"])
def own_attention(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A family with its own attention code, saved to a directory and served from it as a user would."""
    model_type: str = request.param
    path = save(by_type(model_type), tmp_path_factory.mktemp(model_type) / f"tiny-{model_type}")
    yield from make_client(str(path))


def test_own_attention_families_are_served_through_the_api(own_attention: TestClient) -> None:
    """BLOOM, MPT (ALiBi) and Falcon: the model card names ALiBi where there is some, maps are causal
    distributions, and ablation, DLA, patching and generation answer (no 422)."""
    card = own_attention.get("/api/model").json()
    alibi = card["architecture"] in ("bloom", "mpt")
    assert {v["label"] for v in card["layer_variants"]} == {"global, ALiBi" if alibi else "global"}
    r = own_attention.post("/api/attention", json={"text": TEXT, "layers": [0]})
    assert r.status_code == 200, r.text
    for m in r.json()["maps"]:
        for i, row in enumerate(m["weights"]):
            assert sum(row) == pytest.approx(1.0, abs=1e-5) and not any(row[i + 1 :])
    ablate = own_attention.post("/api/ablate", json={"text": TEXT, "ablate": [{"layer": 0, "head": 1}]})
    assert ablate.status_code == 200 and ablate.json()["kl_last"] > 0, ablate.text
    dla = own_attention.post("/api/dla", json={"text": TEXT})
    assert dla.status_code == 200, dla.text
    d = dla.json()
    assert sum(map(sum, d["heads"])) + sum(d["mlp"]) + d["embed"] + d["other"] == pytest.approx(d["logit"], abs=1e-3)
    body = {"clean": "The cat sat on the mat", "corrupted": "The dog sat on the mat", "answer": " and", "wrong": " the"}
    assert own_attention.post("/api/patch", json=body).status_code == 200
    gen = own_attention.post(
        "/api/generate", json={"text": TEXT, "max_new_tokens": 4, "ablate": [{"layer": 1, "head": 0}]}
    )
    assert gen.status_code == 200 and len(gen.json()["baseline"]["token_ids"]) == 4, gen.text
