"""One registry of head metrics and similarity measures: a metric added in one entry reaches every consumer."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from fastapi.testclient import TestClient

from app.inspect.engine import runs
from app.inspect.model.loaded import Loaded
from app.inspect.observe import registry
from app.inspect.observe.registry import Chunk, HeadMetric

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["one two three four five six", "the cat sat on the mat and the cat sat", "a b c a b c d"]


def _two_back(c: Chunk) -> registry.Cells:
    rows = c.q >= 2
    return c.q[rows] - c.start, c.q[rows] - 2


TWO_BACK = HeadMetric(
    "two_back",
    "two-back",
    "mean weight on the token two before the query",
    0.0,
    1.0,
    True,
    rows=lambda c: c.q >= 2,
    cells=_two_back,
)


def two_back_reference(loaded: Loaded, text: str) -> torch.Tensor:
    """(n_layers, n_heads) mean over queries q ≥ 2 of a[q, q − 2], from the reference maps."""
    run = runs.analyse(loaded, text)
    layout = loaded.adapter.layout
    out = torch.zeros(layout.n_layers, layout.n_heads)
    for layer in range(layout.n_layers):
        maps = run.maps(layer, list(range(layout.n_heads)), layout.group_size)  # (H, T, T)
        out[layer] = torch.stack([maps[:, q, q - 2] for q in range(2, run.n_tokens)], -1).mean(-1)
    return out


def wait_done(client: TestClient, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in {"done", "failed"}:
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_a_metric_added_in_one_entry_reaches_the_api_a_corpus_job_and_the_page_list(
    client: TestClient, tiny_loaded: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "METRICS", [*registry.METRICS, TWO_BACK])
    loaded = tiny_loaded["llama"]  # the model `client` serves

    # GET /api/roles: what the pages build their metric lists from (overlay menu, captions, corpus labels)
    served = {r["name"]: r for r in client.get("/api/roles").json()["roles"]}
    assert served["two_back"]["label"] == "two-back" and served["two_back"]["measured_on"] == "text"
    assert served["two_back"]["has_where"] is True and served["two_back"]["high"] == 1.0

    # /api/heads and /api/overview: a field, equal to the metric's definition on the reference maps
    text = TEXTS[1]
    ref = two_back_reference(loaded, text)
    heads = client.post("/api/heads", json={"text": text}).json()["heads"]
    for h in heads:
        assert h["two_back"] == pytest.approx(float(ref[h["layer"], h["head"]]), abs=1e-6)
    grid = client.post("/api/overview", json={"text": text, "thumb": 4}).json()["stats"]["two_back"]
    assert grid == [[h["two_back"] for h in heads if h["layer"] == ly] for ly in range(len(grid))]

    # a corpus job: one statistic per head, the mean of the one-text values, and where in a text it happens
    ds = client.post("/api/datasets", json={"name": "registry", "texts": TEXTS}).json()["id"]
    job = client.post("/api/jobs", json={"dataset": ds, "analyses": ["roles"], "max_tokens": 64}).json()
    assert wait_done(client, job["id"])["state"] == "done"
    table = client.get(f"/api/jobs/{job['id']}/heads").json()
    assert "two_back" in table["metrics"]
    refs = [two_back_reference(loaded, t) for t in TEXTS]
    for h in table["heads"]:
        want = sum(float(r[h["layer"], h["head"]]) for r in refs) / len(refs)
        assert h["two_back"]["n"] == len(TEXTS) and h["two_back"]["mean"] == pytest.approx(want, abs=1e-5)
    examples = client.get(f"/api/jobs/{job['id']}/heads/1/2/examples", params={"metric": "two_back", "k": 3}).json()[
        "examples"
    ]
    assert len(examples) == 3 and all(e["key_pos"] == e["query_pos"] - 2 for e in examples)


def test_every_metric_is_well_formed() -> None:
    names = [m.name for m in registry.METRICS]
    assert len(set(names)) == len(names) and len({m.label for m in registry.METRICS}) == len(names)
    for m in registry.METRICS:
        if m.on == "probe":
            assert m.probe is not None and m.rows is None and m.row is None and m.cells is None, m.name
        else:  # a text metric: which rows it averages, and either a value per row or cells in those rows
            assert m.rows is not None and (m.row is None) != (m.cells is None), m.name
            assert m.cells is not None or not m.top_cell or m.row is not None, m.name
        assert m.high is None or m.low < m.high, m.name


def test_probe_and_text_induction_have_two_names() -> None:
    induction, text = registry.metric("induction"), registry.metric("text_induction")
    assert induction.on == "probe" and "probe" in induction.label
    assert text.on == "text" and "text" in text.label


def test_similarity_measures_are_named_once(client: TestClient) -> None:
    names = [s.name for s in registry.SIMILARITY]
    assert list(get_args(registry.SimilarityName)) == names == list(registry.SIMILARITY_NAMES)
    assert [s["name"] for s in client.get("/api/roles").json()["similarity"]] == names
    page = (ROOT / "static/js/lib/similarity.js").read_text()
    block = re.search(r"export const METRIC = \{(.*?)\n\};", page, re.S)
    assert block is not None and re.findall(r"^\s+(\w+):", block.group(1), re.M) == names
    assert client.post("/api/similarity", json={"text": "a b c", "metric": "nope"}).status_code == 422


def test_no_page_module_lists_the_metrics_itself() -> None:
    """The pages take metric lists from /api/roles: no JS array literal names two registry metrics."""
    names = {m.name for m in registry.METRICS}
    for path in (ROOT / "static/js").rglob("*.js"):
        for array in re.findall(r"\[([^\[\]]*)\]", path.read_text()):
            listed = set(re.findall(r"\"(\w+)\"", array)) & names
            assert len(listed) < 2, (path.name, sorted(listed))
