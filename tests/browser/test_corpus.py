"""The corpus page against a real server (tiny model, tmp data dir) in headless Chromium: upload → job → grid →
head → examples → one-prompt view, and cancelling (then resuming) a running job."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.pages import painted, query, wait_repaint
from tests.support.models import save_tiny
from tests.support.server import Server, serve

pytestmark = pytest.mark.browser

N_LAYERS, N_HEADS = 2, 4
TEXTS = [
    "The cat sat on the mat. The cat sat on the mat.",
    "Mr and Mrs Dursley of number four were proud. Mr and Mrs Dursley of number four",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "tulip orbit marble quiet lantern drift. tulip orbit marble quiet lantern",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "One two three four five. One two three four five. One two three",
]


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny llama behind a real server whose corpus store lives in a tmp dir."""
    root = tmp_path_factory.mktemp("corpus")
    model = save_tiny(root / "tiny-llama", "llama")
    with serve(str(model), root, data_dir=str(root / "data")) as server:
        yield server


def open_corpus(page: Any, base: str, search: str = "") -> None:
    page.goto(f"{base}/corpus{search}")
    page.wait_for_selector("body[data-ready]")


def fmt(x: float) -> str:
    """lib/util.js fmt(x, 3): three decimals, or one-digit exponent notation below 1e-3."""
    if x != 0 and abs(x) < 1e-3:
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:.3f}"


def expected_label(head: dict[str, Any], metric: str, labels: dict[str, str]) -> str:
    """What the grid's hover (and the cell's aria-label) must say for this head's statistic."""
    s = head[metric]
    if not s["n"]:
        return f"L{head['layer']}H{head['head']} · {labels.get(metric, metric)}: no text counts (n=0)"
    half = (s["ci_high"] - s["ci_low"]) / 2
    return (
        f"L{head['layer']}H{head['head']} · {fmt(s['mean'])} ± {fmt(half)} "
        f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}] · n={s['n']}"
    )


def cell_labels(page: Any) -> dict[str, str]:
    pairs = page.eval_on_selector_all(
        "#cgrid .ccell", "cells => cells.map(c => [c.dataset.head, c.getAttribute('aria-label')])"
    )
    return {str(k): str(v) for k, v in pairs}


def pressed(page: Any) -> list[str]:
    return [
        str(x)
        for x in page.eval_on_selector_all('#cgrid .ccell[aria-pressed="true"]', "cs => cs.map(c => c.dataset.head)")
    ]


