"""The page with the real default model (SmolLM2-135M: 30 layers × 9 heads, 3 KV heads)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import click_head, open_app, query, run_prompt, show_head, tick_labels, top_tokens
from tests.support.server import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPEATED = (
    "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal. "
    "Mr and Mrs Dursley, of number four, Privet"
)


def api_tokens(url: str, text: str) -> list[str]:
    req = urllib.request.Request(
        url + "/api/attention",
        data=json.dumps({"text": text, "heads": [{"layer": 0, "head": 0}]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        tokens: list[str] = json.load(r)["tokens"]
    return tokens


def test_default_model_grid_heatmap_and_live_ablation(page: Any, smollm: Server, artifacts: Path) -> None:
    open_app(page, smollm.url)
    assert "GQA, 3 query heads per KV head" in page.inner_text("#model-card")
    run_prompt(page, REPEATED)
    assert page.locator("#grid .cell").count() == 30 * 9
    assert page.locator("#grid .kv-head").all_inner_texts() == ["KV0", "KV1", "KV2"]
    page.select_option("#color-by", "induction")
    page.wait_for_selector(".legend-name")
    # the strongest induction head (L18H6 for SmolLM2-135M) gets the top colour of the overlay ramp
    top = page.locator('.cell[data-head="L18H6"]')
    assert top.evaluate("c => getComputedStyle(c).getPropertyValue('--overlay')").strip() == "rgb(128, 0, 38)"
    top.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "smollm-grid-induction.png"))

    show_head(page, "L4H3")
    tokens = api_tokens(smollm.url, REPEATED)
    shown = [t.replace(" ", "·") for t in tokens]
    labels = tick_labels(page, "x")
    assert labels and all(label in shown for label in labels) and labels[0] == shown[0]

    baseline = top_tokens(page, 0)
    assert baseline[0] == "·Drive"  # the induction copy of the earlier phrase
    click_head(page, "L4H3", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert query(page)["mask"] == "L4H3"
    assert float(page.get_attribute("#prediction", "data-kl") or "nan") > 0
    # an earlier head can change L4H3's own map: before / after / difference
    click_head(page, "L2H4", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    page.click('#head-mode button[data-mode="diff"]')
    page.wait_for_selector('#heatmap[data-heads="L4H3 before,after (2 off),after − before"]')
    assert page.is_hidden("#head-note")
    page.screenshot(path=str(artifacts / "smollm-heatmap-diff.png"))


def test_a_shared_link_scrolls_the_grid_to_its_head(page: Any, smollm: Server, artifacts: Path) -> None:
    """head=L28H4 in a link: the grid (30 layers, taller than a 720 px window) shows that cell (issue 26, item 8)."""
    page.set_viewport_size({"width": 1280, "height": 720})
    open_app(page, smollm.url, "text=The+cat+sat+on+the+mat.&head=L28H4")
    page.wait_for_selector('#grid .cell[data-head="L28H4"].selected')
    page.wait_for_selector("#heatmap[data-painted]")
    seen = """() => {
      const c = document.querySelector('#grid .cell[data-head="L28H4"]').getBoundingClientRect();
      const b = document.getElementById('grid-scroll').getBoundingClientRect();
      return c.top >= b.top && c.bottom <= b.bottom;
    }"""
    page.wait_for_function(seen)
    assert page.evaluate("() => document.getElementById('grid-scroll').scrollTop") > 0
    page.screenshot(path=str(artifacts / "smollm-link-head-1280.png"))
