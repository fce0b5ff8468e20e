"""The Trace page (/trace) against a real server: patching heatmap, DLA bars, logit lens, token view, URL."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

from tests.browser.pages import query
from tests.support.server import Server

pytestmark = pytest.mark.browser

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
IOI = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " Mary", "wrong": " John"}
SIZES = [(1280, 720), (1920, 1080)]


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def open_trace(page: Any, base: str, params: dict[str, str] | None = None) -> None:
    page.goto(base + "/trace" + (f"?{urlencode(params)}" if params else ""))
    page.wait_for_selector("body[data-ready]")


def painted(page: Any, panel: str) -> int:
    return int(page.eval_on_selector(f"#{panel}", "el => Number(el.dataset.painted || 0)"))


def wait_painted(page: Any, panel: str, before: int = 0, timeout_s: float = 120) -> None:
    """Wait until `#panel` has been drawn (again) since its counter read `before`, and is no longer stale."""
    page.wait_for_function(
        "([id, before]) => { const p = document.getElementById(id);"
        " return Number(p.dataset.painted || 0) > before && !p.classList.contains('outdated'); }",
        arg=[panel, before],
        timeout=timeout_s * 1000,
    )


def plot_z(page: Any, div: str) -> list[list[float]]:
    return list(page.eval_on_selector(f"#{div}", "el => el.data[0].z"))


def run_example(page: Any) -> None:
    page.click(".example")
    for panel in ("lens-panel", "dla-panel", "patch-panel"):
        wait_painted(page, panel)


def close(a: list[list[float]], b: list[list[float]]) -> bool:
    pairs = (xy for ra, rb in zip(a, b, strict=True) for xy in zip(ra, rb, strict=True))
    return all(math.isclose(x, y, abs_tol=1e-6) for x, y in pairs)


def cell_center(page: Any, div: str, row: int, col: int, n_rows: int, n_cols: int) -> tuple[float, float]:
    """Screen point of heatmap cell (row, col) in a plot whose rows run top to bottom."""
    box = page.locator(f"#{div} .nsewdrag").first.bounding_box()
    return box["x"] + box["width"] * (col + 0.5) / n_cols, box["y"] + box["height"] * (row + 0.5) / n_rows


def test_ioi_pair_draws_patching_dla_and_lens(page: Any, tiny_server: Server, artifacts: Path) -> None:
    held: list[Any] = []
    page.route("**/api/patch", lambda route: held.append(route))
    open_trace(page, tiny_server.url)
    page.click(".example")
    wait_painted(page, "dla-panel")
    # patching is held back: its panel looks stale and says what it is doing
    page.wait_for_function(
        "() => document.querySelector('#patch-panel .trace-progress').textContent.includes('patching 8')"
    )
    assert "outdated" in (page.get_attribute("#patch-panel", "class") or "")
    # its busy mark is drawn in CSS (no emoji: without an emoji font that is an empty box)
    mark = page.eval_on_selector(
        "#patch-panel .trace-progress",
        "el => { const s = getComputedStyle(el, '::before'); return [s.content, s.animationName]; }",
    )
    assert mark == ['""', "spin"]
    for route in held:
        route.continue_()
    page.unroute("**/api/patch")
    wait_painted(page, "patch-panel")

    # the two prompts, with the one differing token marked in each
    assert page.locator("#clean-tokens .t.diff").all_inner_texts() == ["·John"]
    assert page.locator("#corrupted-tokens .t.diff").all_inner_texts() == ["·Mary"]
    assert page.input_value("#answer") == " Mary" and page.input_value("#wrong") == " John"
    # the heatmap shows exactly what the API computes: 2 layers × 4 heads, diverging around 0
    expected = post(tiny_server.url, "/api/patch", IOI)
    assert page.get_attribute("#patch-plot", "data-cells") == "8"
    assert close(plot_z(page, "patch-plot"), expected["scores"])
    zmid = page.eval_on_selector("#patch-plot", "el => [el.data[0].zmin, el.data[0].zmax, el.data[0].zmid]")
    assert zmid[2] == 0 and math.isclose(zmid[0], -zmid[1])
    assert page.locator("#patch-plot .hm image, #patch-plot .heatmaplayer image").count() >= 1
    assert page.locator("#top-heads li").count() == 8
    # DLA: one bar per head (8 ≤ 12 shown), coloured by sign, and the summary gives the logit difference
    dla = post(tiny_server.url, "/api/dla", {"text": CLEAN, "target": " Mary", "contrast": " John"})
    assert page.get_attribute("#dla-heads", "data-bars") == "8"
    assert page.locator("#dla-heads .bars path").count() == 8
    assert math.isclose(float(page.get_attribute("#dla-summary", "data-logit") or "nan"), dla["logit"], abs_tol=1e-6)
    assert "logit[·Mary] − logit[·John]" in page.inner_text("#dla-summary")
    assert page.locator("#dla-layers .bars path").count() == 2 * 2
    # the lens: probability and rank curves, one table row per layer and one for the embeddings (before block 0),
    # each with the answer's logit
    assert page.locator("#lens-plot .scatterlayer .trace").count() == 2
    assert page.eval_on_selector("#lens-plot", "el => el.data[0].x.length") == 3
    assert page.locator("#lens-table tbody tr").count() == 3
    lens = post(tiny_server.url, "/api/logit_lens", {"text": CLEAN, "target": " Mary", "top_k": 10})
    cells = page.locator("#lens-table tbody tr").first.locator("td").all_inner_texts()
    assert cells[0] == "L1" and cells[2] == f"{lens['layers'][-1]['target_logit']:.2f}"
    cells = page.locator("#lens-table tbody tr").last.locator("td").all_inner_texts()
    assert cells[0] == "emb" and cells[2] == f"{lens['embed']['target_logit']:.2f}"
    q = query(page)
    assert q["clean"] == CLEAN and q["corrupted"] == CORRUPTED and q["answer"] == " Mary" and q["wrong"] == " John"
    # the on-demand grid: layers × positions
    before = painted(page, "lens-panel")
    page.click("#grid-toggle")
    wait_painted(page, "lens-panel", before)
    grid = plot_z(page, "lens-grid")
    assert len(grid) == 2 and len(grid[0]) == len(expected["tokens_clean"])
    assert page.get_attribute("#grid-toggle", "aria-pressed") == "true" and query(page)["grid"] == "1"
    page.set_viewport_size({"width": 1280, "height": 720})
    page.screenshot(path=str(artifacts / "trace-tiny-1280.png"))


def test_click_token_shows_every_heads_attention_from_it(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_trace(page, tiny_server.url, IOI)
    wait_painted(page, "lens-panel")
    page.click("#clean-tokens .t >> nth=9")
    wait_painted(page, "token-panel")
    assert query(page)["tok"] == "9"
    att = post(tiny_server.url, "/api/attention_from", {"text": CLEAN, "query_pos": 9})
    spans = page.locator("#token-text .t")
    assert spans.count() == len(att["tokens"])
    assert "query" in (spans.nth(9).get_attribute("class") or "")

    def shown() -> list[float]:
        weights = page.eval_on_selector_all("#token-text .t", "s => s.filter(x => x.dataset.w).map(x => x.dataset.w)")
        return [float(w) for w in weights]

    # layer 0, mean over heads: the weights of tokens 0..9 (nothing after the query), summing to 1
    mean = [sum(att["weights"][0][h][k] for h in range(4)) / 4 for k in range(10)]
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(shown(), mean, strict=True))
    # one head of layer 1
    page.click("#layer-next")
    page.click('#token-heads .head-chip[data-head="2"]')
    assert page.get_attribute('#token-heads .head-chip[data-head="2"]', "aria-pressed") == "true"
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(shown(), att["weights"][1][2][:10], strict=True))
    assert query(page)["tl"] == "1" and query(page)["th"] == "2"
    # every head of layer 1 at once: heads × tokens up to the query
    assert close(plot_z(page, "token-layer-plot"), [row[:10] for row in att["weights"][1]])
    # the per-layer lens for that position: target = the next token (·gave)
    assert "·gave" in page.inner_text("#token-lens-caption")
    assert page.locator("#token-lens-table tbody tr").count() == 3  # 2 blocks and the embeddings
    # keyboard: → moves the query token
    before = painted(page, "token-panel")
    page.focus("#token-text")
    page.keyboard.press("ArrowRight")
    wait_painted(page, "token-panel", before)
    assert query(page)["tok"] == "10"
    # a token click is a history entry; Back moves the token view only (the patching panel is not redrawn)
    wait_painted(page, "patch-panel")
    patch_paints = painted(page, "patch-panel")
    before = painted(page, "token-panel")
    page.click("#clean-tokens .t >> nth=4")
    wait_painted(page, "token-panel", before)
    before = painted(page, "token-panel")
    page.go_back()
    wait_painted(page, "token-panel", before)
    assert query(page)["tok"] == "10"
    assert painted(page, "patch-panel") == patch_paints
    page.screenshot(path=str(artifacts / "trace-tiny-token.png"))


def test_head_click_opens_the_head_view_with_it_switched_off(page: Any, tiny_server: Server) -> None:
    open_trace(page, tiny_server.url, IOI)
    wait_painted(page, "patch-panel")
    link = page.locator("#top-heads a").first
    label = link.inner_text()
    assert query_of(link.get_attribute("href")) == {"text": CLEAN, "head": label, "mask": label}
    x, y = cell_center(page, "patch-plot", row=1, col=2, n_rows=2, n_cols=4)
    trace_url = page.url
    with page.expect_navigation():
        page.mouse.click(x, y)
    assert page.url.split("?")[0].endswith("/")
    assert query(page) == {"text": CLEAN, "head": "L1H2", "mask": "L1H2"}
    page.wait_for_selector("body[data-ready]")
    page.go_back()
    assert page.url == trace_url


def query_of(href: str | None) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(href or "").query).items()}


def test_unequal_lengths_show_in_the_error_bar(page: Any, tiny_server: Server) -> None:
    page.watch.allow("422")
    open_trace(page, tiny_server.url)
    page.fill("#clean", CLEAN)
    page.fill("#corrupted", "When Mary and John went to the big store, Mary gave a drink to")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error-text")
    assert "14" in text and "15" in text, text
    assert "patching needs the same number" in page.inner_text("#summary")
    wait_painted(page, "dla-panel")  # the rest of the page still works on the clean prompt


def test_url_restores_the_view_and_back_forward_work(page: Any, tiny_server: Server) -> None:
    open_trace(page, tiny_server.url, {**IOI, "dir": "noise", "tok": "3", "tl": "1", "th": "0"})
    wait_painted(page, "patch-panel")
    wait_painted(page, "token-panel")
    assert page.input_value("#clean") == CLEAN and page.input_value("#corrupted") == CORRUPTED
    assert page.get_attribute('#direction button[data-dir="noise"]', "aria-pressed") == "true"
    assert page.get_attribute('#token-heads .head-chip[data-head="0"]', "aria-pressed") == "true"
    assert page.input_value("#token-layer") == "1"
    assert "query" in (page.locator("#clean-tokens .t").nth(3).get_attribute("class") or "")
    noise = post(tiny_server.url, "/api/patch", {**IOI, "direction": "noise"})
    assert close(plot_z(page, "patch-plot"), noise["scores"])
    # a deliberate step (denoise) is a history entry; Back returns to noise and redraws it
    before = painted(page, "patch-panel")
    page.click('#direction button[data-dir="denoise"]')
    wait_painted(page, "patch-panel", before)
    assert "dir" not in query(page)
    before = painted(page, "patch-panel")
    page.go_back()
    wait_painted(page, "patch-panel", before)
    assert query(page)["dir"] == "noise"
    assert page.get_attribute('#direction button[data-dir="noise"]', "aria-pressed") == "true"
    assert close(plot_z(page, "patch-plot"), noise["scores"])
    page.go_forward()
    page.wait_for_selector('#direction button[data-dir="denoise"][aria-pressed="true"]')


@pytest.mark.slow
def test_default_model_ioi_trace(page: Any, smollm: Server, artifacts: Path) -> None:
    """All 270 heads patched on SmolLM2-135M, residual stream too; screenshots at two window sizes."""
    open_trace(page, smollm.url, {**IOI, "res": "1", "tok": "10", "tl": "9"})
    for panel in ("lens-panel", "dla-panel", "patch-panel", "token-panel"):
        # 270 heads and 30 × 14 residual sites patched on the real model: ~25 s on a quiet 2-core machine,
        # far longer when other work shares it
        wait_painted(page, panel, timeout_s=420)
    assert page.get_attribute("#patch-plot", "data-cells") == str(30 * 9)
    residual = plot_z(page, "residual-plot")
    assert len(residual) == 30 and len(residual[0]) == page.locator("#clean-tokens .t").count()
    assert page.locator("#lens-table tbody tr").count() == 30 + 1  # every block and the embeddings
    # the curve's layer ticks, "emb" first, do not run into each other (rotated or not)
    ticks = page.eval_on_selector_all(
        "#lens-plot .xtick text",
        "ts => ts.map(t => { const r = t.getBoundingClientRect(); return [r.left, r.right]; })",
    )
    assert len(ticks) >= 5 and page.locator("#lens-plot .xtick text").first.text_content() == "emb"
    assert all(left[1] <= right[0] for left, right in zip(sorted(ticks), sorted(ticks)[1:], strict=False)), ticks
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(400)  # Plotly's responsive relayout
        page.screenshot(path=str(artifacts / f"trace-smollm-{width}.png"))
        page.eval_on_selector("main.trace", "el => el.scrollTo(0, el.scrollHeight)")
        page.wait_for_timeout(200)
        page.screenshot(path=str(artifacts / f"trace-smollm-{width}-bottom.png"))
        page.eval_on_selector("main.trace", "el => el.scrollTo(0, 0)")


def test_noise_ranks_heads_by_their_effect_and_centres_the_colour_on_no_change(page: Any, tiny_server: Server) -> None:
    """In "noise" 1 means no change: Top heads, the per-position "top 5" and the colour all measure |1 − score|."""
    noise = post(tiny_server.url, "/api/patch", {**IOI, "direction": "noise"})
    heads = [(s, f"L{layer}H{head}") for layer, row in enumerate(noise["scores"]) for head, s in enumerate(row)]
    expected = [label for _, label in sorted(heads, key=lambda x: -abs(1 - x[0]))]
    assert expected != [label for _, label in sorted(heads, key=lambda x: -abs(x[0]))]  # the pair tells them apart
    open_trace(page, tiny_server.url, {**IOI, "dir": "noise"})
    wait_painted(page, "patch-panel")
    assert page.locator("#top-heads .head-link").all_inner_texts() == expected
    lo, hi, mid = page.eval_on_selector("#patch-plot", "el => [el.data[0].zmin, el.data[0].zmax, el.data[0].zmid]")
    assert mid == 1 and math.isclose(1 - lo, hi - 1)
    assert max(abs(1 - s) for row in noise["scores"] for s in row) == pytest.approx(hi - 1)
    legend = page.inner_text("#patch-legend")
    assert "1 = no change" in legend and "0 = " in legend
    # the per-position "top 5" picks the same heads
    before = painted(page, "patch-panel")
    page.click("#rows-top")
    wait_painted(page, "patch-panel", before)
    assert query(page)["rows"] == ",".join(expected[:5])
    # denoise: 0 is no change, the colour centred there
    before = painted(page, "patch-panel")
    page.click('#direction button[data-dir="denoise"]')
    wait_painted(page, "patch-panel", before)
    assert page.eval_on_selector("#patch-plot", "el => el.data[0].zmid") == 0
    legend = page.inner_text("#patch-legend")
    assert "0 = no change" in legend and "1 = " in legend


def test_dla_bar_click_opens_the_head_view_with_it_switched_off(page: Any, tiny_server: Server) -> None:
    """DLA's bars answer a click as patching's cells do (issue 26, item 8)."""
    open_trace(page, tiny_server.url, IOI)
    wait_painted(page, "dla-panel")
    dla = post(tiny_server.url, "/api/dla", {"text": CLEAN, "target": " Mary", "contrast": " John"})
    heads = [(abs(v), f"L{layer}H{head}") for layer, row in enumerate(dla["heads"]) for head, v in enumerate(row)]
    top = max(heads)[1]
    box = page.locator("#dla-heads .bars path").last.bounding_box()  # the largest effect: the top bar
    with page.expect_navigation():
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert query(page) == {"text": CLEAN, "head": top, "mask": top}


def layer_mask(layer: int, n_heads: int = 4) -> str:
    return ",".join(f"L{layer}H{h}" for h in range(n_heads))


# The screen point of a lens reading (block `layer`) in the middle of the curve's plot area.
LENS_POINT = """(el, layer) => {
  const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, r = el.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p(layer), r.top + ya._offset + ya._length / 2];
}"""


def test_lens_layer_click_opens_the_head_view_with_the_layer_switched_off(page: Any, tiny_server: Server) -> None:
    """A lens row or reading answers a click as a patching cell does, for the layer's heads (issue 26, item 8)."""
    scores = post(tiny_server.url, "/api/patch", IOI)["scores"]
    # the head view shows the layer's head of largest patching effect (denoise: |score|)
    top = [max(range(4), key=lambda h, row=row: abs(row[h])) for row in scores]
    open_trace(page, tiny_server.url, IOI)
    wait_painted(page, "lens-panel")
    wait_painted(page, "patch-panel")
    assert page.locator("#lens-table tbody tr[data-layer]").count() == 2  # the embeddings' row is no layer
    row = page.locator('#lens-table tbody tr[data-layer="1"]')
    expected = {"text": CLEAN, "head": f"L1H{top[1]}", "mask": layer_mask(1)}
    assert query_of(row.locator("a").get_attribute("href")) == expected  # a link too: keyboard, a new tab
    trace_url = page.url
    with page.expect_navigation():
        row.locator("td").nth(2).click()
    assert query(page) == expected
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function("() => document.querySelectorAll('#grid .cell.masked').length === 4")
    masked = page.eval_on_selector_all("#grid .cell.masked", "cs => cs.map(c => c.dataset.head)")
    assert sorted(masked) == layer_mask(1).split(",")
    page.go_back()
    assert page.url == trace_url
    wait_painted(page, "lens-panel")
    wait_painted(page, "patch-panel")
    # the curve: block 0's reading
    x, y = page.eval_on_selector("#lens-plot", LENS_POINT, 0)
    with page.expect_navigation():
        page.mouse.click(x, y)
    assert query(page) == {"text": CLEAN, "head": f"L0H{top[0]}", "mask": layer_mask(0)}
    page.wait_for_selector("body[data-ready]")
    page.go_back()
    wait_painted(page, "patch-panel")
    # the layers × positions grid: a row is a layer
    before = painted(page, "lens-panel")
    page.click("#grid-toggle")
    wait_painted(page, "lens-panel", before)
    n_tokens = page.locator("#clean-tokens .t").count()
    x, y = cell_center(page, "lens-grid", row=1, col=3, n_rows=2, n_cols=n_tokens)
    with page.expect_navigation():
        page.mouse.click(x, y)
    assert query(page) == expected
    page.wait_for_selector("body[data-ready]")
    page.go_back()
    wait_painted(page, "patch-panel")
    # Shift: the layer's heads patched per position, as Shift on a patching cell adds that head's row
    before = painted(page, "patch-panel")
    page.locator('#lens-table tbody tr[data-layer="1"] td').nth(1).click(modifiers=["Shift"])
    wait_painted(page, "patch-panel", before)
    assert page.url.split("?")[0].endswith("/trace") and query(page)["rows"] == layer_mask(1)
    per_position = post(
        tiny_server.url, "/api/patch", {**IOI, "by_position": [{"layer": 1, "head": h} for h in range(4)]}
    )
    assert close(plot_z(page, "rows-plot"), [r["scores"] for r in per_position["position_scores"]])