def test_upload_job_grid_examples_and_click_through(
    page: Any, corpus_server: Server, artifacts: Path, tmp_path: Path
) -> None:
    base = corpus_server.url
    page.set_viewport_size({"width": 1280, "height": 720})
    open_corpus(page, base)
    page.screenshot(path=str(artifacts / "corpus-start-1280.png"))

    # texts: upload a .jsonl file under a name
    upload = tmp_path / "six.jsonl"
    upload.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    page.click('#source button[data-source="upload"]')
    assert page.get_attribute('#source button[data-source="upload"]', "aria-pressed") == "true"
    assert page.get_attribute('#source button[data-source="pick"]', "aria-pressed") == "false"
    page.set_input_files("#file", str(upload))
    page.fill("#ds-name", "six texts")
    page.check('input[name="analysis"][value="similarity"]')
    page.fill("#max-tokens", "32")
    page.click("#start")

    # the job runs to the end; the progress bar says so
    page.wait_for_selector("#job-state .st-done")
    job_id = query(page)["job"]
    api = httpx.Client(base_url=base, timeout=30)
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "done" and job["analyses"] == ["roles", "similarity"] and job["max_tokens"] == 32
    ds = api.get(f"/api/datasets/{job['dataset']}").json()
    assert (ds["name"], ds["n_texts"]) == ("six texts", len(TEXTS))
    assert page.get_attribute("#job-bar", "aria-valuenow") == page.get_attribute("#job-bar", "aria-valuemax") == "6"
    assert page.inner_text("#job-progress").startswith("6 / 6 texts · ")
    assert (
        page.get_attribute('#source button[data-source="pick"]', "aria-pressed") == "true"
    )  # the upload is now picked
    assert page.locator(f'#jobs .job[data-job="{job_id}"] .job-open[aria-current="true"]').count() == 1
    assert api.get("/api/jobs").json()["backend"]["backend"] == "in-process"
    assert "this server's model worker" in page.inner_text("#jobs-backend")  # where jobs run, from /api/jobs

    # the grid: one cell per head, each labelled with exactly the API's statistics
    page.wait_for_function(f"() => document.querySelectorAll('#cgrid .ccell').length === {N_LAYERS * N_HEADS}")
    stats = api.get(f"/api/jobs/{job_id}/heads").json()
    assert stats["partial"] is False and stats["n_texts"] == len(TEXTS)
    metric = query(page)["metric"]
    assert metric == stats["metrics"][0]
    names = {r["name"]: r["label"] for r in api.get("/api/roles").json()["roles"]}
    labels = cell_labels(page)
    assert labels == {f"L{h['layer']}H{h['head']}": expected_label(h, metric, names) for h in stats["heads"]}
    assert re.fullmatch(r"L1H2 · -?\d\.\d{3} ± \d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\] · n=6", labels["L1H2"])
    page.hover('.ccell[data-head="L1H2"]')
    assert page.is_visible("#ctip") and page.inner_text("#ctip") == labels["L1H2"]
    assert page.is_hidden("#partial")
    rho = stats["reliability"][metric]
    assert (f"ρ={rho:.2f}" if rho is not None else "too few texts") in page.inner_text("#reliability")

    # another metric recolours the grid and is kept in the URL
    before = painted(page, "#cgrid")
    page.select_option("#metric", "previous_token")
    wait_repaint(page, "#cgrid", before)
    assert query(page)["metric"] == "previous_token"
    by_label = {f"L{h['layer']}H{h['head']}": h for h in stats["heads"]}
    assert cell_labels(page)["L0H3"] == expected_label(by_label["L0H3"], "previous_token", names)

    # the keyboard: arrows move between cells, Enter selects; the tooltip follows the focus
    page.focus('.ccell[data-head="L0H0"]')
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.head") == "L1H1"
    assert page.inner_text("#ctip") == cell_labels(page)["L1H1"]
    page.keyboard.press("Enter")
    page.wait_for_function("() => new URLSearchParams(location.search).get('head') === 'L1H1'")
    assert pressed(page) == ["L1H1"]

    # a head: its top examples with the query and key tokens marked
    page.click('.ccell[data-head="L1H2"]')
    page.wait_for_selector("#head-body .cx")
    assert query(page)["head"] == "L1H2" and pressed(page) == ["L1H2"]
    examples = api.get(f"/api/jobs/{job_id}/heads/1/2/examples", params={"metric": "previous_token", "k": 5}).json()
    examples = examples["examples"]
    assert page.locator("#head-body .cx").count() == len(examples) > 0
    first = examples[0]
    q, k = first["query_pos"], first["key_pos"]
    assert q is not None and k == q - 1  # previous-token: the key is the token before the query
    assert page.get_attribute("#head-body .cx >> nth=0 >> .ctok.q", "title") == f"query token [{q}]"
    assert page.inner_text("#head-body .cx >> nth=0 >> .ctok.q") == first["tokens"][q].replace("\n", "↵")
    assert page.inner_text("#head-body .cx >> nth=0 >> .ctok.k") == first["tokens"][k].replace("\n", "↵")
    assert f"score {fmt(first['score'])}" in page.inner_text("#head-body .cx >> nth=0 >> .cx-head")

    # export: the API's file, fetched and saved under the server's file name (with a key too: test_api_key_pages)
    with page.expect_download() as dl:
        page.click("#export-csv")
    assert dl.value.suggested_filename == f"{job_id}-heads.csv"
    csv = Path(dl.value.path()).read_text()
    assert csv.splitlines()[0] == "layer,head,kv_group,metric,mean,std,n,ci_low,ci_high"

    # the scatter: one point per head (both metrics measured on every text), a click selects that head
    before = painted(page, "#scatter")
    page.select_option("#sx", "entropy")
    wait_repaint(page, "#scatter", before)
    before = painted(page, "#scatter")
    page.select_option("#sy", "previous_token")
    wait_repaint(page, "#scatter", before)
    assert (query(page)["x"], query(page)["y"]) == ("entropy", "previous_token")
    points = page.locator("#scatter .scatterlayer .trace >> nth=0 >> .point")
    assert points.count() == N_LAYERS * N_HEADS
    # the tiny random model's heads are much alike: hover the points that stand furthest from the others and
    # click the first whose hover names a head other than the selected one
    page.locator("#scatter").scroll_into_view_if_needed()
    centres = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in (p.bounding_box() for p in points.all())]
    spacing = [min(math.dist(c, o) for j, o in enumerate(centres) if j != i) for i, c in enumerate(centres)]
    label = ""
    for i in sorted(range(len(centres)), key=lambda i: -spacing[i]):
        page.mouse.move(*centres[i])
        hover = page.text_content("#scatter .hoverlayer") or ""
        label = hover.split(" · ")[0]
        if label in by_label and label != "L1H2":
            break
    assert hover.startswith(expected_label(by_label[label], "entropy", names))  # the hover shows that head's statistics
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('head') === '{label}'")
    assert pressed(page) == [label]

    # the dataset-level similarity matrix, JS or cosine
    page.wait_for_selector("#simplot .main-svg")
    before = painted(page, "#simplot")
    page.click('#sim-metric button[data-sim="cosine"]')
    wait_repaint(page, "#simplot", before)
    assert page.get_attribute('#sim-metric button[data-sim="cosine"]', "aria-pressed") == "true"
    assert query(page)["sim"] == "cosine"
    page.screenshot(path=str(artifacts / "corpus-job-1280.png"))
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_timeout(400)  # the plots redraw for the new width
    page.screenshot(path=str(artifacts / "corpus-job-1920.png"))

    # Back returns to the previously selected head (a history entry per head)
    page.go_back()
    page.wait_for_function("() => new URLSearchParams(location.search).get('head') === 'L1H2'")
    page.wait_for_selector("#head-body .cx")
    assert pressed(page) == ["L1H2"]

    # an example opens the one-prompt view of that text on that head
    page.click("#head-body .cx >> nth=0 >> a.cx-open")
    page.wait_for_url(re.compile(r"/\?"))
    page.wait_for_selector("body[data-ready]")
    assert query(page)["text"] == first["text"] and query(page)["head"] == "L1H2"
    assert page.input_value("#prompt") == first["text"]

    # and Back restores the corpus view from its URL
    page.go_back()
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function(f"() => document.querySelectorAll('#cgrid .ccell').length === {N_LAYERS * N_HEADS}")
    assert query(page)["job"] == job_id and pressed(page) == ["L1H2"]


