"""Every page under HEADSCOPE_API_KEY: the corpus job's progress arrives through its event stream (read with
fetch(), so it carries the key) rather than by polling, exports download, and the Heads (continuation stream),
Trace and Lecture pages send the key with every request and never put it in a URL."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pyarrow.parquet as pq
import pytest

from tests.browser.pages import open_app, query, run_prompt
from tests.support.server import API_KEY, Server

pytestmark = pytest.mark.browser

N_HEADS = 2 * 4  # the tiny llama: 2 layers × 4 heads
# enough texts (≈ 48 tokens each) for many batches with gradient importance: the job runs for a few seconds
TEXTS = [f"Text {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(20)) for i in range(600)]


class Requests:
    """Every request the page makes to /api/: method, URL, resource type, whether it carried the key, status."""

    def __init__(self, page: Any) -> None:
        self.seen: list[dict[str, Any]] = []
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, r: Any) -> None:
        if "/api/" in r.url:
            self.seen.append(
                {"method": r.method, "url": r.url, "type": r.resource_type, "key": r.headers.get("x-api-key"), "r": r}
            )

    def _response(self, res: Any) -> None:
        for s in self.seen:
            if s["r"] is res.request:
                s["status"] = res.status

    def to(self, path: str, method: str = "GET") -> list[dict[str, Any]]:
        """The requests to exactly `path` (no query string) with `method`."""
        return [s for s in self.seen if s["method"] == method and s["url"].split("?")[0].endswith(path)]

    def check_keyed(self) -> None:
        """Every request carried the key, none was refused, and no URL holds the key."""
        assert self.seen
        assert all(s["key"] == API_KEY for s in self.seen), [s["url"] for s in self.seen if s["key"] != API_KEY]
        assert not [s["url"] for s in self.seen if s.get("status") == 401]
        assert not [s["url"] for s in self.seen if API_KEY in s["url"]]


def give_key(page: Any) -> None:
    page.wait_for_selector("#api-key-dialog[open]")
    page.fill("#api-key-input", API_KEY)
    page.press("#api-key-input", "Enter")


def keyed(page: Any) -> None:
    """The tab already holds the key (as after the first prompt): pages load without asking."""
    page.add_init_script(f"sessionStorage.setItem('headscope:api-key', {json.dumps(API_KEY)})")


# the progress bar's values as the page shows them, each change recorded in window.__progress
WATCH_BAR = """() => {
  const bar = document.getElementById("job-bar");
  window.__progress = [];
  new MutationObserver(() => window.__progress.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
}"""


def test_corpus_job_progress_streams_and_exports_download_with_the_key(
    page: Any, keyed_server: Server, artifacts: Path
) -> None:
    base = keyed_server.url
    api = httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": API_KEY})
    ds = api.post("/api/datasets", json={"name": "six hundred", "texts": TEXTS})
    assert ds.status_code == 201, ds.text
    ds_id = ds.json()["id"]

    page.watch.allow("status of 401")  # the first request, before the key is given
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(base + "/corpus")
    page.wait_for_selector("#api-key-dialog[open]")
    page.screenshot(path=str(artifacts / "corpus-keyed-dialog-1280.png"))
    give_key(page)
    page.wait_for_selector("body[data-ready]")
    assert page.is_disabled("#export-csv")  # nothing to export before a job has statistics
    page.screenshot(path=str(artifacts / "corpus-keyed-start-1280.png"))
    requests = Requests(page)  # from here on, every request must carry the key
    page.select_option("#dataset", ds_id)
    page.check('input[name="analysis"][value="importance"]')
    page.fill("#max-tokens", "64")
    page.evaluate(WATCH_BAR)
    page.click("#start")

    page.wait_for_function(
        f"() => /^[1-9]\\d* \\/ {len(TEXTS)} texts/.test(document.getElementById('job-progress').textContent)"
    )
    page.wait_for_selector("#partial:not([hidden])")
    page.screenshot(path=str(artifacts / "corpus-keyed-running-1280.png"))
    page.wait_for_selector("#job-state .st-done", timeout=240_000)
    job_id = query(page)["job"]
    assert api.get(f"/api/jobs/{job_id}").json()["state"] == "done"

    # the progress came through the stream: one fetch() of /events, answered 200, and the bar moved through
    # batches in between without the page asking for the job again (polling would ask once a second)
    events = requests.to(f"/api/jobs/{job_id}/events")
    assert len(events) == 1 and events[0]["type"] == "fetch" and events[0]["status"] == 200
    assert len(requests.to(f"/api/jobs/{job_id}")) == 1  # opening the job; its end came as the stream's `end`
    shown = page.evaluate("window.__progress")
    assert any(0 < v < len(TEXTS) for v in shown), shown  # partial progress was drawn
    assert shown == sorted(shown) and shown[-1] == len(TEXTS)
    assert page.get_attribute("#job-bar", "aria-valuenow") == str(len(TEXTS))

    # export: a fetch with the key, saved from a Blob under the server's file name
    page.wait_for_selector("#export-csv:not([disabled])")
    for fmt in ("csv", "parquet"):
        with page.expect_download() as dl:
            page.click(f"#export-{fmt}")
        got = dl.value
        assert got.suggested_filename == f"{job_id}-heads.{fmt}"
        data = Path(got.path()).read_bytes()
        assert data == api.get(f"/api/jobs/{job_id}/export", params={"format": fmt}).content
        if fmt == "csv":
            assert data.decode().splitlines()[0] == "layer,head,kv_group,metric,mean,std,n,ci_low,ci_high"
        else:
            table = pq.read_table(io.BytesIO(data))
            assert table.num_rows % N_HEADS == 0 and table.num_rows > N_HEADS  # every head × each metric
    exports = [s for s in requests.seen if "/export" in s["url"]]
    assert [s["type"] for s in exports] == ["fetch", "fetch"] and all(s["status"] == 200 for s in exports)
    assert page.locator('a[href*="/api/"]').count() == 0  # no plain link to the API on the page
    requests.check_keyed()
    page.screenshot(path=str(artifacts / "corpus-keyed-done-1280.png"))

    # reopened from its URL in a new tab of the same session: no prompt, the finished job shows straight away
    page.reload()
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function(f"() => document.querySelectorAll('#cgrid .ccell').length === {N_HEADS}")
    assert page.locator("#api-key-dialog").count() == 0
    requests.check_keyed()


def test_heads_trace_and_lecture_pages_send_the_key(page: Any, keyed_server: Server) -> None:
    keyed(page)
    requests = Requests(page)

    # Heads page: the continuation streams (POST /api/generate read as events) with the key
    open_app(page, keyed_server.url)
    run_prompt(page, "The cat sat on the mat. The cat")
    page.fill("#cont-n", "4")
    page.click("#cont-run")
    page.wait_for_selector('#continuation[data-state="done"]')
    assert page.locator('.cont-tokens[data-row="baseline"] .t').count() == 4
    assert requests.to("/api/generate", "POST")[0]["status"] == 200

    # Trace: the example pair, all three panels
    page.goto(keyed_server.url + "/trace")
    page.wait_for_selector("body[data-ready]")
    page.click(".example")
    for panel in ("lens-panel", "dla-panel", "patch-panel"):
        page.wait_for_selector(f"#{panel}[data-painted]:not(.outdated)", timeout=120_000)
    assert requests.to("/api/patch", "POST") and requests.to("/api/dla", "POST")

    # Lecture: the pruning curve on a text, and the trade-off
    params = {"text": "A short text for the curve.", "steps": "4", "seeds": "2"}
    page.goto(keyed_server.url + "/lecture?" + urlencode(params))
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector("#curve-panel[data-painted]", timeout=120_000)
    page.wait_for_selector("#tradeoff-panel[data-painted]")
    assert requests.to("/api/prune_curve", "POST") and requests.to("/api/head_tradeoff")
    assert page.locator('a[href*="/api/"]').count() == 0
    assert page.locator("#api-key-dialog").count() == 0
    requests.check_keyed()


def test_a_dropped_stream_falls_back_to_polling_with_the_key(page: Any, keyed_server: Server) -> None:
    base = keyed_server.url
    api = httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": API_KEY})
    ds = api.post("/api/datasets", json={"name": "sixty", "texts": TEXTS[:60]}).json()["id"]
    page.route("**/api/jobs/*/events", lambda route: route.abort())  # the stream never gets through
    page.watch.allow("net::ERR_FAILED")
    keyed(page)
    requests = Requests(page)
    page.goto(base + "/corpus")
    page.wait_for_selector("body[data-ready]")
    page.select_option("#dataset", ds)
    page.fill("#max-tokens", "64")
    page.click("#start")
    page.wait_for_selector("#job-state .st-done", timeout=120_000)
    job_id = query(page)["job"]
    assert len(requests.to(f"/api/jobs/{job_id}")) >= 2  # opened, then asked again until it had ended
    assert page.get_attribute("#job-bar", "aria-valuenow") == "60"
    page.wait_for_function(f"() => document.querySelectorAll('#cgrid .ccell').length === {N_HEADS}")
    requests.check_keyed()
