"""Time the page with the default model: Enter → painted grid, head toggle → updated prediction, click → heatmap.

Run: `python -m tests.browser.measure [--model smollm2-135m] [--tokens 64] [--repeats 5]`. Not a test: it
prints medians. Each Enter uses a new text, so the server's run cache never answers it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tests.browser.pages import click_head, open_app, painted, wait_repaint
from tests.support.server import serve

PARAGRAPH = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp. Ships passing the "
    "rocky coast relied on its beam to find the harbour, and the keeper took pride in never missing a night. "
    "One winter the storm was so strong that the windows shook, but the light kept burning until dawn."
)


def n_tokens(url: str, text: str) -> int:
    req = urllib.request.Request(
        url + "/api/tokenize", data=json.dumps({"text": text}).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(json.load(r)["n_tokens"])


def text_of(url: str, tokens: int, salt: int) -> str:
    """A prefix of the paragraph (with a distinct first word) of about `tokens` tokens."""
    words = f"Story {salt}: {PARAGRAPH} {PARAGRAPH}".split(" ")
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(url, " ".join(words[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def last_measure(page: Any, name: str) -> float:
    return float(page.evaluate(f"() => performance.getEntriesByName('{name}').at(-1).duration"))


def measure(url: str, tokens: int, repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"enter_to_grid_ms": [], "toggle_to_prediction_ms": [], "click_to_heatmap_ms": []}
    texts = [text_of(url, tokens, i) for i in range(repeats + 1)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        open_app(page, url)
        for i, text in enumerate(texts):
            before = painted(page, "#grid")
            page.fill("#prompt", text)
            page.press("#prompt", "Enter")
            wait_repaint(page, "#grid", before)
            if i == 0:
                continue  # warm-up: first plotly/JIT work in the browser
            out["enter_to_grid_ms"].append(last_measure(page, "hs:grid-hs:enter"))

            before = painted(page, "#heatmap")
            click_head(page, f"L{3 * i}H{i % 9}")
            wait_repaint(page, "#heatmap", before)
            out["click_to_heatmap_ms"].append(last_measure(page, "hs:heatmap-hs:select"))

            for head in (f"L{i}H{(i + 2) % 9}", f"L{i + 10}H{(i + 5) % 9}"):
                before = painted(page, "#prediction")
                click_head(page, head, modifiers=["Shift"])
                wait_repaint(page, "#prediction", before)
                out["toggle_to_prediction_ms"].append(last_measure(page, "hs:predicted-hs:toggle"))
            page.click("#reset")
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, serve(args.model, Path(tmp)) as server:
        print(f"server ready in {time.monotonic() - started:.1f} s")
        n = n_tokens(server.url, text_of(server.url, args.tokens, 1))
        print(f"{args.model}, {n}-token texts, {args.repeats} repeats (median, min–max):")
        for name, values in measure(server.url, args.tokens, args.repeats).items():
            spread = f"{min(values):.0f}–{max(values):.0f}, n={len(values)}"
            print(f"  {name:26s} {statistics.median(values):7.0f}   ({spread})")


if __name__ == "__main__":
    main()
