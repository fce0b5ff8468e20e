"""The Lecture page (/lecture) against a real server: both views drawn (a text and a dataset), the trade-off
table against the API, and a click on a curve point opening the Heads view with exactly those heads off."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.browser.pages import query
from tests.support.server import Server

pytestmark = pytest.mark.browser

TEXT = "In the beginning the heads attended to nothing, and then to everything at once."
OTHER = "A second text, so a dataset curve averages over two different texts."


def call(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def open_lecture(page: Any, base: str, params: dict[str, str]) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(base + "/lecture?" + urlencode(params))
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector("#curve-panel[data-painted]")
    page.wait_for_selector("#tradeoff-panel[data-painted]")


POINT_XY = """([trace, index]) => {
  const gd = document.getElementById("curve-plot");
  const fl = gd._fullLayout;
  const tr = gd._fullData[trace];
  const box = gd.querySelector(".main-svg").getBoundingClientRect();
  return [box.x + fl._size.l + fl.xaxis.l2p(tr.x[index]), box.y + fl._size.t + fl.yaxis.l2p(tr.y[index])];
}"""


def click_point(page: Any, name_prefix: str, n_pruned: int) -> None:
    """Click the point of the trace named `name_prefix…` at x = n_pruned (hovering first, as a person would)."""
    trace = page.evaluate(
        "(p) => document.getElementById('curve-plot')._fullData.findIndex((t) => (t.name || '').startsWith(p))",
        name_prefix,
    )
    assert trace >= 0, name_prefix
    index = page.evaluate(
        "([t, n]) => document.getElementById('curve-plot')._fullData[t].x.indexOf(n)", [trace, n_pruned]
    )
    x, y = page.evaluate(POINT_XY, [trace, index])
    page.mouse.move(x, y)
    # Plotly reports a click on the point it is hovering: wait until the hover has been computed
    page.wait_for_selector("#curve-plot .hoverlayer .hovertext")
    page.mouse.click(x, y)


def masked(url_query: dict[str, str]) -> set[str]:
    return set(url_query.get("mask", "").split(",")) - {""}


def labels(heads: list[dict[str, int]]) -> set[str]:
    return {f"L{h['layer']}H{h['head']}" for h in heads}


def separated_point(imp: dict[str, Any], rnd: dict[str, Any]) -> int:
    """A middle point where the importance curve lies farthest from every random curve (an unambiguous click)."""
    middle = range(1, len(imp["points"]) - 1)
    gap = {i: min(abs(imp["points"][i]["loss"] - x) for x in rnd["points"][i]["losses"]) for i in middle}
    return max(gap, key=lambda i: gap[i])


def test_text_view_and_click(tiny_server: Server, page: Any, artifacts: Path) -> None:
    base = tiny_server.url
    open_lecture(page, base, {"text": TEXT, "steps": "5", "seeds": "3"})
    assert query(page) == {"text": TEXT, "steps": "5", "seeds": "3"}
    body = {"text": TEXT, "steps": 5, "seeds": 3, "refine": True}
    imp = call(base, "/api/prune_curve", {**body, "order": "importance"})
    rnd = call(base, "/api/prune_curve", {**body, "order": "random"})
    summary = page.inner_text("#curve-summary")
    assert f"Importance order: {imp['thresholds'][0]['n_pruned']} of 8 heads" in summary
    assert "Random order:" in summary and "3 seeds" in summary
    drawn = page.evaluate("document.getElementById('curve-plot')._fullData.map((t) => t.name)")
    assert any(n.startswith("importance order") for n in drawn) and any(n.startswith("random order") for n in drawn)
    ys = page.evaluate(
        "document.getElementById('curve-plot')._fullData.find((t) => t.name.startsWith('importance order')).y"
    )
    assert ys == pytest.approx([p["loss"] for p in imp["points"]], abs=1e-9)

    t = call(base, "/api/head_tradeoff")
    rows = page.locator("#tradeoff-table tbody tr:not(.section)")
    same = [c for c in t["configs"] if c["n_heads"] == t["real"]["n_heads"]]
    mha = [c for c in t["configs"] if c["kind"] == "MHA"]
    assert rows.count() == 1 + len(same) + len(mha)
    real = page.locator("#tradeoff-table tr.real")  # tiny llama: 4 query heads, 2 KV heads (GQA)
    assert real.count() == 1 and real.locator("td").all_inner_texts()[:3] == ["4", "2", "GQA"]
    counted = page.locator("#tradeoff-table tr.counted td").all_inner_texts()
    p = t["real"]["params"]
    assert counted[4:8] == [f"{p[k]:,}" for k in "qkvo"]
    page.screenshot(path=str(artifacts / "lecture-text.png"))

    i = separated_point(imp, rnd)
    n = imp["points"][i]["n_pruned"]
    click_point(page, "importance order", n)
    page.wait_for_url("**/?*mask=*")
    page.wait_for_selector("body[data-ready]")
    q = query(page)
    assert q["text"] == TEXT
    assert masked(q) == labels(imp["pruned_order"][0][:n])
    page.go_back()
    page.wait_for_selector("#curve-panel[data-painted]")
    assert query(page)["text"] == TEXT


def test_dataset_view_and_click(tiny_server: Server, page: Any, artifacts: Path) -> None:
    base = tiny_server.url
    made = call(base, "/api/datasets", {"name": "lecture pair", "texts": [TEXT, OTHER]})
    params = {"src": "dataset", "dataset": made["id"], "texts": "2", "tokens": "12", "steps": "3", "seeds": "2"}
    open_lecture(page, base, params)
    assert query(page) == params
    assert page.is_hidden("#text-fields") and page.is_visible("#dataset-fields")
    summary = page.inner_text("#curve-summary")
    assert f"the first 2 texts of {made['id']}" in summary
    page.screenshot(path=str(artifacts / "lecture-dataset.png"))

    # "exact" bisects on a text only: on a dataset its box is off as well as disabled, and the state keeps it
    assert page.is_disabled("#exact") and not page.is_checked("#exact")
    assert "exact" not in query(page)

    body = {"dataset": made["id"], "max_texts": 2, "max_tokens": 12, "steps": 3, "seeds": 2}
    rnd = call(base, "/api/prune_curve", {**body, "order": "random"})
    seed_line = f"seed {rnd['seeds'][1]}"
    # a point of a dataset's curve is a mean over its texts: the click asks which text to open
    url = page.url
    click_point(page, seed_line, 4)
    page.wait_for_selector("#curve-picks:not([hidden]) a")
    assert page.url == url
    note = page.inner_text("#curve-picks")
    assert "4 heads off" in note and "mean over 2 texts" in note
    links = page.locator("#curve-picks a")
    assert links.count() == 2
    page.screenshot(path=str(artifacts / "lecture-dataset-picks.png"))
    with page.expect_navigation():
        links.nth(1).click()
    q = query(page)
    assert q["text"] == OTHER
    assert masked(q) == labels(rnd["pruned_order"][1][:4])
    page.go_back()
    page.wait_for_selector("#curve-panel[data-painted]")
    page.click('#source button[data-src="text"]')
    assert page.is_enabled("#exact") and page.is_checked("#exact")


def test_a_threshold_at_the_curves_resolution_reads_as_a_range(tiny_server: Server, page: Any) -> None:
    """Between two points the curve cannot tell where the loss crossed: the summary gives the range, not 0."""
    base = tiny_server.url
    made = call(base, "/api/datasets", {"name": "lecture coarse", "texts": [TEXT, OTHER]})

    def coarse(route: Any) -> None:
        """The curve as a large model gives it: every order crosses before its second point (4 heads)."""
        res = route.fetch().json()
        first = res["points"][0]
        res["thresholds"] = [{"n_pruned": 0, "loss": first["loss"], "exact": False} for _ in res["thresholds"]]
        res["threshold_n_pruned"] = 0.0
        route.fulfill(json=res)

    page.route("**/api/prune_curve", coarse)
    open_lecture(page, base, {"src": "dataset", "dataset": made["id"], "texts": "2", "steps": "3", "seeds": "2"})
    summary = page.inner_text("#curve-summary")
    assert "Importance order: 0–3 of 8 heads" in summary, summary
    assert "Random order: 0–3 (2 seeds: 0–3, 0–3)" in summary, summary
    assert "0.0" not in summary.split("Loss with")[0]
    assert "4 heads apart" in summary


def test_save_as_html_keeps_both_figures_and_opens_offline(
    tiny_server: Server, page: Any, browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    """The Lecture's Save as HTML: the pruning curve and the trade-off as drawn, in a file that opens with every
    request but file: aborted, draws both, and asks for nothing."""
    open_lecture(page, tiny_server.url, {"text": TEXT, "steps": "4", "seeds": "2"})
    drawn = page.evaluate("document.getElementById('curve-plot').data.map((t) => [t.name, t.y])")
    with page.expect_download() as download:
        page.click("#lecture-html")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name.startswith("headscope-Lecture-In-the-beginning") and path.suffix == ".html"
    other = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    errors: list[str] = []
    other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    asked: list[str] = []
    other.on("request", lambda r: asked.append(r.url))
    other.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    other.goto(path.as_uri())
    other.wait_for_selector(".hs-snap[data-ready]")
    titles = other.locator(".hs-fig h3").all_text_contents()
    assert titles == ["Pruning curve · curve plot", "Head-count trade-off · tradeoff plot"], titles
    assert other.locator(".hs-figure .main-svg").count() >= 2 and other.locator(".hs-text").text_content() == TEXT
    saved = other.evaluate("document.querySelector('.hs-figure').data.map((t) => [t.name, t.y])")
    assert saved == drawn  # the curve's every trace, exactly as the page drew it
    other.screenshot(path=str(artifacts / "lecture-saved-offline.png"), full_page=True)
    assert asked == [path.as_uri()] and errors == []
    other.context.close()
