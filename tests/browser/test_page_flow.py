"""The page as a new user meets it (issue 15): live counts, honest labels, history, feedback, keyboard, layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import (
    click_head,
    delay_requests,
    download,
    grid_top,
    open_app,
    painted,
    query,
    run_prompt,
    show_head,
    wait_repaint,
)
from tests.support.server import Server

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat"  # "·cat" and "·The"… repeat: induction on the text exists
NO_REPEAT = "One two three four"


def count_shown(page: Any) -> str:
    page.wait_for_function("() => !document.querySelector('#token-count').classList.contains('counting')")
    return str(page.inner_text("#token-count"))


def test_first_load_runs_the_example_and_counts_live(page: Any, tiny_server: Server) -> None:
    page.watch.allow("status of 422")  # /api/tokenize refuses a text over the limit, saying how long it is
    open_app(page, tiny_server.url)
    # item 12: the pre-filled example has been run: grid, prediction and count are there
    assert page.locator("#grid .cell").count() == 8
    assert page.get_attribute("#prediction", "data-state") == "baseline"
    assert len(page.locator("#topk .top-col >> nth=0 >> .tok").all_text_contents()) == 10
    assert "text" in query(page)
    # item 2: the counter follows the typing, before any run, with a singular for one token
    page.fill("#prompt", "Hello")
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '1'")
    assert count_shown(page) == "1 token · not run yet (Enter)"
    page.fill("#prompt", "Hello world, again")
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '4'")
    assert count_shown(page).startswith("4 tokens")
    page.fill("#prompt", " w1" * 1900)  # 3,800 GPT-2 tokens: over the limit of 2,048, warned before running
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '3800'")
    assert "over this server's limit of 2,048" in page.inner_text("#token-count")
    page.fill("#prompt", " w1" * 950)  # 1,900 of 2,048: near the limit
    page.wait_for_function("() => document.querySelector('#token-count').dataset.tokens === '1900'")
    assert "near the limit" in page.inner_text("#token-count")
    assert page.locator("#token-count.near").count() == 1


def test_induction_on_the_text_beside_the_probe(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, NO_REPEAT)
    options = {
        o["value"]: o
        for o in page.eval_on_selector_all(
            "#color-by option",
            "os => os.map(o => ({value: o.value, text: o.textContent, title: o.title, disabled: o.disabled}))",
        )
    }
    assert options["induction"]["text"] == "induction (probe)" and "probe" in options["induction"]["title"]
    assert options["text_induction"]["disabled"] and "no token repeats" in options["text_induction"]["text"]

    def overlay(name: str) -> list[list[float]]:
        page.select_option("#color-by", name)
        page.wait_for_function("n => document.querySelector('.legend-name')?.textContent === n", arg=name_label[name])
        return list(json.loads(download(page, "#export-json"))["overlay"]["scores"])

    name_label = {"induction": "induction (probe)", "text_induction": "induction (this text)"}
    probe_a = overlay("induction")
    run_prompt(page, PROMPT)
    assert page.get_attribute('#color-by option[value="text_induction"]', "disabled") is None
    probe_b = overlay("induction")
    text_b = overlay("text_induction")
    assert probe_a == probe_b  # the probe does not depend on the text, and says so
    assert text_b != probe_b and all(0 <= v <= 1 for row in text_b for v in row)
    assert query(page)["color"] == "text_induction"
    show_head(page, "L1H0")
    assert "induction (this text)" in page.inner_text("#head-info")
    # a text without repeats cannot keep that overlay: the URL follows the page, and the legend says why
    run_prompt(page, NO_REPEAT)
    assert page.input_value("#color-by") == "none" and "color" not in query(page)
    assert "no token repeats" in page.inner_text("#legend")


def test_back_undoes_each_step(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    start = page.evaluate("history.length")
    run_prompt(page, PROMPT)
    show_head(page, "L1H2")
    click_head(page, "L0H1", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    page.click('.tabs button[data-view="similarity"]')
    page.wait_for_selector("#simplot[data-painted]")
    assert page.evaluate("history.length") == start + 4
    page.go_back()  # the view
    page.wait_for_function("() => !document.querySelector('#view-head').hidden")
    assert query(page).get("view") is None and query(page)["mask"] == "L0H1"
    page.go_back()  # the ablation
    page.wait_for_selector('#prediction[data-state="baseline"]')
    assert "mask" not in query(page) and page.locator(".cell.masked").count() == 0
    page.go_back()  # the head
    page.wait_for_function("() => !document.querySelector('.cell.selected')")
    assert "head" not in query(page)
    before = painted(page, "#grid")
    page.go_back()  # the run: the example comes back
    wait_repaint(page, "#grid", before)
    assert query(page)["text"].startswith("Mr and Mrs Dursley")
    assert page.input_value("#prompt").startswith("Mr and Mrs Dursley")
    assert page.url.startswith(tiny_server.url)  # still the app, not about:blank
    page.go_forward()
    page.wait_for_function("t => new URLSearchParams(location.search).get('text') === t", arg=PROMPT)
    page.wait_for_function("t => document.querySelector('#prompt').value === t", arg=PROMPT)


@pytest.mark.parametrize("bad", ["0", "-3", "2.5", "", "999"])
def test_keep_top_k_refuses_what_it_cannot_do(page: Any, tiny_server: Server, bad: str) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.fill("#keep-k", bad)
    page.click("#keep-top")
    assert page.get_attribute("#keep-k", "aria-invalid") == "true"
    assert page.inner_text("#keep-msg") == "k must be a whole number from 1 to 8"
    assert "mask" not in query(page) and page.locator(".cell.masked").count() == 0
    page.fill("#keep-k", "3")
    page.click("#keep-top")
    page.wait_for_function("() => new URLSearchParams(location.search).get('mask')?.split(',').length === 5")
    assert page.get_attribute("#keep-k", "aria-invalid") == "false"


def test_long_run_shows_progress_and_old_results_are_stale(page: Any, tiny_server: Server, artifacts: Path) -> None:
    delay_requests(page, "/api/overview", 1500)
    open_app(page, tiny_server.url)
    page.fill("#prompt", PROMPT)
    page.press("#prompt", "Enter")
    page.wait_for_selector("#progress:not([hidden])")
    assert "Running the model on" in page.inner_text("#progress-text")
    assert page.is_disabled("#run")
    for panel in ("#grid-scroll", "#prediction", "#view-panel"):
        assert page.eval_on_selector(panel, "e => e.inert && e.classList.contains('stale')"), panel
    page.screenshot(path=str(artifacts / "tiny-running.png"))
    page.click("#progress-cancel")  # cancel: back to the last good run, usable
    assert page.is_hidden("#progress") and page.is_enabled("#run")
    assert page.eval_on_selector("#grid-scroll", "e => e.inert") is False
    assert query(page)["text"].startswith("Mr and Mrs")
    assert page.is_hidden("#error")


def test_one_token_prompt_draws_nothing_false(page: Any, tiny_server: Server) -> None:
    page.watch.allow("status of 422")
    open_app(page, tiny_server.url)
    run_prompt(page, "Hello")
    click_head(page, "L0H0", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    # Δ loss is undefined for one token: no "better" colour for "–"
    delta = page.locator("#metrics .stat >> nth=2")
    assert delta.inner_text().endswith("–") and delta.get_attribute("class").split() == ["stat"]
    page.click('.tabs button[data-view="similarity"]')
    page.wait_for_selector("#simplot .empty")
    assert "one token" in page.inner_text("#simplot") and page.is_hidden("#collapse")
    # importance needs two tokens: offered as such, and a forced request shows its error instead of failing silently
    assert page.get_attribute('#color-by option[value="importance"]', "disabled") is not None
    page.evaluate(
        "() => { const s = document.querySelector('#color-by'); "
        "s.querySelector('[value=importance]').disabled = false; "
        "s.value = 'importance'; s.dispatchEvent(new Event('change')); }"
    )
    page.wait_for_selector("#error:not([hidden])")
    assert "needs at least 2 tokens" in page.inner_text("#error-text")  # in words; the code is data-code
    assert page.get_attribute("#error", "data-code") == "invalid_input"


def test_compare_outline_only_in_compare_mode_and_similarity_by_kv_group(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    show_head(page, "L1H0")
    before = painted(page, "#heatmap")
    click_head(page, "L1H3", modifiers=["Alt"])
    wait_repaint(page, "#heatmap", before)
    assert page.locator(".cell.compare").count() == 1
    page.click('#head-mode button[data-mode="single"]')
    assert page.locator(".cell.compare").count() == 0  # no stale dashed outline
    assert page.get_attribute('#head-mode button[data-mode="single"]', "aria-pressed") == "true"
    page.click('.tabs button[data-view="similarity"]')
    page.wait_for_selector("#simplot[data-painted]")
    assert page.is_disabled("#scope-kv")
    before = painted(page, "#simplot")
    page.select_option("#scope", "1")
    wait_repaint(page, "#simplot", before)
    before = painted(page, "#simplot")
    page.select_option("#scope-kv", "1")  # the tiny llama's KV1 is read by H2 and H3
    wait_repaint(page, "#simplot", before)
    assert page.locator("#simplot .xtick text").all_text_contents() == ["L1H2", "L1H3"]
    assert (query(page)["scope"], query(page)["kv"]) == ("1", "1")
    data = json.loads(download(page, "#export-json"))
    assert data["similarity"]["kv_head"] == 1 and [h["head"] for h in data["similarity"]["heads"]] == [2, 3]


def test_legend_and_chips_never_move_the_grid(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    top = grid_top(page)
    page.select_option("#color-by", "entropy")
    page.wait_for_selector(".legend-name")
    assert grid_top(page) == top
    for label in ("L1H3", "L0H2", "L1H0", "L0H0", "L0H3", "L1H1", "L0H1"):
        click_head(page, label, modifiers=["Shift"])
    page.wait_for_function("() => document.querySelectorAll('.cell.masked').length === 7")
    assert grid_top(page) == top
    chips = [c.replace(" ×", "") for c in page.locator("#mask-chips .chip-off").all_inner_texts()]
    assert chips == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0", "L1H1", "L1H3"]  # layer / head order


def test_keyboard_only_from_the_prompt_to_switching_a_head_off(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    page.focus("#prompt")
    page.keyboard.press("Control+A")
    page.keyboard.type(PROMPT)
    before = painted(page, "#grid")
    page.keyboard.press("Enter")
    wait_repaint(page, "#grid", before)
    presses = 0
    while not page.evaluate("() => document.activeElement.classList.contains('cell')"):
        page.keyboard.press("Tab")
        presses += 1
        assert presses < 30, "the grid is not reachable by Tab"
    assert page.evaluate("document.activeElement.dataset.head") == "L0H0"
    assert page.locator('#grid .cell[tabindex="0"]').count() == 1  # one tab stop for the whole grid
    assert "L0H0" in page.inner_text("#grid-info")  # focus shows what hover shows
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.head") == "L1H1"
    assert "L1H1 · KV0 · entropy" in page.inner_text("#grid-info")
    # the focus ring is not the "selected" outline
    ring = page.evaluate("() => getComputedStyle(document.activeElement).boxShadow")
    assert "250, 204, 21" in ring
    before = painted(page, "#heatmap")
    page.keyboard.press("Enter")  # inspect
    wait_repaint(page, "#heatmap", before)
    assert query(page)["head"] == "L1H1"
    page.keyboard.press("Shift+Enter")  # switch it off
    page.wait_for_selector('#prediction[data-state="ablated"]')
    assert query(page)["mask"] == "L1H1"
    assert "switched off" in (page.evaluate("document.activeElement.getAttribute('aria-label')") or "")
    metrics = page.inner_text("#metrics")
    assert "loss, 1 off" in metrics and "KL last" in metrics
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Alt+Enter")  # compare L1H0 with L1H1
    page.wait_for_selector('#heatmap[data-heads="L1H1,L1H0"]')
    page.keyboard.press("Tab")  # out of the grid in one press
    assert not page.evaluate("() => document.activeElement.classList.contains('cell')")
    page.screenshot(path=str(artifacts / "tiny-keyboard.png"))
    # the tabs: roving too, with aria-selected
    page.focus('.tabs button[data-view="head"]')
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("#simplot[data-painted]")
    assert page.get_attribute('.tabs button[data-view="similarity"]', "aria-selected") == "true"
    assert page.get_attribute('.tabs button[data-view="head"]', "tabindex") == "-1"


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
def test_side_by_side_fits_the_screen(page: Any, tiny_server: Server, artifacts: Path, size: tuple[int, int]) -> None:
    w, h = size
    page.set_viewport_size({"width": w, "height": h})
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.screenshot(path=str(artifacts / f"tiny-{w}x{h}-single.png"))
    show_head(page, "L1H0")
    click_head(page, "L0H1", modifiers=["Shift"])
    page.wait_for_selector('#prediction[data-state="ablated"]')
    for mode, n in (("compare", 2), ("diff", 3)):
        if mode == "compare":
            click_head(page, "L1H3", modifiers=["Alt"])
        else:
            page.click('#head-mode button[data-mode="diff"]')
        page.wait_for_function("n => document.querySelectorAll('#heatmap .nsewdrag').length === n", arg=n)
        boxes = [page.locator("#heatmap .nsewdrag").nth(i).bounding_box() for i in range(n)]
        assert len({round(b["y"]) for b in boxes}) == 1, f"{mode}: panels not in one row"
        assert all(b["y"] + b["height"] <= h and b["x"] + b["width"] <= w for b in boxes), f"{mode}: below the fold"
        assert all(b["width"] >= 100 for b in boxes)
        page.screenshot(path=str(artifacts / f"tiny-{w}x{h}-{mode}.png"))
    nav = page.locator("nav.pages").bounding_box()
    assert nav["y"] + nav["height"] <= 60  # the page nav stays in the top bar


def test_narrow_window_brings_the_map_into_view(page: Any, tiny_server: Server, artifacts: Path) -> None:
    page.set_viewport_size({"width": 900, "height": 700})
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.screenshot(path=str(artifacts / "tiny-900x700-top.png"))
    top = "() => document.querySelector('#heatmap').getBoundingClientRect().top"
    assert page.evaluate(top) > 700 - 150  # one column: the map starts below the fold, under the grid
    show_head(page, "L1H2")
    page.wait_for_function(f"() => {{ const t = ({top})(); return t >= 0 && t < innerHeight - 100; }}")
    assert page.get_attribute("#heatmap", "data-heads") == "L1H2"  # the head just chosen is the one in view
    assert 0 <= page.evaluate(top) < 700 - 100
    page.screenshot(path=str(artifacts / "tiny-900x700-map.png"))


def test_keyboard_focus_keeps_the_heads_thumbnail(page: Any, tiny_server: Server, artifacts: Path) -> None:
    """The cell the arrow keys reach shows its ring around the thumbnail, not a blank square over it."""
    page.set_viewport_size({"width": 1280, "height": 720})
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.mouse.move(0, 0)
    inner = """(label) => {
      const r = document.querySelector(`#grid .cell[data-head="${label}"]`).getBoundingClientRect();
      return { x: r.x + 4, y: r.y + 4, width: r.width - 8, height: r.height - 8 };
    }"""
    box = page.evaluate(inner, "L1H1")
    unfocused = page.screenshot(clip=box)
    page.focus('#grid .cell[tabindex="0"]')
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.head") == "L1H1"
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")
    assert page.evaluate(inner, "L1H1") == box  # nothing moved
    assert page.screenshot(clip=box) == unfocused, "the focused cell paints over its thumbnail"
    # the ring is still there, outside the thumbnail
    assert "250, 204, 21" in page.evaluate("() => getComputedStyle(document.activeElement).boxShadow")
    # a switched-off head keeps its cross when focused
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector('#grid .cell[data-head="L1H1"].masked')
    page.mouse.move(0, 0)
    crossed = page.screenshot(clip=box)
    assert crossed != unfocused
    page.screenshot(path=str(artifacts / "tiny-keyboard-focus-1280.png"))
