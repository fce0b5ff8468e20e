"""Why a head attends, in the Heads page: "Why here?" on a clicked cell, the Circuits view and the Composition
heatmap, each checked against the API's own answer on the tiny model's server."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import open_app, painted, query, wait_repaint
from tests.support.server import Server

pytestmark = pytest.mark.browser

TEXT = "The cat sat on the mat. The cat sat on the"


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def get(url: str, path: str, params: dict[str, Any]) -> Any:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=120) as r:
        return json.load(r)


def open_head(page: Any, base: str, head: str, extra: str = "") -> None:
    """The page on TEXT with `head` shown, its map painted."""
    open_app(page, base, urllib.parse.urlencode({"text": TEXT, "head": head}) + extra)
    page.wait_for_function("() => Number(document.getElementById('heatmap').dataset.painted || 0) > 0")


def click_cell(page: Any, selector: str, x: int, y: int, subplot: str = "") -> None:
    """A real mouse click on the heatmap cell at category indices (x, y) of one subplot ("" or "2", …)."""
    px, py = page.eval_on_selector(
        selector,
        """(el, [x, y, s]) => {
          const xa = el._fullLayout['xaxis' + s], ya = el._fullLayout['yaxis' + s], r = el.getBoundingClientRect();
          return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)];
        }""",
        [x, y, subplot],
    )
    page.mouse.move(px, py)
    page.mouse.click(px, py)


def test_why_here_explains_a_clicked_cell_with_terms_that_add_up_to_the_score(page: Any, tiny_server: Server) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    open_head(page, tiny_server.url, "L1H2")
    assert page.is_visible("#why-hint") and page.is_hidden("#why")
    n = len(post(tiny_server.url, "/api/tokenize", {"text": TEXT})["token_ids"])
    q, k = n - 1, 3

    before = painted(page, "#why")
    click_cell(page, "#heatmap", k, q)
    wait_repaint(page, "#why", before)
    assert query(page)["why"] == f"L1H2:{q}:{k}"
    api = post(
        tiny_server.url,
        "/api/qk_attribution",
        {"text": TEXT, "layer": 1, "head": 2, "query_pos": q, "key_pos": k, "top": 8},
    )
    score, total = (float(page.inner_text(sel)) for sel in ("#why-score", "#why-total"))
    assert score == pytest.approx(api["score"], abs=5e-4)  # shown with 3 decimals
    assert total == pytest.approx(api["score"], abs=5e-4) and total == pytest.approx(api["total"], abs=5e-4)
    assert float(page.get_attribute("#why-total", "data-value") or "nan") == pytest.approx(api["score"], abs=1e-4)
    n_nodes = len(api["query_sums"])
    assert f"all {n_nodes} × {n_nodes} node terms" in page.inner_text("#why")
    # the terms in words, largest first, as the API ranks them
    lines = page.locator("#why .why-terms li").all_inner_texts()
    assert len(lines) == len(api["terms"])
    for line, term in zip(lines, api["terms"], strict=True):
        words = f"{term['query_node']} at the query × {term['key_node']} at the key: "
        assert line.startswith(words)
        assert float(line[len(words) :]) == pytest.approx(term["value"], abs=5e-3, rel=0.05)  # 2 digits shown
    # the bars: each side's largest node sums, as the API gives them
    bars = page.eval_on_selector("#why .why-bars", "el => el.data.map((t) => [t.y, t.x])")
    for side, (names, values) in zip(("query_sums", "key_sums"), bars, strict=True):
        want = sorted(api[side], key=lambda s: -abs(s["value"]))[: len(names)]
        assert list(reversed(names)) == [s["node"] for s in want]
        assert list(reversed(values)) == pytest.approx([s["value"] for s in want], abs=1e-6)
    # the open cell is outlined on the map
    shape = page.eval_on_selector("#heatmap", "el => el.layout.shapes[0]")
    assert (shape["x0"] + 0.5, shape["y0"] + 0.5) == (k, q)

    # switching a head off: the panel says it is computed on the unchanged model
    before = painted(page, "#why")
    page.click('.cell[data-head="L0H1"]', modifiers=["Shift"])
    wait_repaint(page, "#why", before)
    assert "the 1 switched-off head is on here" in page.inner_text("#why")
    assert float(page.inner_text("#why-total")) == pytest.approx(api["total"], abs=5e-4)  # the same numbers
    page.click("#reset")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('mask')")

    # a head node selects that head; the panel stays on the cell it explains
    head_node = page.locator("#why .why-terms .head-link").first
    label = head_node.inner_text()
    before = painted(page, "#heatmap")
    head_node.click()
    wait_repaint(page, "#heatmap", before)
    assert query(page)["head"] == label and query(page)["why"] == f"L1H2:{q}:{k}"
    assert "L1H2" in page.inner_text("#why .why-head")

    # the address bar reproduces the open panel; its × closes it
    page.reload()
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function("() => Number(document.getElementById('why').dataset.painted || 0) > 0")
    assert float(page.inner_text("#why-total")) == pytest.approx(api["total"], abs=5e-4)
    page.click("#why .why-head button")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('why')")
    assert page.is_hidden("#why")


def test_why_here_shows_the_api_error_in_the_error_bar(page: Any, tiny_server: Server) -> None:
    page.watch.allow("422")
    open_head(page, tiny_server.url, "L1H2", "&why=L1H2:60:2")  # the text has fewer tokens
    page.wait_for_selector("#error:not([hidden])")
    assert page.get_attribute("#error", "data-code") == "invalid_input"
    assert "query_pos" in page.inner_text("#error-text")


def test_circuits_view_shows_the_api_numbers(page: Any, tiny_server: Server, artifacts: Path) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    open_head(page, tiny_server.url, "L1H3")
    before = painted(page, "#circuits")
    page.click("#tab-circuits")
    wait_repaint(page, "#circuits", before)
    assert query(page)["view"] == "circuits"
    api = get(tiny_server.url, "/api/head_circuits", {"layer": 1, "head": 3})
    assert float(page.inner_text("#copying-score")) == pytest.approx(api["copying_score"], abs=5e-4)
    assert api["copying_definition"] in page.inner_text("#circuits")
    assert int(page.inner_text("#qk-rank")) == api["qk_effective_rank"]
    assert int(page.inner_text("#ov-rank")) == api["ov_effective_rank"]
    lines = page.eval_on_selector("#circuits .circ-sv", "el => el.data.map((t) => t.y)")
    assert lines == [pytest.approx(api["qk_singular_values"]), pytest.approx(api["ov_singular_values"])]
    rows = page.locator("#circuits .token-map tbody tr").count()
    assert rows == len(api["token_map"])
    assert api["positional"]["reason"][1:] in page.inner_text("#circuits")  # rotary: not defined, and why
    page.screenshot(path=str(artifacts / "whyhere-circuits-tiny.png"))

    # another head from the grid stays in this view; a sender chip opens the sender's circuits
    before = painted(page, "#circuits")
    page.click('.cell[data-head="L1H0"]')
    wait_repaint(page, "#circuits", before)
    assert query(page)["head"] == "L1H0" and query(page)["view"] == "circuits"
    senders = get(tiny_server.url, "/api/head_circuits", {"layer": 1, "head": 0})["top_senders"]
    top = senders["k"][0]  # the K row's first chip comes after the Q row's
    chip = page.locator("#circuits .senders .head-link").nth(len(senders["q"]))
    assert chip.inner_text() == f"L{top['layer']}H{top['head']} {top['score']:.3f}"
    before = painted(page, "#circuits")
    chip.click()
    wait_repaint(page, "#circuits", before)
    assert query(page)["head"] == f"L{top['layer']}H{top['head']}" and query(page)["view"] == "circuits"


def test_composition_heatmap_switches_kind_and_selects_the_receiver(page: Any, tiny_server: Server) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    open_head(page, tiny_server.url, "L0H0")
    before = painted(page, "#compplot")
    page.click("#tab-composition")
    wait_repaint(page, "#compplot", before)
    for kind in ("k", "q", "v"):
        if kind != "k":
            before = painted(page, "#compplot")
            page.click(f'#comp-kind button[data-kind="{kind}"]')
            wait_repaint(page, "#compplot", before)
            assert query(page)["comp"] == kind
        api = get(tiny_server.url, "/api/composition", {"kind": kind})
        z, zmin = page.eval_on_selector("#compplot", "el => [el.data[0].z, el.data[0].zmin]")
        assert z == api["scores"] and zmin == pytest.approx(api["baseline"])  # the colour starts at the baseline
        assert f"{api['baseline']:.3f}" in page.inner_text("#comp-caption")
        assert page.get_attribute(f'#comp-kind button[data-kind="{kind}"]', "aria-pressed") == "true"

    # sender L0H1 (row 1) → receiver L1H2 (column 4 + 2): a click opens the receiver's map
    before = painted(page, "#heatmap")
    click_cell(page, "#compplot", 6, 1)
    wait_repaint(page, "#heatmap", before)
    assert query(page)["head"] == "L1H2" and "view" not in query(page)  # the head view, the default
    assert "selected" in (page.get_attribute('.cell[data-head="L1H2"]', "class") or "").split()


WORDS = (
    "tulip orbit marble quiet saxophone lantern drift ember canyon velvet pigeon quartz meadow rocket saffron glacier"
)


@pytest.mark.slow
def test_default_model_induction_head_reads_the_previous_token_head_at_the_key(page: Any, smollm: Server) -> None:
    """L18H6 on random words said twice, at a cell of its induction stripe: the key side is carried by the
    previous-token head L16H0 (K-composition), and the page's total is the API's score."""
    page.set_viewport_size({"width": 1280, "height": 720})
    text = f"{WORDS} {WORDS}"
    tokens = post(smollm.url, "/api/tokenize", {"text": text})["tokens"]
    q = len(tokens) - 3
    k = next(i + 1 for i in range(q) if tokens[i] == tokens[q])  # the token after the earlier copy
    open_app(page, smollm.url, urllib.parse.urlencode({"text": text, "head": "L18H6", "why": f"L18H6:{q}:{k}"}))
    page.wait_for_function("() => Number(document.getElementById('why').dataset.painted || 0) > 0", timeout=120_000)
    api = post(smollm.url, "/api/qk_attribution", {"text": text, "layer": 18, "head": 6, "query_pos": q, "key_pos": k})
    assert api["weight"] > 0.5  # the head attends there
    assert float(page.inner_text("#why-total")) == pytest.approx(api["score"], abs=5e-4)
    names, values = page.eval_on_selector("#why .why-bars", "el => [el.data[1].y, el.data[1].x]")
    assert names[-1] == "L16H0" and values[-1] > 0.5 * api["score"]  # the key side's largest bar
