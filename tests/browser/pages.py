"""Page helpers shared by the browser tests: open the app, run a prompt, read what is painted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


def open_app(page: Any, base: str, query: str = "") -> None:
    page.goto(base + "/" + (f"?{query}" if query else ""))
    page.wait_for_selector("body[data-ready]")


def painted(page: Any, selector: str) -> str:
    return str(page.eval_on_selector(selector, "el => el.dataset.painted || ''"))


def wait_repaint(page: Any, selector: str, before: str) -> None:
    """Wait until the view at `selector` has been painted again since `before` (its data-painted counter)."""
    page.wait_for_function(
        "([sel, before]) => { const d = document.querySelector(sel).dataset.painted; return !!d && d !== before; }",
        arg=[selector, before],
    )


def run_prompt(page: Any, text: str) -> None:
    """Type a prompt, press Enter, wait for the grid to be painted."""
    before = painted(page, "#grid")
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    wait_repaint(page, "#grid", before)


def click_head(page: Any, label: str, **kwargs: Any) -> None:
    page.click(f'.cell[data-head="{label}"]', **kwargs)


def show_head(page: Any, label: str) -> None:
    """Click a head in the grid and wait for its heatmap."""
    before = painted(page, "#heatmap")
    click_head(page, label)
    wait_repaint(page, "#heatmap", before)


def query(page: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def tick_labels(page: Any, axis: str, subplot: int = 0) -> list[str]:
    """The tick labels Plotly drew on one axis ("x" or "y") of the heatmap's first subplot."""
    sel = f"#heatmap .{axis}{'' if subplot == 0 else subplot + 1}tick text"
    return [str(t) for t in page.locator(sel).all_text_contents()]


def top_tokens(page: Any, column: int) -> list[str]:
    """The tokens listed in one top-k column of the prediction panel (0 = baseline, 1 = ablated)."""
    return [str(t) for t in page.locator(f"#topk .top-col >> nth={column} >> .tok").all_text_contents()]


HOLD = """([fragment, ms]) => {
  const real = window.fetch;
  window.__held = { started: 0, aborted: 0 };
  window.fetch = (url, opts = {}) => {
    if (!String(url).includes(fragment)) return real(url, opts);
    window.__held.started++;
    opts.signal?.addEventListener("abort", () => window.__held.aborted++, { once: true });
    return new Promise((r) => setTimeout(r, ms)).then(() => real(url, opts));
  };
}"""


def delay_requests(page: Any, fragment: str, ms: int) -> None:
    """Hold every fetch whose URL contains `fragment` for `ms` before sending it (an abort still cancels it).

    Counts in window.__held: started, aborted. Call before open_app (it is an init script).
    """
    page.add_init_script(f"({HOLD})({json.dumps([fragment, ms])})")


def held(page: Any) -> dict[str, int]:
    """What delay_requests counted: {started, aborted}."""
    return dict(page.evaluate("() => window.__held"))


def grid_top(page: Any) -> float:
    """Where the first grid cell is drawn (px from the top of the page)."""
    return float(page.eval_on_selector("#grid .cell", "c => c.getBoundingClientRect().top"))


def download(page: Any, selector: str) -> bytes:
    """Click a download button once the page has no request in flight, and return the file's bytes."""
    page.wait_for_function("() => !document.querySelector('#status.busy')")
    with page.expect_download(timeout=60_000) as dl:
        page.click(selector)
    return Path(dl.value.path()).read_bytes()
