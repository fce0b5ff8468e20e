"""Snapshots without a browser: the module linker, the scoped stylesheet, the packed maps, the escaping of user
text, and POST /api/snapshot (the page's "Save as HTML")."""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import __version__
from app.snapshot import bundle as linker
from app.snapshot.assets import plotly_gz_base64, scope_css
from app.snapshot.page import Snapshot, pack_maps, render

HOSTILE = 'x </script><script>alert("hi")</script> & <b id="evil">'


def _data(page: str) -> dict:
    found = re.search(r'<script type="application/json" class="hs-data">(.*?)</script>', page, re.S)
    assert found
    return json.loads(found.group(1))


def test_the_snapshot_script_links_every_module_it_imports() -> None:
    script = linker.bundle()
    for module in ("snapshot/main.js", "heads/heatmap.js", "heads/grid.js", "lib/similarity.js", "lib/decode.js"):
        assert f"__hs['{module}'] = " in script
    assert "import " not in re.sub(r"//.*", "", script).replace("import.", "")  # no import statement is left
    assert "return { categories, ticks, drawMaps, HeadView };" in script  # heatmap.js's exports
    assert "const { drawMaps } = __hs['heads/heatmap.js'];" in script


def test_a_form_the_linker_does_not_know_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.js").write_text('import { b } from "./b.js";\nexport const a = b;\n')
    (tmp_path / "b.js").write_text("export default 1;\n")
    monkeypatch.setattr(linker, "JS", tmp_path)
    with pytest.raises(linker.BundleError, match="export default"):
        linker.bundle.__wrapped__("a.js")


def test_the_page_css_is_scoped_to_the_view() -> None:
    css = scope_css(
        ":root { --x: 1; }\n/* c */ html, body { height: 100%; }\n.grid, .cell:hover { a: b; }\n"
        "@media (max-width: 9px) { .x { c: d; } }\n@keyframes k { from { opacity: 0; } }"
    )
    assert ".hs-snap { --x: 1; }" in css and ".hs-snap,.hs-snap { height: 100%; }" in css
    assert ".hs-snap .grid,.hs-snap .cell:hover { a: b; }" in css
    assert "@media (max-width: 9px) {.hs-snap .x { c: d; }}" in css
    assert "@keyframes k { from { opacity: 0; } }" in css


def test_maps_are_packed_as_float16_lower_triangles() -> None:
    rng = np.random.default_rng(0)
    n = 7
    maps = np.tril(rng.random((2, n, n))).astype(np.float32)
    api = [
        {"layer": 0, "head": 1, "shape": [n, n], "weights_f16": base64.b64encode(maps[0].astype("<f2")).decode()},
        {"layer": 1, "head": 0, "weights": maps[1].tolist()},
    ]
    packed = pack_maps(api, n)
    assert packed is not None and packed["heads"] == [{"layer": 0, "head": 1}, {"layer": 1, "head": 0}]
    values = np.frombuffer(gzip.decompress(base64.b64decode(packed["f16_gz"])), dtype="<f2")
    assert values.size == 2 * n * (n + 1) // 2
    rows, cols = np.tril_indices(n)
    np.testing.assert_array_equal(values[: rows.size], maps[0].astype(np.float16)[rows, cols])
    with pytest.raises(ValueError, match="one text per snapshot"):
        pack_maps(api, n + 1)


def test_user_text_cannot_end_the_script_and_the_file_says_what_it_is() -> None:
    snap = Snapshot(title=HOSTILE, model="tiny", text=HOSTILE, tokens=[HOSTILE, "b"])
    page = render(snap)
    assert "<script>alert" not in page and "<b id=" not in page
    data = _data(page)
    assert data["text"] == HOSTILE and data["tokens"][0] == HOSTILE and data["version"] == __version__
    assert page.startswith("<!doctype html>") and plotly_gz_base64() in page
    assert f'<meta name="generator" content="HeadScope {__version__}">' in page
    fragment = render(snap, document=False, plotly=False)
    assert "<html" not in fragment and plotly_gz_base64() not in fragment and len(fragment) < 150_000


def test_save_as_html_returns_one_file_of_the_text(client: TestClient) -> None:
    body = {"text": "The cat sat on the mat. The cat", "heads": [{"layer": 1, "head": 2}], "similarity": "js"}
    res = client.post("/api/snapshot", json=body)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert res.headers["content-disposition"] == 'attachment; filename="headscope-Attention-of-L1H2.html"'
    data = _data(res.text)
    tokens = client.post("/api/tokenize", json={"text": body["text"]}).json()["tokens"]
    assert data["tokens"] == tokens and data["maps"]["heads"] == [{"layer": 1, "head": 2}]
    assert data["overview"]["n_layers"] == 2 and len(data["similarity"]["heads"]) == 8
    assert [r["name"] for r in data["roles"]] == [r["name"] for r in client.get("/api/roles").json()["roles"]]
    bad = client.post("/api/snapshot", json={**body, "heads": [{"layer": 5, "head": 0}]})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"


def test_figures_a_page_drew_are_kept_without_running_the_text(client: TestClient) -> None:
    figure = {"title": "patching", "data": [{"type": "heatmap", "z": [[0.5, -1]]}], "layout": {"height": 200}}
    body = {"text": "Corpus job x", "thumbnails": False, "figures": [figure]}
    res = client.post("/api/snapshot", json=body)
    assert res.status_code == 200 and res.headers["content-disposition"].endswith('"headscope-HeadScope-figures.html"')
    data = _data(res.text)
    assert data["figures"] == [figure] and data["tokens"] == [] and data["maps"] is None
    nan = client.post(
        "/api/snapshot",
        content=json.dumps({**body, "figures": [{**figure, "layout": {"x": float("nan")}}]}),
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422 and nan.json()["error"] == "invalid_input"


def test_a_file_with_heads_switched_off_holds_the_predictions_before_and_after(client: TestClient) -> None:
    """The heads page's Save as HTML with heads off: the file carries exactly what /api/ablate gives for them."""
    text = "The cat sat on the mat. The cat"
    off = [{"layer": 0, "head": 1}, {"layer": 1, "head": 3}]
    res = client.post("/api/snapshot", json={"text": text, "heads": [off[0]], "ablate": off, "mode": "mean"})
    assert res.status_code == 200
    saved = _data(res.text)["ablation"]
    want = client.post("/api/ablate", json={"text": text, "ablate": off, "mode": "mean"}).json()
    assert saved.pop("ablate") == off and saved.pop("mode") == "mean"
    assert saved == {k: v for k, v in want.items() if k != "maps"}
    assert want["delta_loss"] != 0 and [t["id"] for t in saved["ablated"]["top_k"]] != []
    assert _data(client.post("/api/snapshot", json={"text": text}).text)["ablation"] is None
    bad = client.post("/api/snapshot", json={"text": text, "ablate": [{"layer": 9, "head": 0}]})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_input" and "ablate" in bad.json()["detail"]