TRACE_APIS = {"/api/patch", "/api/dla", "/api/logit_lens", "/api/attention_from"}
PANELS = ("lens-panel", "dla-panel", "patch-panel", "token-panel")


def test_back_to_the_trace_draws_the_kept_answers_without_asking_again(page: Any, tiny_server: Server) -> None:
    """Back to /trace, or a reload, draws each panel from the tab's answers: none is asked again (issue 26, item 8)."""
    open_trace(page, tiny_server.url, {**IOI, "res": "1", "grid": "1", "tok": "9"})
    for panel in PANELS:
        wait_painted(page, panel)
    asked: list[str] = []

    def watch(request: Any) -> None:
        path = urlparse(request.url).path
        if path in TRACE_APIS:
            asked.append(path)

    page.on("request", watch)
    with page.expect_navigation():
        page.locator("#top-heads a").first.click()
    page.wait_for_selector("body[data-ready]")
    expected = post(tiny_server.url, "/api/patch", {**IOI, "residual": True})
    lens = post(tiny_server.url, "/api/logit_lens", {"text": CLEAN, "target": " Mary", "top_k": 1, "grid": True})
    att = post(tiny_server.url, "/api/attention_from", {"text": CLEAN, "query_pos": 9})

    def shown_without_asking() -> None:
        for panel in PANELS:
            wait_painted(page, panel)
        assert asked == []
        assert close(plot_z(page, "patch-plot"), expected["scores"])
        assert close(plot_z(page, "residual-plot"), expected["residual_scores"])
        assert page.get_attribute("#dla-heads", "data-bars") == "8"
        assert page.locator("#lens-table tbody tr").count() == 3
        assert close(plot_z(page, "lens-grid"), lens["grid"]["top_probs"])
        assert close(plot_z(page, "token-layer-plot"), [row[:10] for row in att["weights"][0]])

    page.go_back()
    page.wait_for_selector("body[data-ready]")
    shown_without_asking()
    page.reload()  # a reload never comes from the back-forward cache: the page starts again, from the tab's answers
    page.wait_for_selector("body[data-ready]")
    shown_without_asking()
    # a question not asked before is asked, and only that one
    before = painted(page, "patch-panel")
    page.click('#direction button[data-dir="noise"]')
    wait_painted(page, "patch-panel", before)
    assert asked == ["/api/patch"]


