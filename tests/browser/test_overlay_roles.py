"""Colour by a role score: every score comes with the run (/api/overview), so choosing one, induction on the
text included, asks the server nothing more, and the grid shows exactly what /api/heads gives for the text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.pages import download, open_app, run_prompt
from tests.support.server import Server

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat sat on the"


def test_text_induction_overlay_comes_with_the_run(page: Any, tiny_server: Server) -> None:
    open_app(page, tiny_server.url)
    run_prompt(page, PROMPT)
    asked: list[str] = []
    # (the live token counter may still count the typed prompt: /api/tokenize is not a score)
    page.on("request", lambda r: "/api/" in r.url and "/api/tokenize" not in r.url and asked.append(r.url))
    roles = page.request.get(tiny_server.url + "/api/roles").json()["roles"]
    heads = page.request.post(tiny_server.url + "/api/heads", data={"text": PROMPT}).json()["heads"]
    for role in roles:
        name, label = role["name"], role["label"]
        page.select_option("#color-by", name)
        page.wait_for_function("n => document.querySelector('.legend-name')?.textContent === n", arg=label)
        shown = json.loads(download(page, "#export-json"))["overlay"]
        assert shown["name"] == name
        grid = shown["scores"]
        assert all(grid[h["layer"]][h["head"]] == h[name] for h in heads), name
    assert asked == [], asked  # no /api/heads (or any other) request for a role score
