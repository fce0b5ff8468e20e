"""The head page (/corpus?job=…&head=L1H2&view=head) against a real server in headless Chromium: statistics,
nearest heads, decile and top examples, the Q/K embedding (colours, a click opens the text), links; and on the
real default model, L18H6 over a built-in dataset (slow), with a 1280×720 screenshot."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.browser.pages import query
from tests.support.models import save_tiny
from tests.support.server import Server, serve

pytestmark = pytest.mark.browser
TEXTS = [
    "The cat sat on the mat. The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "tulip orbit marble quiet lantern drift. tulip orbit marble quiet lantern",
    "One two three four five. One two three four five. One two three",
    "Heads attend to earlier tokens, and some attend to the first one.",
    "A dog, a cat and a bird sat on a red mat; the dog ran, the bird sang.",
]


def finished_job(base: str, body: dict[str, Any], timeout: float = 600) -> str:
    job = httpx.post(f"{base}/api/jobs", json=body, timeout=30).json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{base}/api/jobs/{job['id']}", timeout=30).json()
        if state["state"] in {"done", "failed", "cancelled"}:
            assert state["state"] == "done", state
            return str(job["id"])
        time.sleep(0.2)
    raise TimeoutError(job)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    root = tmp_path_factory.mktemp("headpage")
    model = save_tiny(root / "tiny-llama", "llama")
    with serve(str(model), root, data_dir=str(root / "data")) as server:
        ds = httpx.post(f"{server.url}/api/datasets", json={"name": "six", "texts": TEXTS}, timeout=30).json()["id"]
        yield server, finished_job(server.url, {"dataset": ds, "analyses": ["roles", "similarity"]})


def open_head_page(page: Any, base: str, job: str, head: str) -> None:
    page.goto(f"{base}/corpus?job={job}&head={head}")
    page.wait_for_selector("body[data-ready]")
    page.click("#head-body .hp-page")  # the head panel's link to the head's own page
    page.wait_for_selector("#hp-qk .main-svg")
    page.wait_for_selector("#hp-qk[data-painted]")


def test_the_head_page_gathers_what_the_job_knows_of_a_head(page: Any, tiny_job: tuple[Server, str]) -> None:
    server, job = tiny_job
    open_head_page(page, server.url, job, "L1H2")
    assert query(page)["view"] == "head" and query(page)["head"] == "L1H2"
    assert page.locator(".c-side").is_hidden() and page.locator("#grid-panel").is_hidden()
    assert page.locator(".hp-head h1").text_content() == "L1H2"
    heads = httpx.get(f"{server.url}/api/jobs/{job}/heads").json()
    assert page.locator(".hp-stats tbody tr").count() == len(heads["metrics"])
    # the nearest heads are the lowest JS divergences of the head's row of the dataset matrix
    sim = httpx.get(f"{server.url}/api/jobs/{job}/similarity", params={"metric": "js"}).json()
    i = next(n for n, h in enumerate(sim["heads"]) if (h["layer"], h["head"]) == (1, 2))
    names = [f"L{h['layer']}H{h['head']}" for h in sim["heads"]]
    ranked = sorted((v, names[j]) for j, v in enumerate(sim["matrix"][i]) if j != i)
    assert page.locator(".hp-near a").all_text_contents() == [name for _, name in ranked[:6]]
    metric = query(page).get("metric") or heads["metrics"][0]
    deciles = httpx.get(
        f"{server.url}/api/jobs/{job}/heads/1/2/examples", params={"metric": metric, "sample": "deciles", "k": 1}
    ).json()
    labels = page.locator("#hp-deciles .cx-rank").all_text_contents()
    assert labels == [f"D{e['decile']}" for e in deciles["examples"]] and len(labels) >= 3
    assert page.locator("#hp-top .cx").count() == min(5, len(TEXTS))
    note = page.locator("#hp-qk-note").text_content()
    qk = httpx.get(f"{server.url}/api/jobs/{job}/heads/1/2/qk_embedding").json()
    assert f"{qk['n_positions']} positions sampled" in note and "share a centroid" in note
    assert page.locator('#hp-qk-color [aria-pressed="true"]').text_content() == "kind"
    assert page.locator("#hp-qk .legendtext").all_text_contents() == ["queries", "keys"]
    page.click('#hp-qk-color [data-color="token"]')
    page.wait_for_function("document.querySelectorAll('#hp-qk .legendtext').length > 2")
    assert query(page)["color"] == "token"
    # a click on a point opens its text in the one-prompt view on this head
    point = qk["points"][len(qk["points"]) // 2 + 1]
    with page.expect_navigation():
        page.evaluate(
            "([t, p]) => document.getElementById('hp-qk')"
            ".emit('plotly_click', {points: [{customdata: [t, p, 'key']}]})",
            [point["text_index"], point["position"]],
        )
    opened = {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}
    assert urlparse(page.url).path == "/" and opened["text"] == TEXTS[point["text_index"]] and opened["head"] == "L1H2"


def test_nearest_heads_and_back_lead_to_pages(page: Any, tiny_job: tuple[Server, str]) -> None:
    server, job = tiny_job
    open_head_page(page, server.url, job, "L0H1")
    target = page.locator(".hp-near a").first.text_content()
    page.locator(".hp-near a").first.click()
    page.wait_for_selector("#hp-qk[data-painted]")
    assert page.locator(".hp-head h1").text_content() == target and query(page)["head"] == target
    page.click("#hp-back")
    page.wait_for_selector("#cgrid .ccell")
    assert "view" not in query(page) and page.locator("#head-page").is_hidden()
    assert page.locator(f'#cgrid .ccell[data-head="{target}"]').get_attribute("aria-pressed") == "true"


@pytest.mark.slow
def test_l18h6_on_the_default_model(page: Any, tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> None:
    root = tmp_path_factory.mktemp("headpage-real")
    with serve("smollm2-135m", root, data_dir=str(root / "data")) as server:
        body = {"dataset": "builtin:induction", "analyses": ["roles", "similarity"], "max_tokens": 64}
        job = finished_job(server.url, body, timeout=1800)
        page.set_viewport_size({"width": 1280, "height": 720})
        page.set_default_timeout(600_000)  # the embedding's forwards: about a minute on a busy 2-core CPU
        open_head_page(page, server.url, job, "L18H6")
        assert page.locator(".hp-head h1").text_content() == "L18H6"
        assert page.locator("#hp-deciles .cx").count() == 10
        page.screenshot(path=str(artifacts / "head-page-L18H6.png"))
        page.locator("#hp-qk-panel").screenshot(path=str(artifacts / "head-page-L18H6-qk.png"))
        page.goto("about:blank")  # before the server stops: nothing left to ask it


def test_the_atlas_button_downloads_a_zip_that_opens_from_disk(
    page: Any, tiny_job: tuple[Server, str], tmp_path: Path
) -> None:
    """The Corpus page's "Atlas (.zip)" on a finished job: the server's atlas, unzipped, has the index and a page per
    head (tests/browser/test_atlas.py opens such a folder from file:// with every request blocked)."""
    server, job = tiny_job
    page.goto(f"{server.url}/corpus?job={job}")
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector("#export-atlas:not([disabled])")
    with page.expect_download(timeout=120_000) as got:
        page.click("#export-atlas")
    saved = tmp_path / "atlas.zip"
    got.value.save_as(saved)
    assert got.value.suggested_filename == f"{job}-atlas.zip"
    names = set(zipfile.ZipFile(saved).namelist())
    model = httpx.get(f"{server.url}/api/model").json()
    pages = {f"L{ly}H{h}.html" for ly in range(model["n_layers"]) for h in range(model["n_heads"])}
    assert {"index.html", "atlas.js", "plotly.min.js", "data/job.js"} | pages <= names
