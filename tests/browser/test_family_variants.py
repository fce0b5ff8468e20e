"""The page serving a local/global family (tiny Gemma 3): the model card lists each layer's attention variant
and the grid tags the local layers, from /api/model's layer_variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.pages import open_app, run_prompt
from tests.support.families import WINDOW, by_type, save
from tests.support.server import Server, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def gemma3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Tiny Gemma 3 (layers local, global, local; window 4) behind a real server."""
    root = tmp_path_factory.mktemp("gemma3")
    model = save(by_type("gemma3_text"), root / "tiny-gemma3")
    with serve(str(model), root) as server:
        yield server


def test_model_card_and_grid_show_local_and_global_layers(page: Any, gemma3_server: Server, artifacts: Path) -> None:
    variants = httpx.get(gemma3_server.url + "/api/model").json()["layer_variants"]
    assert [v["label"] for v in variants] == [f"local {WINDOW}", "global", f"local {WINDOW}"]
    assert [v["window"] for v in variants] == [WINDOW, None, WINDOW]
    open_app(page, gemma3_server.url)
    card = page.locator("#model-card")
    assert page.inner_text("#model-card .variant-summary") == f"local {WINDOW} ×2 / global ×1"
    card.locator(".variants summary").click()
    assert card.locator(".variant-list li").all_inner_texts() == [
        f"L0 local {WINDOW}",
        "L1 global",
        f"L2 local {WINDOW}",
    ]
    run_prompt(page, "The cat sat on the mat. The cat sat on the mat.")
    labels = page.locator("#grid .row-label")
    assert labels.all_inner_texts() == ["localL0", "L1", "localL2"]
    assert [labels.nth(i).get_attribute("title") for i in range(3)] == [
        f"L0: local {WINDOW}",
        "L1: global",
        f"L2: local {WINDOW}",
    ]
    assert page.locator("#grid .row-label .layer-tag").count() == 2
    page.locator("#model-card").screenshot(path=str(artifacts / "family-variants-card.png"))
    page.screenshot(path=str(artifacts / "family-variants.png"))


def test_trace_says_the_dla_parts_explain_the_logit_before_the_final_soft_cap(
    page: Any, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> None:
    """Gemma 2 caps its logits (cap·tanh(z/cap)): DLA's parts sum to the pre-cap logit, and the page says so."""
    root = tmp_path_factory.mktemp("gemma2")
    model = save(by_type("gemma2"), root / "tiny-gemma2")
    with serve(str(model), root) as server:
        page.goto(server.url + "/trace")
        page.wait_for_selector("body[data-ready]")
        with page.expect_response("**/api/dla", timeout=120_000) as answer:
            page.click(".example")
        dla = answer.value.json()
        page.wait_for_function("() => document.querySelector('#dla-summary').textContent.includes('soft-cap')")
        summary = page.inner_text("#dla-summary")
        assert dla["final_softcap"] == 5.0 and abs(dla["model_logit"]) <= 2 * 5.0  # a difference of two capped
        assert f"= {dla['logit']:.3f} = heads" in summary  # the parts' total: the pre-cap logit
        assert "the parts explain the logit before the final soft-cap 5·tanh(z/5)" in summary
        assert f"after it, as the model outputs: {dla['model_logit']:.3f}" in summary
        page.locator("#dla-panel").screenshot(path=str(artifacts / "family-dla-softcap.png"))
