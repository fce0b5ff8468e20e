"""Text fits at 1280×720: no token under 12 characters cut short, nothing wider than its panel, and no two labels
of a plot drawn over each other (the next-token lists, the corpus example cards, the logit-lens grid, the
lecture's trade-off charts). Each test measures the page; screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.browser.pages import open_app
from tests.support.server import Server

pytestmark = pytest.mark.browser

SMALL = {"width": 1280, "height": 720}
TRADEOFF = Path(__file__).with_name("smollm_head_tradeoff.json")  # GET /api/head_tradeoff of SmolLM2-135M

# Elements wider than the panel they sit in, unless a scrolling or clipping box between them holds them.
# Plotly's SVG clips its own content (checked by OVERLAPS instead).
OVERFLOW = """(sel) => {
  const out = [];
  const clips = (el) => getComputedStyle(el).overflowX !== "visible";
  for (const panel of document.querySelectorAll(sel)) {
    const p = panel.getBoundingClientRect();
    if (!p.width) continue;
    if (clips(panel) && panel.scrollWidth > panel.clientWidth + 1) out.push(`${panel.id}: scrolls sideways`);
    for (const el of panel.querySelectorAll("*")) {
      if (el.closest("svg")) continue;
      const r = el.getBoundingClientRect();
      if (!r.width || !r.height) continue;
      let a = el.parentElement;
      while (a && a !== panel && !clips(a)) a = a.parentElement;
      if (a !== panel) continue;
      const over = Math.max(r.right - p.right, p.left - r.left);
      if (over > 0.5) out.push(`${panel.id} > ${el.tagName.toLowerCase()}.${el.className}: ${over.toFixed(1)} px out`);
    }
  }
  return out;
}"""

# Pairs of text elements (SVG or HTML) whose boxes intersect by more than `slack` px both ways.
OVERLAPS = """([sel, slack]) => {
  const boxes = [...document.querySelectorAll(sel)]
    .filter((t) => t.textContent.trim())
    .map((t) => [t.textContent, t.getBoundingClientRect()])
    .filter(([, r]) => r.width && r.height);
  const out = [];
  boxes.forEach(([a, r], i) => boxes.slice(i + 1).forEach(([b, s]) => {
    const w = Math.min(r.right, s.right) - Math.max(r.left, s.left);
    const h = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
    if (w > slack && h > slack) out.push(`${a} × ${b}`);
  }));
  return out;
}"""

# Text cut short by its box: [text, text width, box width] of each element whose text is wider than its box
# (measured to the sub-pixel: scrollWidth rounds, and an ellipsis can hide a fraction of a pixel's overflow).
CLIPPED = """(sel) => [...document.querySelectorAll(sel)].map((t) => {
  const range = document.createRange();
  range.selectNodeContents(t);
  return [t.textContent, range.getBoundingClientRect().width, t.getBoundingClientRect().width];
}).filter(([, text, box]) => text > box + 0.01)"""


def overflow(page: Any, panels: str = ".panel") -> list[str]:
    return [str(x) for x in page.evaluate(OVERFLOW, panels)]


def overlaps(page: Any, selector: str, slack: float = 1.0) -> list[str]:
    return [str(x) for x in page.evaluate(OVERLAPS, [selector, slack])]


def test_next_token_lists_show_whole_tokens(page: Any, tiny_server: Server, artifacts: Path) -> None:
    text = "The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of"
    page.set_viewport_size(SMALL)
    open_app(page, tiny_server.url, urlencode({"text": text, "mask": "L0H0,L0H1,L1H2"}))
    page.wait_for_selector('#prediction[data-state="ablated"]')
    tokens = page.locator("#topk .tok").all_text_contents()
    assert len(tokens) == 20
    clipped = [c for c in page.evaluate(CLIPPED, "#topk .tok") if len(c[0]) <= 12]
    assert not clipped, f"tokens cut short: {clipped}"
    # the ▲ ▼ "new" marks sit beside the token, never over it
    assert not overlaps(page, "#topk .tok, #topk .move", slack=0)
    assert not overflow(page)
    page.screenshot(path=str(artifacts / "fits-heads-topk-1280.png"))


def test_corpus_example_cards_stay_in_their_panel(page: Any, tiny_server: Server, artifacts: Path) -> None:
    texts = [
        "When Mary and John went to the store, John gave a drink to Mary. " * 12,
        "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal. " * 8,
        "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\nprint(add(3, 4))\n" * 10,
    ]
    made = httpx.post(tiny_server.url + "/api/datasets", json={"name": "fits", "texts": texts}).json()
    body = {"dataset": made["id"], "analyses": ["roles"], "max_tokens": 256}
    job = httpx.post(tiny_server.url + "/api/jobs", json=body).json()

    def far_along(route: Any) -> None:
        """The examples as a large dataset gives them: text numbers and positions in the hundreds."""
        res = route.fetch().json()
        for k, ex in enumerate(res["examples"]):
            n = len(ex["tokens"])
            ex.update(text_index=1234 + k, query_pos=n - 2, key_pos=n - 3, score=1.25e-4)
        route.fulfill(json=res)

    page.route("**/examples?*", far_along)
    page.set_viewport_size(SMALL)
    page.goto(f"{tiny_server.url}/corpus?{urlencode({'job': job['id'], 'head': 'L1H3', 'metric': 'previous_token'})}")
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector("#head-body .cx", timeout=120_000)
    assert "text 1234 · query [" in page.inner_text("#head-body .cx-head")
    assert not overflow(page), overflow(page)
    page.eval_on_selector("#head-body .cx", "el => el.scrollIntoView()")
    page.screenshot(path=str(artifacts / "fits-corpus-examples-1280.png"))


def test_lens_grid_labels_do_not_overlap(page: Any, tiny_server: Server, artifacts: Path) -> None:
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    page.set_viewport_size(SMALL)
    page.goto(f"{tiny_server.url}/trace?{urlencode({'clean': clean, 'corrupted': corrupted, 'grid': '1'})}")
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function(
        "() => document.querySelector('#lens-grid .main-svg')"
        " && !document.getElementById('lens-panel').classList.contains('outdated')",
        timeout=120_000,
    )
    page.eval_on_selector("#lens-grid", "el => el.scrollIntoView()")
    # each cell's label and the layer labels (the token axis's labels are slanted: their boxes always meet)
    labels = "#lens-grid .heatmaplayer text, #lens-grid .ytick text"
    cell_labels = "() => document.querySelectorAll('#lens-grid .heatmaplayer text').length"
    assert not overlaps(page, labels), overlaps(page, labels)
    page.screenshot(path=str(artifacts / "fits-trace-lens-grid-1280.png"))
    # wider: the cells are labelled, each label cut to its cell
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_function(f"() => ({cell_labels})() > 0")
    assert not overlaps(page, labels), overlaps(page, labels)
    page.screenshot(path=str(artifacts / "fits-trace-lens-grid-1920.png"))
    # and narrow again: no label runs into its neighbour
    page.set_viewport_size(SMALL)
    page.wait_for_function(f"() => ({cell_labels})() === 0")
    assert not overlaps(page, labels), overlaps(page, labels)
    # the lens table's top tokens wrap instead of running off to the side
    sideways = "el => el.scrollWidth - el.clientWidth"
    assert page.eval_on_selector("#lens-panel .lens-table-wrap", sideways) <= 1
    assert not overflow(page)


def test_tradeoff_axis_labels_do_not_crowd(page: Any, tiny_server: Server, artifacts: Path) -> None:
    """The trade-off charts with the default model's 88 configurations (the tiny model has only a few)."""
    body = TRADEOFF.read_text()
    page.route("**/api/head_tradeoff", lambda route: route.fulfill(body=body, content_type="application/json"))
    page.set_viewport_size(SMALL)
    page.goto(f"{tiny_server.url}/lecture?{urlencode({'steps': '3', 'seeds': '1'})}")
    page.wait_for_selector("#tradeoff-panel[data-painted]")
    page.eval_on_selector("#tradeoff-plot", "el => el.scrollIntoView()")
    assert json.loads(body)["d_model"] == 576 and page.locator("#tradeoff-plot .xtick text").count() > 0
    # every label of both charts: ticks (the right-hand axis too), axis titles, the captions, the legend
    assert not overlaps(page, "#tradeoff-plot text", slack=0), overlaps(page, "#tradeoff-plot text", slack=0)
    assert not overflow(page)
    page.screenshot(path=str(artifacts / "fits-lecture-tradeoff-1280.png"))
