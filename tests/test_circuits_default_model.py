"""Circuits on the real default model: the indirect-object pair of the README."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support.prompts import IOI

pytestmark = pytest.mark.slow


def test_ioi_edges_agree_with_exact_patching(real: TestClient) -> None:
    body = {**IOI, "method": "eap", "top_n": 5, "faithfulness": True, "faithfulness_n": [5]}
    r = real.post("/api/circuit", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    patch = real.post("/api/patch", json=IOI).json()
    assert out["metric"]["clean"] == pytest.approx(patch["clean_logit_diff"], abs=1e-3)
    assert out["metric"]["corrupted"] == pytest.approx(patch["corrupted_logit_diff"], abs=1e-3)
    assert out["n_edges"] == 70_651 and "sequential" in out["wiring"]
    top = out["edges"][0]
    assert (top["source"], top["target"], top["channel"]) == ("L23H3", "logits", "in")  # the name mover, directly
    [five] = out["faithfulness"]
    assert five["recovered"] == pytest.approx(1.0, abs=0.05)
    alone = real.post("/api/path_patch", json={**IOI, "edges": [{k: top[k] for k in ("source", "target", "channel")}]})
    exact = alone.json()["metric"] - alone.json()["metric_corrupted"]
    assert exact == pytest.approx(top["score"], rel=0.2)  # EAP's estimate of the edge, against its exact effect
    every = real.post("/api/path_patch", json={**IOI, "edges": "all"}).json()
    assert every["recovered"] == pytest.approx(1.0, abs=1e-4)