KEEP = """async () => {
  const { SessionMemo } = await import("/static/js/trace/memo.js");
  const ours = () => Object.keys(sessionStorage).filter((k) => k.startsWith("headscope:trace:")).sort();
  sessionStorage.clear();
  const memo = new SessionMemo(6, 100); // 6 answers in memory, 100 characters of them stored
  memo.open("model a");
  for (let i = 0; i < 10; i++) memo.set(`k${i}`, { v: "x".repeat(30) }); // 38 characters of JSON each
  const stored = ours();
  const inMemory = [...memo.entries.keys()];
  const again = new SessionMemo(6, 100);
  again.open("model a");
  const kept = [...again.entries.keys()].map((k) => [k, again.get(k).v.length]);
  const other = new SessionMemo(6, 100);
  other.open("model b");
  const afterOther = [other.size, ours().length - 1];
  const big = new SessionMemo(6, Infinity); // over the browser's own quota: the oldest go, the newest stays
  big.open("model b");
  for (let i = 0; i < 3; i++) big.set(`b${i}`, "y".repeat(4_000_000));
  const last = new SessionMemo(6, Infinity);
  last.open("model b");
  return { stored, inMemory, kept, other: afterOther, big: [...last.entries.keys()] };
}"""


def test_kept_answers_stay_within_their_budget_and_their_model(page: Any, tiny_server: Server) -> None:
    open_trace(page, tiny_server.url)
    kept = page.evaluate(KEEP)
    # memory keeps the last 6; 100 characters store the last two, read back whole by the next page
    assert kept["inMemory"] == [f"k{i}" for i in range(4, 10)]
    assert kept["stored"] == ["headscope:trace:index", "headscope:trace:k8", "headscope:trace:k9"]
    assert kept["kept"] == [["k8", 30], ["k9", 30]]
    assert kept["other"] == [0, 0]  # another model's answers are dropped, from storage too
    assert kept["big"] and kept["big"][-1] == "b2" and len(kept["big"]) < 3
