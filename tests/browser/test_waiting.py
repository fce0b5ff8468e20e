"""While the page waits on the server it says for what and for how long, and offers a Cancel (issue 25)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.pages import click_head, delay_requests, held, open_app, run_prompt
from tests.support.server import Server

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat"


def test_a_slow_ablation_shows_its_seconds_and_cancel_stops_waiting(page: Any, tiny_server: Server) -> None:
    delay_requests(page, "/api/ablate", 4000)
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    assert page.is_hidden("#status-cancel")  # nothing to cancel
    click_head(page, "L0H1", modifiers=["Shift"])
    page.wait_for_selector("#status-cancel:not([hidden])")
    assert page.inner_text("#status-text") == "ablating…"
    page.wait_for_function("() => parseFloat(document.querySelector('#status-time').textContent) >= 0.5")
    page.click("#status-cancel")
    page.wait_for_selector("#status-cancel[hidden]", state="attached")
    assert page.inner_text("#status-text") == "idle" and page.inner_text("#status-time") == ""
    assert held(page)["aborted"] >= 1  # the request itself was stopped
    assert page.get_attribute("#prediction", "data-state") == "baseline"
    assert "Cancelled" in page.inner_text("#topk")
    assert page.is_hidden("#error")  # a cancel is not an error
    click_head(page, "L0H2", modifiers=["Shift"])  # the next toggle runs again, to its end
    page.wait_for_selector('#prediction[data-state="ablated"]', timeout=15_000)
