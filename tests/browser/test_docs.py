"""/docs and /redoc render offline under the server's CSP: every request stays on the server, no JS errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import Server

pytestmark = pytest.mark.browser


def operations(server: Server) -> set[tuple[str, str]]:
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def responses(page: Any) -> list[str]:
    """Every URL the page got a response from (CSP-blocked requests get none); the caller checks the origins."""
    urls: list[str] = []
    page.on("response", lambda r: urls.append(r.url))
    return urls


def test_swagger_ui_lists_every_operation(page: Any, tiny_server: Server, artifacts: Path) -> None:
    urls = responses(page)
    page.goto(tiny_server.url + "/docs")
    page.wait_for_selector(".opblock-summary")
    shown = {
        tuple(op)
        for op in page.eval_on_selector_all(
            ".opblock-summary",
            """els => els.map(e => [e.querySelector('.opblock-summary-method').textContent,
                                   e.querySelector('.opblock-summary-path').textContent.replace(/\\u200b/g, '')])""",
        )
    }
    expected = operations(tiny_server)
    assert shown == expected
    assert ("POST", "/api/attention") in expected and len(expected) >= 10
    assert "HeadScope" in page.inner_text(".info .title")
    page.screenshot(path=str(artifacts / "docs-swagger.png"))
    assert urls and all(u.startswith(tiny_server.url) or u.startswith("data:") for u in urls), urls


def test_redoc_renders_every_operation(page: Any, tiny_server: Server, artifacts: Path) -> None:
    # ReDoc's sidebar footer always shows a logo from cdn.redoc.ly: the server points it at its own copy, so
    # nothing leaves the server and the CSP blocks nothing (any console error fails the test)
    urls = responses(page)
    page.goto(tiny_server.url + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    assert "HeadScope" in page.inner_text("h1")
    assert page.locator("[data-section-id^='operation/']").count() == len(operations(tiny_server))
    assert "Bodies are JSON" in page.inner_text(".api-info")  # the rules of the API description render too
    page.wait_for_selector("img[alt='redocly logo']")  # the footer's logo, from this server
    page.screenshot(path=str(artifacts / "docs-redoc.png"))
    assert urls and all(u.startswith(tiny_server.url) or u.startswith("data:") for u in urls), urls
