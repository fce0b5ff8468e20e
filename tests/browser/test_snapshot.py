"""Snapshots opened in headless Chromium with every request but file: aborted: the plots render, hover and head
switching work, nothing is requested, no console error. The same for notebook outputs (_repr_html_) embedded
in one page, and for the file the page's "Save as HTML" button downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import headscope
from tests.browser.pages import open_app, run_prompt, show_head
from tests.browser.test_trace import open_trace, run_example
from tests.support.server import Server

pytestmark = pytest.mark.browser
TEXT = "When Mary and John went to the store, John gave a drink to Mary. When Mary and John went"


def offline(page: Any) -> list[str]:
    """Abort every request that is not for a file: URL; returns the list of every URL the page asked for."""
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    return asked


def saved_and_opened_offline(page: Any, browser: Any, button: str, tmp_path: Path) -> tuple[Any, list[str], Path]:
    """Click a Save as HTML `button`, keep the file, open it in a fresh context with every request but file:
    aborted; returns (that page, every URL it asked for, the file)."""
    with page.expect_download() as download:
        page.click(button)
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    other = browser.new_context().new_page()
    asked = offline(other)
    other.goto(path.as_uri())
    other.wait_for_selector(".hs-snap[data-ready]")
    return other, asked, path


def hover_map(page: Any, nth: int = 0) -> str:
    """Hover the lower-left quarter of a view's first map (below the diagonal) and return Plotly's hover text."""
    root = page.locator(".hs-snap").nth(nth)
    box = root.locator(".hs-heatmap .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    hover = root.locator(".hs-heatmap .hoverlayer .hovertext").first
    hover.wait_for(state="visible")
    return str(hover.text_content())


@pytest.fixture(scope="module")
def scope(tiny_server: Server) -> headscope.Scope:
    return headscope.connect(tiny_server.url)


def test_a_snapshot_opens_offline_with_hover_and_head_switching(
    page: Any, scope: headscope.Scope, tmp_path: Path, artifacts: Path
) -> None:
    path = scope.snapshot(TEXT, heads=["L1H2", "L0H1"], similarity="js").save_html(tmp_path / "snap.html")
    asked = offline(page)
    page.goto(path.as_uri())
    page.wait_for_selector(".hs-snap[data-ready]")
    assert page.locator(".hs-heatmap").get_attribute("data-heads") == "L1H2"
    assert page.locator(".hs-similarity .main-svg").count() > 0 and page.locator(".grid canvas.thumbs").count() == 1
    assert " → " in hover_map(page)
    page.select_option(".hs-pick", "L0H1")
    page.wait_for_function("document.querySelector('.hs-heatmap').dataset.heads === 'L0H1'")
    page.click('.cell[data-head="L1H2"]')
    page.wait_for_function("document.querySelector('.hs-heatmap').dataset.heads === 'L1H2'")
    page.click('.cell[data-head="L0H0"]')  # not held: the view says so and keeps what it shows
    assert "L0H0: not in this snapshot" in page.locator(".hs-info").text_content()
    page.screenshot(path=str(artifacts / "snapshot-offline.png"), full_page=True)
    for section, name in ((".hs-maps", "headscope-L1H2.svg"), (".hs-sim", "headscope-similarity-js.svg")):
        with page.expect_download() as download:  # vector export: Plotly's own SVG, made in the browser
            page.click(f"{section} .hs-svg")
        assert download.value.suggested_filename == name
        svg = Path(download.value.path()).read_text()
        assert svg.startswith("<svg") and "<text" in svg  # text stays text (vectors), not a picture
    assert asked == [path.as_uri()]


def test_notebook_outputs_render_offline_with_plotly_sent_once(
    page: Any, scope: headscope.Scope, tmp_path: Path
) -> None:
    headscope.views.Notebook.plotly_sent = False
    first = scope.attention(TEXT, heads=["L0H3"])._repr_html_()
    second = scope.similarity(TEXT, "cosine")._repr_html_()
    assert len(first) > 1_000_000 > len(second)  # plotly.js (≈ 2 MB gzipped, base64) travels once
    path = tmp_path / "notebook.html"
    path.write_text(f"<!doctype html><meta charset='utf-8'><body>{first}<p>between</p>{second}</body>")
    asked = offline(page)
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.hs-snap[data-ready]').length === 2")
    assert " → " in hover_map(page, 0)
    assert page.locator(".hs-snap").nth(1).locator(".hs-similarity .main-svg").count() > 0
    assert asked == [path.as_uri()]


def test_the_pages_save_as_html_button_downloads_a_file_that_opens_offline(
    page: Any, browser: Any, tiny_server: Server, tmp_path: Path
) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, TEXT)
    show_head(page, "L1H3")
    with page.expect_download() as download:
        page.click("#heat-html")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == "headscope-Attention-of-L1H3.html"
    other = browser.new_context().new_page()  # a fresh context: nothing of the server's page carries over
    errors: list[str] = []
    other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    asked = offline(other)
    other.goto(path.as_uri())
    other.wait_for_selector(".hs-snap[data-ready]")
    assert other.locator(".hs-heatmap").get_attribute("data-heads") == "L1H3"
    assert other.locator(".grid .cell").count() == 8
    assert asked == [path.as_uri()] and errors == []
    other.context.close()


def test_the_trace_pages_save_as_html_keeps_every_figure_as_drawn(
    page: Any, browser: Any, tiny_server: Server, tmp_path: Path, artifacts: Path
) -> None:
    open_trace(page, tiny_server.url)
    run_example(page)
    drawn = page.eval_on_selector("#patch-plot", "el => el.data[0].z")
    with page.expect_download() as download:
        page.click("#trace-html")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name.startswith("headscope-Trace-") and path.suffix == ".html"
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    errors: list[str] = []
    other.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    asked = offline(other)
    other.goto(path.as_uri())
    other.wait_for_selector(".hs-snap[data-ready]")
    titles = other.locator(".hs-fig h3").all_text_contents()
    assert "Activation patching · patch plot" in titles and any(
        t.startswith("Direct logit attribution") for t in titles
    )
    saved = other.eval_on_selector_all(".hs-figure", "els => els.map((el) => el.data[0].z ?? null)")
    assert drawn in saved  # the patching heatmap's numbers, exactly as the page drew them
    other.screenshot(path=str(artifacts / "snapshot-trace.png"), full_page=True)
    assert asked == [path.as_uri()] and errors == []
    other.context.close()


def test_the_corpus_pages_save_as_html_keeps_the_jobs_figures(
    page: Any, browser: Any, scope: headscope.Scope, tiny_server: Server, tmp_path: Path
) -> None:
    ds = scope.datasets.create("snapshot texts", ["one two three one two three", "a b c d a b c d", "x y z x y z"])
    job = scope.jobs.start(ds["id"], analyses=["roles", "similarity"], max_tokens=16)
    assert job.wait(progress=False, poll_s=0.1, timeout_s=120)["state"] == "done"
    page.goto(f"{tiny_server.url}/corpus?job={job.id}")
    page.wait_for_selector("#scatter .main-svg")
    page.wait_for_selector("#simplot .main-svg")
    with page.expect_download() as download:
        page.click("#corpus-html")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.name == f"headscope-Corpus-job-{job.id.replace('_', '-')}.html"
    other = browser.new_context().new_page()
    asked = offline(other)
    other.goto(path.as_uri())
    other.wait_for_selector(".hs-snap[data-ready]")
    titles = other.locator(".hs-fig h3").all_text_contents()
    assert any(t.startswith("Heads by two metrics") for t in titles), titles
    assert any(t.startswith("Similarity across the dataset") for t in titles), titles
    assert other.locator(".hs-figure .main-svg").count() >= 2 and asked == [path.as_uri()]
    other.context.close()


def shown_token(token: str) -> str:
    """A token as the page's lists show it (lib/util.js visible): spaces and control characters made visible."""
    marks = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
    return "".join(marks.get(c, c) for c in token) or "∅"


