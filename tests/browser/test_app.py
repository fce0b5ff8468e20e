"""The page against a real server with a tiny model (2 layers × 4 heads, 2 KV heads), in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from tests.browser.pages import (
    click_head,
    delay_requests,
    download,
    held,
    open_app,
    painted,
    query,
    run_prompt,
    show_head,
    tick_labels,
    top_tokens,
    wait_repaint,
)
from tests.support.server import Server

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat"
PROMPT_TOKENS = ["The", "·cat", "·sat", "·on", "·the", "·mat", ".", "·The", "·cat"]


def test_enter_paints_one_cell_per_head_grouped_by_kv_head(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    assert "KV0" in page.inner_text("#model-card") and "H0 H1" in page.inner_text("#model-card")
    run_prompt(page, PROMPT)
    assert page.locator("#grid .cell").count() == 2 * 4
    assert page.locator("#grid .kv-head").all_inner_texts() == ["KV0", "KV1"]
    assert page.inner_text("#token-count") == f"{len(PROMPT_TOKENS)} tokens"
    # every thumbnail was drawn: the canvas is opaque inside each cell and shows some attention (not all white)
    drawn = page.eval_on_selector_all(
        "#grid .cell",
        """cells => {
          const ctx = document.querySelector('#grid canvas.thumbs').getContext('2d');
          return cells.filter(c => {
            const px = ctx.getImageData(c.offsetLeft + 4, c.offsetTop + 4, c.offsetWidth - 8, c.offsetHeight - 8).data;
            let alpha = true, ink = false;
            for (let i = 0; i < px.length; i += 4) { alpha &&= px[i + 3] === 255; ink ||= px[i] < 200; }
            return alpha && ink;
          }).length;
        }""",
    )
    assert drawn == 2 * 4
    assert query(page)["text"] == PROMPT
    page.screenshot(path=str(artifacts / "tiny-grid.png"))


def test_click_head_shows_its_map_with_token_labels_and_hover(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    asked: list[Any] = []
    page.on("request", lambda r: asked.append(r.post_data_json) if r.url.endswith("/api/attention") else None)
    show_head(page, "L1H2")
    assert asked and all(body["encoding"] == "f16" for body in asked)  # the page fetches the compact form
    assert page.get_attribute("#heatmap", "data-heads") == "L1H2"
    assert tick_labels(page, "x") == PROMPT_TOKENS
    assert tick_labels(page, "y") == PROMPT_TOKENS
    assert page.locator('.cell[data-head="L1H2"]').get_attribute("class").split().count("selected") == 1
    assert query(page)["head"] == "L1H2"
    # hover the cell (query ·mat, key ·cat): "query token → key token: weight"
    box = page.locator("#heatmap .nsewdrag").first.bounding_box()
    n = len(PROMPT_TOKENS)
    page.mouse.move(box["x"] + box["width"] * 1.5 / n, box["y"] + box["height"] * 5.5 / n)
    hover = page.locator("#heatmap .hoverlayer .hovertext").first
    hover.wait_for()
    shown = re.search(r"·mat \[5\] → ·cat \[1\]: (0\.\d{4})", hover.text_content() or "")
    assert shown
    plain = page.request.post(
        f"{tiny_server.url}/api/attention", data={"text": PROMPT, "heads": [{"layer": 1, "head": 2}]}
    )
    assert abs(float(shown[1]) - plain.json()["maps"][0]["weights"][5][1]) <= 1e-3  # decoded float16 ≈ the JSON
    page.screenshot(path=str(artifacts / "tiny-heatmap.png"))
    # log scale keeps the raw weight in the hover
    before = painted(page, "#heatmap")
    page.click('#scale button[data-scale="log"]')
    wait_repaint(page, "#heatmap", before)
    assert query(page)["scale"] == "log"


def test_float16_decoder_matches_numpy(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    values = np.array([0, 1, 0.5, 1 / 3, 6.1e-5, 6e-8, 3e-6, 65504, -2.5, -0.0, 1e-9], dtype="<f2")
    b64 = base64.b64encode(values.tobytes()).decode()
    got = page.evaluate("async (b) => Array.from((await import('/static/js/lib/decode.js')).decodeF16(b))", b64)
    assert got == [float(v) for v in values.astype(np.float32)]  # subnormals, the largest half and signs exact


def test_switching_a_head_off_changes_the_prediction_and_the_url(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    assert page.get_attribute("#prediction", "data-state") == "baseline"
    baseline = page.inner_text("#metrics")
    click_head(page, "L0H1", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert query(page)["mask"] == "L0H1"
    assert "masked" in (page.get_attribute('.cell[data-head="L0H1"]', "class") or "")
    assert float(page.get_attribute("#prediction", "data-kl") or "nan") > 0
    assert page.inner_text("#metrics") != baseline
    assert len(top_tokens(page, 1)) == 10
    # the chip switches it back on
    page.click("#mask-chips .chip-off")
    page.wait_for_selector('#prediction[data-state="baseline"]')
    assert "mask" not in query(page)
    assert page.inner_text("#metrics") == baseline


def test_rapid_toggles_cancel_stale_requests(page: Any, tiny_server: Server) -> None:
    delay_requests(page, "/api/ablate", 400)  # each toggle's request is still pending when the next click comes
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    for label in ("L0H0", "L0H3", "L1H1", "L1H2"):
        click_head(page, label, modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert page.inner_text("#topk .top-col >> nth=1 >> h3") == "4 heads off (zero)"
    assert set(query(page)["mask"].split(",")) == {"L0H0", "L0H3", "L1H1", "L1H2"}
    assert page.is_hidden("#error")  # an aborted request is not an error
    assert held(page) == {"started": 4, "aborted": 3}  # every stale request was cancelled, the last one was not


def test_a_failed_run_keeps_the_last_good_one_and_says_so(page: Any, tiny_server: Server) -> None:
    page.watch.allow("status of 422")
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    url = page.url
    page.fill("#prompt", " w1" * 2100)  # over the server's 2048-token limit
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '4200'")
    assert "over this server's limit of 2,048" in page.inner_text("#token-count")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "2048" in page.inner_text("#error-text") and "last good run (9 tokens)" in page.inner_text("#error-text")
    # the page, the address bar and the export still belong to the last good run, together
    assert page.url == url
    assert page.locator("#grid .cell").count() == 8
    assert page.is_hidden("#progress") and page.is_enabled("#run")
    assert page.eval_on_selector("#grid-scroll", "e => e.inert") is False  # usable again
    data = json.loads(download(page, "#export-json"))
    assert data["text"] == PROMPT and len(data["tokens"]) == len(PROMPT_TOKENS)
    run_prompt(page, PROMPT + " again")  # the next good run clears the message
    assert page.is_hidden("#error")
    assert query(page)["text"] == PROMPT + " again"


def test_reloading_the_url_restores_the_view(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    show_head(page, "L1H0")
    click_head(page, "L0H1", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    before = painted(page, "#heatmap")
    click_head(page, "L1H3", modifiers=["Alt"])
    wait_repaint(page, "#heatmap", before)
    assert page.get_attribute("#heatmap", "data-heads") == "L1H0,L1H3"
    page.select_option("#color-by", "induction")
    url = page.url
    predicted = page.inner_text("#topk")

    page.reload()
    page.wait_for_selector('#prediction[data-state="ablated"]')
    page.wait_for_selector("#heatmap[data-painted]")
    assert page.url == url
    assert page.input_value("#prompt") == PROMPT
    assert page.get_attribute("#heatmap", "data-heads") == "L1H0,L1H3"
    assert "masked" in (page.get_attribute('.cell[data-head="L0H1"]', "class") or "")
    assert "selected" in (page.get_attribute('.cell[data-head="L1H0"]', "class") or "")
    assert "compare" in (page.get_attribute('.cell[data-head="L1H3"]', "class") or "")
    assert page.input_value("#color-by") == "induction"
    assert page.inner_text("#topk") == predicted
    page.screenshot(path=str(artifacts / "tiny-restored-compare.png"))


HOSTILE = 'Hi <img src=x onerror=alert(1)> and </script><script>alert(2)</script> "q" & <b>bold</b>'


def test_hostile_prompt_shows_literally_and_runs_nothing(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, HOSTILE)
    show_head(page, "L0H0")
    shown = HOSTILE.replace(" ", "·")
    assert page.text_content("#token-text") == shown
    assert "<img" in "".join(tick_labels(page, "x"))
    # nothing from the text became an element
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("b", has_text="bold").count() == 0
    assert page.locator("#token-text *:not(span):not(br)").count() == 0
    scripts = page.eval_on_selector_all("script", "els => els.map(e => [e.getAttribute('src'), e.textContent])")
    # only the page's own external scripts: none inline, none from the text
    assert scripts
    assert all(src and src.startswith(("/static/", "/vendor/")) and not text.strip() for src, text in scripts)
    # the same text arriving through the URL
    page.goto(f"{tiny_server.url}/?text={quote(HOSTILE)}&head=L0H1")
    page.wait_for_selector("#heatmap[data-painted]")
    assert page.input_value("#prompt") == HOSTILE
    assert page.text_content("#token-text") == shown
    page.screenshot(path=str(artifacts / "tiny-hostile.png"))
    assert page.watch.dialogs == []


def test_similarity_cell_opens_the_two_heads_side_by_side(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    before = painted(page, "#simplot")
    page.click('.tabs button[data-view="similarity"]')
    wait_repaint(page, "#simplot", before)
    assert query(page)["view"] == "similarity"
    assert len(page.locator("#simplot .xtick text").all_text_contents()) == 8
    page.screenshot(path=str(artifacts / "tiny-similarity.png"))
    before = painted(page, "#simplot")
    page.click('#metric button[data-metric="cosine"]')
    wait_repaint(page, "#simplot", before)
    # row 1 (L0H1) × column 6 (L1H2) of the 8 × 8 matrix in layer order
    box = page.locator("#simplot .nsewdrag").first.bounding_box()
    before = painted(page, "#heatmap")
    page.mouse.click(box["x"] + box["width"] * 6.5 / 8, box["y"] + box["height"] * 1.5 / 8)
    wait_repaint(page, "#heatmap", before)
    assert page.get_attribute("#heatmap", "data-heads") == "L0H1,L1H2"
    q = query(page)
    assert (q.get("view"), q["mode"], q["head"], q["cmp"]) == (None, "compare", "L0H1", "L1H2")


def test_layer_kv_group_and_top_k_buttons(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    show_head(page, "L1H1")

    def mask() -> set[str]:
        m = query(page).get("mask")
        return set(m.split(",")) if m else set()

    page.click("#ablate-layer")
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert mask() == {"L1H0", "L1H1", "L1H2", "L1H3"}
    page.click("#ablate-layer")
    assert mask() == set()
    page.click("#ablate-kv")  # the tiny llama's KV groups are [0, 1] and [2, 3]
    assert mask() == {"L1H0", "L1H1"}
    page.click("#reset")
    assert mask() == set()
    page.fill("#keep-k", "3")
    page.click("#keep-top")
    page.wait_for_function("() => new URLSearchParams(location.search).get('mask')?.split(',').length === 5")
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert page.locator(".cell.masked").count() == 5


def test_overlays_and_exports(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.select_option("#color-by", "importance")
    page.wait_for_selector(".legend-name")
    assert page.inner_text(".legend-name") == "importance (gradient)"
    assert page.get_attribute('.cell[data-head="L0H0"]', "style").count("--overlay") == 1
    show_head(page, "L0H2")
    data = json.loads(download(page, "#export-json"))
    assert data["text"] == PROMPT and data["heatmap"]["panels"][0]["title"] == "L0H2"
    assert len(data["heatmap"]["panels"][0]["weights"]) == len(PROMPT_TOKENS)
    # the overlay on screen and the importance scores behind it travel with the export
    assert data["overlay"]["name"] == "importance" and data["overlay"]["label"] == "importance (gradient)"
    assert data["overlay"]["scores"] == data["scores"]["importance"]
    assert len(data["overlay"]["scores"]) == 2 and len(data["overlay"]["scores"][0]) == 4
    assert data["similarity"] is None  # not on screen
    for button in ("#heat-png", "#grid-png"):
        assert download(page, button)[:8] == b"\x89PNG\r\n\x1a\n"
    for button in ("#heat-svg", "#grid-svg"):
        svg = download(page, button).decode()
        assert svg.lstrip().startswith(("<svg", "<?xml")) and "</svg>" in svg
    grid_svg = download(page, "#grid-svg").decode()
    assert grid_svg.count("<image") == 8 and ">L1<" in grid_svg and ">H3<" in grid_svg
    assert 'class="off"' not in grid_svg
    page.click('.tabs button[data-view="similarity"]')
    page.wait_for_selector("#simplot[data-painted]")
    for button in ("#sim-svg", "#collapse-svg"):
        assert "</svg>" in download(page, button).decode()
    assert download(page, "#sim-png")[:4] == b"\x89PNG"
    data = json.loads(download(page, "#export-json"))
    assert data["heatmap"] is None and len(data["similarity"]["heads"]) == 8


def test_a_switched_off_head_is_crossed_out_in_the_grid_export(page: Any, tiny_server: Server) -> None:
    """As on screen (issue 26, item 8); on the head view, where the grid is drawn."""
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    click_head(page, "L1H2", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    grid_svg = download(page, "#grid-svg").decode()
    assert grid_svg.count('class="off"') == 1
    off = grid_svg.split('data-head="L1H2"')[1].split("</g>")[0]
    assert 'class="off"' in off and "<path" in off and 'stroke="#dc2626"' in off


def test_512_tokens_stay_usable(page: Any, tiny_server: Server, artifacts: Path) -> None:
    text = " ".join(f"w{i % 50}" for i in range(256))  # 512 GPT-2 tokens: " w" + digits
    open_app(page, tiny_server.url)
    run_prompt(page, text)
    assert page.inner_text("#token-count") == "512 tokens"
    show_head(page, "L1H1")
    labels = tick_labels(page, "x")
    assert 8 <= len(labels) <= 80  # thinned, not 512 overlapping labels
    # the page answers input promptly while the big map is on screen
    elapsed = page.evaluate(
        "() => new Promise(r => { const t = performance.now(); "
        "requestAnimationFrame(() => r(performance.now() - t)); })"
    )
    assert elapsed < 1000
    page.screenshot(path=str(artifacts / "tiny-512-tokens.png"))