def settled_done(api: httpx.Client, job_id: str, quiet_s: float = 4.0, limit_s: float = 90) -> int:
    """Texts done once the count has stopped changing: a batch in flight when the job was cancelled still lands."""
    deadline = time.monotonic() + limit_s
    done = api.get(f"/api/jobs/{job_id}").json()["progress"]["done"]
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = api.get(f"/api/jobs/{job_id}").json()["progress"]["done"]
        if now == done:
            return int(done)
        done = now
    raise AssertionError(f"job {job_id} still counts texts {limit_s} s after it was cancelled")


def test_cancel_a_running_job_then_resume_it(page: Any, corpus_server: Server, artifacts: Path) -> None:
    base = corpus_server.url
    api = httpx.Client(base_url=base, timeout=60)
    # thousands of texts with roles and gradient importance: the job runs long enough to be cancelled mid-way
    n = 4000
    texts = [f"Text {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(60)) for i in range(n)]
    ds = api.post("/api/datasets", json={"name": "four thousand", "texts": texts})
    assert ds.status_code == 201, ds.text
    ds_id = ds.json()["id"]

    page.set_viewport_size({"width": 1280, "height": 720})
    open_corpus(page, base)
    page.select_option("#dataset", ds_id)
    assert f"{n:,} texts" in page.inner_text("#dataset-info")
    page.check('input[name="analysis"][value="importance"]')
    method = '#imp-method button[data-method="{}"]'
    page.click(method.format("ablation"))
    assert (
        page.get_attribute(method.format("ablation"), "aria-pressed"),
        page.get_attribute(method.format("gradient"), "aria-pressed"),
    ) == ("true", "false")
    page.click(method.format("gradient"))
    assert (
        page.get_attribute(method.format("ablation"), "aria-pressed"),
        page.get_attribute(method.format("gradient"), "aria-pressed"),
    ) == ("false", "true")
    page.click("#start")

    # progress from the event stream: texts done, tokens/s and an ETA, and partial statistics marked as such
    page.wait_for_function(
        "() => /^[1-9][\\d,]* \\/ 4,000 texts · [\\d,]+ tokens · [\\d,]+ tokens\\/s · ETA \\d+:\\d\\d/"
        ".test(document.getElementById('job-progress').textContent)"
    )
    job_id = query(page)["job"]
    job = api.get(f"/api/jobs/{job_id}").json()
    assert (job["analyses"], job["importance"]) == (["roles", "importance"], "gradient")
    page.wait_for_selector("#partial:not([hidden])")
    page.wait_for_function(f"() => document.querySelectorAll('#cgrid .ccell').length === {N_LAYERS * N_HEADS}")
    assert page.is_enabled("#cancel") and page.is_hidden("#resume")
    page.screenshot(path=str(artifacts / "corpus-running-1280.png"))

    page.click("#cancel")
    page.wait_for_selector("#job-state .st-cancelled")
    assert api.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    assert page.is_disabled("#cancel") and page.is_visible("#resume")
    page.wait_for_selector(f'#jobs .job[data-job="{job_id}"][data-state="cancelled"] button:has-text("Resume")')
    done = settled_done(api, job_id)
    assert 0 < done < n  # it stopped part-way

    # resume continues from the finished batches; cancel again to leave the server idle
    page.click("#resume")
    page.wait_for_selector("#job-state .st-running, #job-state .st-interrupted", timeout=60_000)
    assert page.is_visible("#job-state .st-running"), "the resumed job was marked interrupted by its cancelled run"
    page.wait_for_function(f"() => Number(document.getElementById('job-bar').getAttribute('aria-valuenow')) > {done}")
    page.click("#cancel")
    page.wait_for_selector("#job-state .st-cancelled")
    assert api.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    settled_done(api, job_id)


def test_errors_show_in_the_error_bar(page: Any, corpus_server: Server, tmp_path: Path) -> None:
    page.watch.allow("404")
    page.watch.allow("422")
    base = corpus_server.url
    open_corpus(page, base, "?job=job_000000000000")
    page.wait_for_selector("#error:not([hidden])")
    assert (
        page.inner_text("#error-text").startswith("no job ")
        and page.get_attribute("#error", "data-code") == "not_found"
    )
    assert page.get_attribute("#results", "data-state") != "ready"

    # a malformed .jsonl: the server says which line; nothing is stored and no job starts
    page.click("#error-close")
    before = httpx.get(f"{base}/api/jobs").json()["jobs"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    page.click('#source button[data-source="upload"]')
    page.set_input_files("#file", str(bad))
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error-text")
    assert message.startswith("line 2: not valid JSON: "), message  # in words, without the code in front
    assert httpx.get(f"{base}/api/jobs").json()["jobs"] == before
    assert page.get_attribute('#source button[data-source="upload"]', "aria-pressed") == "true"  # still there to fix


def test_a_job_not_started_says_so_instead_of_zero_of_zero(page: Any, corpus_server: Server) -> None:
    """A queued job has no texts counted yet: its line says it is waiting, not "0 / 0 texts" (issue 26, item 8)."""
    open_corpus(page, corpus_server.url)
    line = "(job) => import('/static/js/corpus/jobs.js').then((m) => m.progressText(job))"
    empty = {"done": 0, "total": 0, "tokens": 0, "tokens_per_s": None, "eta_s": None}
    queued = page.evaluate(line, {"state": "queued", "progress": empty})
    assert queued.startswith("queued") and "0 / 0" not in queued
    assert "0 / 0" not in page.evaluate(line, {"state": "running", "progress": empty})
    running = {"done": 3, "total": 8, "tokens": 120, "tokens_per_s": 40.0, "eta_s": 5}
    assert page.evaluate(line, {"state": "running", "progress": running}).startswith("3 / 8 texts · 120 tokens")
    count = "(job) => import('/static/js/corpus/jobs.js').then((m) => m.countText(job))"  # the Recent jobs list
    assert page.evaluate(count, {"state": "queued", "progress": empty}) == "queued"
    assert page.evaluate(count, {"state": "running", "progress": empty}) == "starting"
    assert page.evaluate(count, {"state": "running", "progress": running}) == "3/8"
    assert page.evaluate(count, {"state": "done", "progress": {**running, "done": 8}}) == "8/8"
