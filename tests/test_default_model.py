"""The real embedded default model (SmolLM2-135M-Instruct), prepared once under models/cache/."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.inspect import loading

pytestmark = pytest.mark.slow


def test_loads_from_the_safetensors_cache() -> None:
    path = loading.CACHE / "smollm2-135m"
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert loading.resolve("smollm2-135m")[1] == str(path)


def test_model_card(real: TestClient) -> None:
    m = real.get("/api/model").json()
    assert (m["n_layers"], m["n_heads"], m["n_kv_heads"]) == (30, 9, 3)
    assert m["kv_groups"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert m["kv_cache"]["saving_vs_mha"] == pytest.approx(2 / 3)


def test_capital_of_france_is_paris(real: TestClient) -> None:
    out = real.post("/api/ablate", json={"text": "The capital of France is", "ablate": [], "top_k": 3}).json()
    assert out["baseline"]["top_k"][0]["token"] == " Paris"
    tok = real.post("/api/tokenize", json={"text": "The capital of France is"}).json()
    assert tok["tokens"] == ["The", " capital", " of", " France", " is"]  # no BOS added


def test_attention_on_the_real_model(real: TestClient) -> None:
    out = real.post("/api/attention", json={"text": "The capital of France is", "heads": [{"layer": 29, "head": 8}]})
    assert out.status_code == 200
    w = out.json()["maps"][0]["weights"]
    assert len(w) == 5 and abs(sum(w[-1]) - 1) < 1e-5