def ablation_panel(page: Any) -> dict[str, Any]:
    """What a file's before/after panel shows: its metric tiles and the tokens of both top-k columns."""
    root = page.locator(".hs-snap .hs-ablation")
    return {
        "title": root.locator("> h3").first.text_content(),
        "tiles": root.locator(".stat-value").all_text_contents(),
        "base": root.locator(".top-col >> nth=0 >> .tok").all_text_contents(),
        "ablated": root.locator(".top-col >> nth=1 >> .tok").all_text_contents(),
    }


def test_an_ablation_saved_from_python_shows_the_predictions_before_and_after_offline(
    page: Any, scope: headscope.Scope, tmp_path: Path, artifacts: Path
) -> None:
    result = scope.ablate(TEXT, ["L0H1", "L1H3"], mode="zero")
    path = scope.snapshot(TEXT, heads="L1H2", ablate=["L0H1", "L1H3"]).save_html(tmp_path / "ablation.html")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    asked = offline(page)
    page.goto(path.as_uri())
    page.wait_for_selector(".hs-snap[data-ready]")
    shown = ablation_panel(page)
    assert shown["title"] == "Next token, L0H1, L1H3 switched off (zero)"
    # the tiles are loss, ablated loss, Δ loss and KL last as /api/ablate gave them (3 and 4 digits shown)
    assert result.delta_loss and float(shown["tiles"][2]) == pytest.approx(result.delta_loss, abs=5e-4, rel=0.05)
    assert float(shown["tiles"][3]) == pytest.approx(result.kl_last, abs=5e-5, rel=0.05)
    assert shown["base"] == [shown_token(t["token"]) for t in result["baseline"]["top_k"]]
    assert shown["ablated"] == [shown_token(t["token"]) for t in result["ablated"]["top_k"]]
    assert page.locator(".hs-snap .grid .cell.masked").count() == 2  # the grid crosses out the heads off
    assert page.locator(".hs-heatmap").get_attribute("data-heads") == "L1H2"
    page.screenshot(path=str(artifacts / "snapshot-ablation.png"), full_page=True)
    assert asked == [path.as_uri()] and errors == []

    headscope.views.Notebook.plotly_sent = False
    inline = result._repr_html_()  # the notebook output of scope.ablate() alone: the same panel
    (tmp_path / "nb.html").write_text(f"<!doctype html><meta charset='utf-8'><body>{inline}</body>")
    page.goto((tmp_path / "nb.html").as_uri())
    page.wait_for_selector(".hs-snap[data-ready]")
    assert ablation_panel(page)["ablated"] == shown["ablated"]


