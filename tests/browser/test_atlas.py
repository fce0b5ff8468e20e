"""The static atlas opened from file:// in headless Chromium with every other request aborted: the index, three
head pages, the links between them, no console error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.inspect.model.loaded import Loaded
from tests.test_atlas import atlas_of

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def built(tiny_loaded: dict[str, Loaded], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    yield from atlas_of(tiny_loaded["llama"], tmp_path_factory.mktemp("atlas"))


def test_the_atlas_opens_from_disk_with_no_network(built: tuple[Any, ...], page: Any, artifacts: Path) -> None:
    _, _, written, _ = built
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.goto((written.out / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".ccell").count() == 8
    page.click('.ccell[data-head="L1H3"]')  # a cell opens its head's page
    page.wait_for_url("**/L1H3.html")
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".hp-head h1").text_content() == "L1H3"
    assert page.locator("#hp-qk .main-svg").count() > 0
    assert page.locator("#hp-deciles .cx").count() >= 5 and page.locator("#hp-top .cx").count() == 5
    assert page.locator(".cx-open").count() == 0  # no server: no link into the one-prompt view
    page.screenshot(path=str(artifacts / "atlas-head.png"), full_page=True)
    near = page.locator(".hp-near a").first
    target = near.text_content()
    near.click()  # a nearest head's link opens its page
    page.wait_for_url(f"**/{target}.html")
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".hp-head h1").text_content() == target
    page.click("#hp-back")
    page.wait_for_url("**/index.html")
    page.wait_for_selector("body[data-ready]")
    page.goto((written.out / "L0H0.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".hp-head h1").text_content() == "L0H0"
    assert asked and all(u.startswith("file:") for u in asked), [u for u in asked if not u.startswith("file:")]
