"""The Continuation panel: switch a head off, press Continue, both continuations side by side with the parting
token marked (as the API says), and "Analyse with continuation" runs prompt + continuation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import click_head, open_app, query, run_prompt, wait_repaint
from tests.support.server import Server

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat"  # with L0H0 off the tiny llama's greedy continuation parts at token 5


def shown(page: Any, row: str) -> list[str]:
    return [str(t) for t in page.locator(f'.cont-tokens[data-row="{row}"] .t').all_text_contents()]


def visible(token: str) -> str:
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def test_continue_shows_both_continuations_and_where_they_part(page: Any, tiny_server: Server, artifacts: Path) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    click_head(page, "L0H0", modifiers=["Shift"])
    page.wait_for_function("() => new URLSearchParams(location.search).get('mask') === 'L0H0'")
    page.fill("#cont-n", "12")
    page.click("#cont-run")
    page.wait_for_selector('#continuation[data-state="done"]')

    body = {"text": PROMPT, "max_new_tokens": 12, "ablate": [{"layer": 0, "head": 0}], "mode": "zero"}
    want = page.request.post(tiny_server.url + "/api/generate", data=body).json()
    assert page.locator(".cont-col").count() == 2
    for row in ("baseline", "ablated"):
        assert shown(page, row) == [visible(t) for t in want[row]["tokens"]]
    part = want["first_difference"]
    assert part is not None  # the head matters here, so the test can see a parting
    marked = page.locator(".t.part")
    assert marked.count() == 2
    assert [marked.nth(i).get_attribute("data-i") for i in range(2)] == [str(part), str(part)]
    assert f"part at token {part + 1}" in page.inner_text("#cont-legend")
    # coloured by log-prob: opacity 0.8 · min(1, −log p / 6 nats)
    spans = page.locator('.cont-tokens[data-row="ablated"] .t')
    alphas = [float(s.split(",")[-1].rstrip(")")) for s in spans.evaluate_all("e => e.map(x => x.style.background)")]
    assert alphas == pytest.approx([0.8 * min(1.0, -lp / 6) for lp in want["ablated"]["logprobs"]], abs=1e-3)
    assert "log p" in (spans.first.get_attribute("title") or "")

    page.set_viewport_size({"width": 1280, "height": 720})
    page.locator("#continuation").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "tiny-continuation.png"))

    before = page.eval_on_selector("#grid", "el => el.dataset.painted || ''")
    page.click("#cont-analyse-ablated")
    wait_repaint(page, "#grid", before)
    text = PROMPT + want["ablated"]["text"]
    assert page.input_value("#prompt") == text
    assert query(page)["text"] == text
    page.wait_for_selector("#continuation[data-stale]")  # what is shown was made for the shorter text


def test_without_switched_off_heads_only_the_unchanged_model_continues(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    page.fill("#cont-n", "4")
    page.click("#cont-run")
    page.wait_for_selector('#continuation[data-state="done"]')
    assert page.locator(".cont-col").count() == 1
    assert len(shown(page, "baseline")) == 4
    page.fill("#cont-n", "999")
    page.click("#cont-run")
    assert "from 1 to 256" in page.inner_text("#cont-status")
