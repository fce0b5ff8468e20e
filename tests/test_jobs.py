"""Corpus jobs end to end on a tiny model: statistics, cancel, restart and resume, OOM retry, SSE, bad input."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.corpus import jobs as jobs_module
from app.corpus import measure, stats
from app.corpus.jobs import Jobs
from app.errors import Cancelled
from app.inspect.engine.runs import encode
from app.inspect.engine.steps import drain
from app.inspect.model.loaded import Loaded
from app.main import create_app
from tests.support.clients import wait_ready

TEXTS = [
    "The cat sat on the mat. The cat sat on the mat again.",
    "Alice gave Bob a book, and then Bob gave Alice a pen.",
    "One two three four five six, one two three four five six.",
    "Heads attend to earlier tokens.",
    "A short one.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Repeat repeat repeat: the quick brown fox, the quick brown fox.",
    "Attention is all you need, they said; attention is what we measure.",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_client(loaded: Loaded, data_dir: Path, **overrides: Any) -> Iterator[TestClient]:
    app = create_app(Settings(model=loaded.name, data_dir=data_dir, **overrides), loaded=loaded)
    jobs: Jobs = app.state.jobs
    jobs.max_batch_tokens, jobs.max_batch_texts = 40, 3  # several batches of a few texts each
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def client(tiny_loaded: dict[str, Loaded], data_dir: Path) -> Iterator[TestClient]:
    yield from open_client(tiny_loaded["llama"], data_dir)


def jobs_of(client: TestClient) -> Jobs:
    jobs: Jobs = client.app.state.jobs  # type: ignore[attr-defined]
    return jobs


def dataset(client: TestClient, texts: list[str] = TEXTS) -> str:
    r = client.post("/api/datasets", json={"name": "tiny", "texts": texts})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_state(client: TestClient, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def one_text_values(
    loaded: Loaded, texts: list[str], analyses: frozenset[str], max_tokens: int
) -> dict[str, np.ndarray]:
    """Each text measured alone (a batch of one), stacked: metric -> (n_texts, n_layers, n_heads)."""
    per_text = [
        drain(
            measure.measure_batch_steps(loaded, [(i, encode(loaded.tokenizer, t)[:max_tokens])], analyses, "gradient")
        ).texts[0]
        for i, t in enumerate(texts)
    ]
    return {m: np.stack([r.values[m] for r in per_text]) for m in per_text[0].values}


def test_job_statistics_are_summarise_over_the_one_text_values(
    client: TestClient, tiny_loaded: dict[str, Loaded]
) -> None:
    ds = dataset(client)
    r = client.post("/api/jobs", json={"dataset": ds, "analyses": ["roles", "importance", "similarity"], "seed": 7})
    assert r.status_code == 202 and r.json()["id"].startswith("job_")
    job = wait_state(client, r.json()["id"], {"done", "failed"})
    assert job["state"] == "done", job
    assert job["progress"]["done"] == job["progress"]["total"] == len(TEXTS)
    assert job["progress"]["eta_s"] == 0 and job["progress"]["tokens_per_s"] > 0

    heads = client.get(f"/api/jobs/{job['id']}/heads").json()
    assert heads["n_texts"] == len(TEXTS) and heads["partial"] is False
    assert set(heads["metrics"]) == {*measure.role_metrics(), "importance"}
    for h in heads["heads"]:  # the corpus contract's first name for prefix matching on the texts
        assert h["induction"] == h["text_induction"]
    expected = one_text_values(tiny_loaded["llama"], TEXTS, frozenset({"roles", "importance"}), 128)
    for metric in heads["metrics"]:
        summary = stats.summarise(expected[metric], seed=7)
        for h in heads["heads"]:
            got, layer, head = h[metric], h["layer"], h["head"]
            assert got["n"] == summary.n[layer, head]
            for field in ("mean", "std", "ci_low", "ci_high"):
                want = float(getattr(summary, field)[layer, head])
                assert (got[field] is None) if np.isnan(want) else got[field] == pytest.approx(want, abs=1e-5)
        assert heads["reliability"][metric] == pytest.approx(stats.split_half(expected[metric], 7), abs=1e-9)

    # entropy per text is what /api/heads gives for that text: the job's mean is their mean
    one = [client.post("/api/heads", json={"text": t}).json()["heads"] for t in TEXTS]
    for i, h in enumerate(heads["heads"]):
        assert h["entropy"]["mean"] == pytest.approx(np.mean([o[i]["entropy"] for o in one]), abs=1e-5)

    sim = client.get(f"/api/jobs/{job['id']}/similarity", params={"metric": "cosine"}).json()
    assert sim["n_texts"] == len(TEXTS) and len(sim["matrix"]) == len(sim["heads"]) == 8
    assert sim["matrix"][0][0] == pytest.approx(1.0, abs=1e-5)

    ex = client.get(f"/api/jobs/{job['id']}/heads/1/2/examples", params={"metric": "previous_token", "k": 3}).json()
    scores = [e["score"] for e in ex["examples"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    column = expected["previous_token"][:, 1, 2]
    assert scores[0] == pytest.approx(float(np.nanmax(column)), abs=1e-5)
    top = ex["examples"][0]
    assert top["text"] == TEXTS[top["text_index"]] and top["tokens"]
    assert 0 <= top["key_pos"] <= top["query_pos"] < len(top["tokens"])

    csv_rows = client.get(f"/api/jobs/{job['id']}/export", params={"format": "csv"})
    assert csv_rows.headers["content-disposition"].startswith("attachment")
    assert len(csv_rows.text.strip().splitlines()) == 1 + 8 * len(heads["metrics"])
    rows = client.get(f"/api/jobs/{job['id']}/export", params={"format": "json"}).json()
    parquet = client.get(f"/api/jobs/{job['id']}/export", params={"format": "parquet"})
    table = pq.read_table(pa_buffer(parquet.content)).to_pylist()
    assert table == rows and rows[0].keys() == {
        "layer",
        "head",
        "kv_group",
        "metric",
        "mean",
        "std",
        "n",
        "ci_low",
        "ci_high",
    }
    assert client.get("/api/jobs").json()["jobs"][0]["id"] == job["id"]


def pa_buffer(data: bytes) -> Any:
    import pyarrow as pa

    return pa.BufferReader(data)


def slow_measure(monkeypatch: pytest.MonkeyPatch, seconds: float, calls: list[int]) -> None:
    real = measure.measure_batch_steps

    def slow(loaded: Loaded, texts: list[tuple[int, list[int]]], *args: Any, **kwargs: Any) -> measure.Steps:
        calls.append(len(texts))
        time.sleep(seconds)
        return (yield from real(loaded, texts, *args, **kwargs))

    monkeypatch.setattr(jobs_module, "measure_batch_steps", slow)


def test_cancel_keeps_finished_batches_and_a_second_cancel_is_409(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    slow_measure(monkeypatch, 0.3, calls)
    job_id = client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"]
    wait_state(client, job_id, {"running"})
    while client.get(f"/api/jobs/{job_id}").json()["progress"]["done"] == 0:
        time.sleep(0.01)
    r = client.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    measured = len(calls)
    time.sleep(0.5)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and 0 < job["progress"]["done"] < len(TEXTS)
    assert job["progress"] == r.json()["progress"]  # nothing counted after the cancel
    assert len(calls) == measured  # no batch started after it
    again = client.delete(f"/api/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    heads = client.get(f"/api/jobs/{job_id}/heads").json()
    assert heads["partial"] is True and heads["n_texts"] == job["progress"]["done"]


def test_cancel_stops_a_real_job_within_one_slice_and_resume_continues_from_what_was_committed(
    client: TestClient, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Roles + gradient importance on the tiny model, one decoder block per slice: after DELETE answers, at most
    the block under way runs, nothing more is committed, and resume measures only the batches not committed."""
    monkeypatch.setattr(measure, "SLICE_TOKENS", 8)  # one block of a batch per slice (blocks_per_step)
    loaded: Loaded = client.app.state.service.model  # type: ignore[attr-defined]
    blocks = {"run": 0}

    def count(*_: Any) -> None:
        blocks["run"] += 1

    handles = [block.register_forward_pre_hook(count) for block in loaded.adapter.layers]
    texts = TEXTS * 8
    jobs = jobs_of(client)
    try:
        body = {"dataset": dataset(client, texts), "analyses": ["roles", "importance"], "importance": "gradient"}
        job_id = client.post("/api/jobs", json=body).json()["id"]
        while client.get(f"/api/jobs/{job_id}").json()["progress"]["done"] < 6:
            time.sleep(0.005)
        task = jobs._tasks[job_id]
        answer = client.delete(f"/api/jobs/{job_id}").json()
        at_cancel = blocks["run"]
        assert answer["state"] == "cancelled" and 6 <= answer["progress"]["done"] < len(texts)
        assert isinstance(task.future.exception(timeout=30), Cancelled)  # the work has stopped
        assert blocks["run"] - at_cancel <= 1  # the slice under way: one block, no more
        time.sleep(0.2)
        assert client.get(f"/api/jobs/{job_id}").json()["progress"] == answer["progress"]
        with sqlite3.connect(data_dir / "headscope.sqlite") as db:
            stored = db.execute("SELECT count(*) FROM job_texts WHERE job_id = ?", (job_id,)).fetchone()[0]
            batches = db.execute("SELECT count(*) FROM job_batches WHERE job_id = ?", (job_id,)).fetchone()[0]
        assert stored == answer["progress"]["done"]  # the counter is what the store holds

        measured = jobs.forwards
        resumed = client.post(f"/api/jobs/{job_id}/resume").json()
        assert resumed["progress"]["done"] == answer["progress"]["done"]  # from the last committed batch
        job = wait_state(client, job_id, {"done", "failed"})
        assert job["state"] == "done" and job["progress"]["done"] == len(texts), job
        plan = measure.length_batches(lens(loaded, texts), jobs.max_batch_tokens, jobs.max_batch_texts)
        assert jobs.forwards - measured == len(plan) - batches  # only the batches not committed
        assert client.get(f"/api/jobs/{job_id}/heads").json()["n_texts"] == len(texts)  # each text once
    finally:
        for handle in handles:
            handle.remove()