def test_the_heads_pages_save_as_html_carries_the_heads_switched_off(
    page: Any, browser: Any, tiny_server: Server, tmp_path: Path
) -> None:
    open_app(page, tiny_server.url, urlencode({"text": TEXT, "mask": "L0H2,L1H0", "abl": "mean"}))
    page.wait_for_selector('#prediction[data-state="ablated"]')
    on_page = page.locator("#topk .top-col >> nth=1 >> .tok").all_text_contents()
    other, asked, path = saved_and_opened_offline(page, browser, "#grid-html", tmp_path)
    shown = ablation_panel(other)
    assert shown["title"] == "Next token, L0H2, L1H0 switched off (mean)" and shown["ablated"] == on_page
    assert other.locator(".grid .cell.masked").count() == 2 and asked == [path.as_uri()]
    other.context.close()


def test_the_composition_tabs_save_as_html_keeps_the_matrix_as_drawn(
    page: Any, browser: Any, tiny_server: Server, tmp_path: Path
) -> None:
    """The Heads page's Composition tab (from the weights): its Save as HTML file redraws the same matrix offline."""
    open_app(page, tiny_server.url)
    page.click("#tab-composition")
    page.wait_for_selector("#compplot .main-svg")
    page.click('#comp-kind button[data-kind="q"]')
    page.wait_for_function("() => document.querySelector('#compplot')?.layout && location.search.includes('comp=q')")
    page.wait_for_function("() => !document.querySelector('#status.busy')")
    drawn = page.eval_on_selector("#compplot", "el => el.data[0].z")
    other, asked, path = saved_and_opened_offline(page, browser, "#comp-html", tmp_path)
    assert other.locator(".hs-fig h3").all_text_contents() == ["Q-composition of every head pair, from the weights"]
    saved = other.eval_on_selector(".hs-figure", "el => el.data[0].z")
    assert saved == drawn and asked == [path.as_uri()]
    assert other.locator(".hs-figure .main-svg").count() >= 1  # drawn by plotly.js inside the file
    other.context.close()