def test_a_dataset_a_running_job_reads_cannot_be_deleted(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    slow_measure(monkeypatch, 0.3, calls)
    ds = dataset(client)
    job_id = client.post("/api/jobs", json={"dataset": ds}).json()["id"]
    wait_state(client, job_id, {"running"})
    refused = client.delete(f"/api/datasets/{ds}")
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    assert job_id in refused.json()["detail"]  # names the job to cancel
    assert client.get(f"/api/datasets/{ds}").status_code == 200  # nothing changed
    assert client.delete(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    assert client.delete(f"/api/datasets/{ds}").status_code == 204
    assert client.get(f"/api/datasets/{ds}").status_code == 404


def test_resume_right_after_cancel_runs_to_the_end(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancelled run is closed at its next slice, after the resume: its exit must not touch the new run."""
    calls: list[int] = []
    slow_measure(monkeypatch, 0.3, calls)
    job_id = client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"]
    wait_state(client, job_id, {"running"})
    while not calls:
        time.sleep(0.01)
    assert client.delete(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    resumed = client.post(f"/api/jobs/{job_id}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
    job = wait_state(client, job_id, {"done", "interrupted", "failed"})
    assert job["state"] == "done" and job["progress"]["done"] == len(TEXTS), job
    assert client.get(f"/api/jobs/{job_id}/heads").json()["n_texts"] == len(TEXTS)  # each text once


def test_restart_interrupts_and_resume_skips_finished_batches(
    tiny_loaded: dict[str, Loaded], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = tiny_loaded["llama"]
    calls: list[int] = []
    slow_measure(monkeypatch, 0.2, calls)
    body = {"analyses": ["roles", "similarity"], "seed": 3}
    for client in open_client(loaded, data_dir):
        ds = dataset(client)
        job_id = client.post("/api/jobs", json={"dataset": ds, **body}).json()["id"]
        while client.get(f"/api/jobs/{job_id}").json()["progress"]["done"] < 3:
            time.sleep(0.01)
    # the server stopped mid-job: finished batches are stored, the job is interrupted
    with sqlite3.connect(data_dir / "headscope.sqlite") as db:
        state, done = db.execute("SELECT state, done FROM jobs WHERE id = ?", (job_id,)).fetchone()
        batches = db.execute("SELECT count(*) FROM job_batches WHERE job_id = ?", (job_id,)).fetchone()[0]
        assert state == "interrupted" and 3 <= done < len(TEXTS)
        db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job_id,))  # as if killed hard
    first_run = len(calls)
    for client in open_client(loaded, data_dir):
        assert client.get(f"/api/jobs/{job_id}").json()["state"] == "interrupted"  # found running at startup
        r = client.post(f"/api/jobs/{job_id}/resume")
        assert r.status_code == 202 and r.json()["state"] in {"queued", "running"}
        job = wait_state(client, job_id, {"done", "failed"})
        assert job["state"] == "done" and job["progress"]["done"] == len(TEXTS)
        n_batches = len(measure.length_batches(lens(loaded, TEXTS), 40, 3))
        assert len(calls) - first_run == n_batches - batches  # finished batches were not run again
        resumed = client.get(f"/api/jobs/{job_id}/heads").json()
        sim = client.get(f"/api/jobs/{job_id}/similarity").json()
        assert sim["n_texts"] == len(TEXTS)  # no batch counted twice
        fresh_id = client.post("/api/jobs", json={"dataset": ds, **body}).json()["id"]
        wait_state(client, fresh_id, {"done"})
        assert_same_heads(client.get(f"/api/jobs/{fresh_id}/heads").json(), resumed)
        fresh_sim = client.get(f"/api/jobs/{fresh_id}/similarity").json()["matrix"]
        np.testing.assert_allclose(fresh_sim, sim["matrix"], atol=1e-9)
        again = client.post(f"/api/jobs/{job_id}/resume")
        assert again.status_code == 409  # a done job does not resume


def assert_same_heads(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal head tables, up to float noise (a text's numbers differ by ~1e-6 with the batch it ran in)."""
    assert a["n_texts"] == b["n_texts"] and a["metrics"] == b["metrics"]
    for ha, hb in zip(a["heads"], b["heads"], strict=True):
        for metric in a["metrics"]:
            assert ha[metric]["n"] == hb[metric]["n"]
            for field in ("mean", "std", "ci_low", "ci_high"):
                assert ha[metric][field] == pytest.approx(hb[metric][field], abs=1e-5, nan_ok=True)


def lens(loaded: Loaded, texts: list[str]) -> list[int]:
    return [len(encode(loaded.tokenizer, t)[:128]) for t in texts]


def test_out_of_memory_in_a_batch_retries_it_smaller(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    real = measure.measure_batch_steps
    sizes: list[int] = []

    def oom_unless_alone(loaded: Loaded, texts: list[tuple[int, list[int]]], *args: Any) -> measure.Steps:
        sizes.append(len(texts))
        if len(texts) > 1:
            raise torch.OutOfMemoryError("injected")
        return (yield from real(loaded, texts, *args))

    monkeypatch.setattr(jobs_module, "measure_batch_steps", oom_unless_alone)
    ds = dataset(client)
    job = wait_state(client, client.post("/api/jobs", json={"dataset": ds, "seed": 1}).json()["id"], {"done", "failed"})
    assert job["state"] == "done" and job["progress"]["done"] == len(TEXTS)
    assert sizes.count(1) == len(TEXTS) and max(sizes) > 1
    monkeypatch.setattr(jobs_module, "measure_batch_steps", real)
    plain = wait_state(client, client.post("/api/jobs", json={"dataset": ds, "seed": 1}).json()["id"], {"done"})
    assert_same_heads(
        client.get(f"/api/jobs/{job['id']}/heads").json(), client.get(f"/api/jobs/{plain['id']}/heads").json()
    )


def test_a_text_that_does_not_fit_alone_fails_the_job_clearly(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_oom(*args: Any) -> measure.BatchResult:
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(jobs_module, "measure_batch_steps", always_oom)
    job = wait_state(
        client, client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"], {"done", "failed"}
    )
    assert job["state"] == "failed" and "out of memory" in job["error"] and "max_tokens" in job["error"]
    r = client.post(f"/api/jobs/{job['id']}/resume")  # a failed job may be resumed (and fails again here)
    assert r.status_code == 202


def test_events_stream_progress_then_end(client: TestClient) -> None:
    job_id = client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[-1] == "end" and names.count("end") == 1 and set(names[:-1]) == {"progress"}
    done = [e["progress"]["done"] for _, e in events]
    assert done == sorted(done) and done[-1] == len(TEXTS) and events[-1][1]["state"] == "done"
    assert len(events) >= 3  # one per finished batch, not only the end
    assert not jobs_of(client)._listeners  # the stream left no listener behind


def test_interactive_requests_run_between_batches(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    slow_measure(monkeypatch, 0.4, calls)
    job_id = client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"]
    while not calls:
        time.sleep(0.01)
    start = time.perf_counter()
    r = client.post("/api/ablate", json={"text": "served between two batches", "ablate": [{"layer": 0, "head": 1}]})
    elapsed = time.perf_counter() - start
    assert r.status_code == 200
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "running"  # it did not wait for the whole job
    assert elapsed < 0.4 * 3  # at most the batch under way, not the remaining ones
    client.delete(f"/api/jobs/{job_id}")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"dataset": "ds_000000000000"}, 404),
        ({"dataset": "builtin:induction", "analyses": []}, 422),
        ({"dataset": "builtin:induction", "max_tokens": 100_000}, 422),
        ({"dataset": "builtin:induction", "analyses": ["everything"]}, 422),
        ({"dataset": "builtin:induction", "importance": "magic"}, 422),
    ],
)
def test_bad_job_requests_are_4xx_and_store_nothing(client: TestClient, body: dict[str, Any], status: int) -> None:
    r = client.post("/api/jobs", json=body)
    assert r.status_code == status and set(r.json()) == {"error", "detail"}
    assert client.get("/api/jobs").json()["jobs"] == []


def test_unknown_jobs_are_404_and_heads_before_any_batch_409(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for method, path in [
        ("GET", "/api/jobs/job_000000000000"),
        ("DELETE", "/api/jobs/job_000000000000"),
        ("POST", "/api/jobs/job_000000000000/resume"),
        ("GET", "/api/jobs/job_000000000000/heads"),
        ("GET", "/api/jobs/job_000000000000/events"),
        ("GET", "/api/jobs/job_000000000000/export"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path)
    calls: list[int] = []
    slow_measure(monkeypatch, 0.5, calls)
    job_id = client.post("/api/jobs", json={"dataset": dataset(client)}).json()["id"]
    assert client.get(f"/api/jobs/{job_id}/heads").status_code == 409
    assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409  # running: nothing to resume
    client.delete(f"/api/jobs/{job_id}")
