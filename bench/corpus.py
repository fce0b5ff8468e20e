"""Corpus-job rows (issue 9, "Speed and memory"): throughput vs plain batched forwards, memory vs corpus size,
first progress event, and a cached /api/attention while a job runs.

`python -m bench.corpus rss N` runs one roles-only job over N texts in a fresh process and prints its peak RSS
(one JSON line); the RSS row compares two such processes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from app.config import Settings
from app.corpus.datasets import DatasetStore
from app.corpus.jobs import Jobs, JobSpec
from app.corpus.jobstore import JobStore
from app.corpus.measure import length_batches, pad
from app.inspect.engine.runs import encode
from app.inspect.model.loaded import Loaded
from app.service import Service
from bench import inputs
from bench.report import Row, nbytes, seconds

TOKENS = 128


def corpus(loaded: Loaded, n_texts: int, n_tokens: int = TOKENS) -> list[str]:
    """n_texts different windows of the prose, each about n_tokens long (jobs cut them to max_tokens)."""
    ids = inputs.token_ids(loaded.tokenizer, 4096)
    out = []
    for i in range(n_texts):
        start = (i * 37) % (len(ids) - n_tokens - 8)
        out.append(loaded.tokenizer.decode(ids[start : start + n_tokens + 4]))
    return out


@contextmanager
def job_runner(loaded: Loaded, data_dir: Path) -> Iterator[Jobs]:
    """A ready model service with jobs over a dataset store in data_dir (no HTTP)."""
    service = Service(Settings(model=loaded.name, data_dir=data_dir, warmup=False), loaded)
    service.ready = True
    datasets = DatasetStore(data_dir, 100_000)
    jobs = Jobs(service, datasets, JobStore(data_dir))
    try:
        yield jobs
    finally:
        service.shutdown()


def run_job(jobs: Jobs, dataset: str, analyses: tuple[str, ...]) -> tuple[float, int]:
    """(seconds from start to done, tokens measured) of one job."""
    start = time.perf_counter()
    job = jobs.start(JobSpec(dataset=dataset, analyses=analyses, max_tokens=TOKENS))
    while not (job := jobs.get(job.id)).ended:
        time.sleep(0.01)
    assert job.state == "done", job.error
    return time.perf_counter() - start, job.tokens


@torch.inference_mode()
def plain_batches(loaded: Loaded, texts: list[str], jobs: Jobs) -> tuple[float, int]:
    """(seconds, tokens) of plain SDPA backbone forwards over the job's own padded batches."""
    ids = [encode(loaded.tokenizer, t)[:TOKENS] for t in texts]
    plan = length_batches([len(i) for i in ids], jobs.max_batch_tokens, jobs.max_batch_texts)
    start = time.perf_counter()
    for batch in plan:
        padded = pad([ids[i] for i in batch], "right", loaded.device)
        loaded.adapter.backbone()(**padded.inputs())
    return time.perf_counter() - start, sum(len(i) for i in ids)


def throughput_rows(loaded: Loaded, n_texts: int) -> list[Row]:
    """Roles-only (target ≥ 0.7×) and roles + gradient importance (≥ 0.3×) vs plain batched forwards."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, job_runner(loaded, Path(tmp)) as jobs:
        texts = corpus(loaded, n_texts)
        dataset = jobs.datasets.create("bench", texts, 0).id
        plain_batches(loaded, texts[:16], jobs)  # warm-up
        for analyses, target in ((("roles",), 0.7), (("roles", "importance"), 0.3)):
            job_s, tokens = run_job(jobs, dataset, analyses)
            plain_s, plain_tokens = plain_batches(loaded, texts, jobs)
            ratio = (tokens / job_s) / (plain_tokens / plain_s)
            rows.append(
                Row(
                    what=f"corpus job ({' + '.join(analyses)}), {n_texts} texts × {TOKENS} tokens: tokens/s",
                    measured=f"{tokens / job_s:.0f} tok/s ({seconds(job_s)})",
                    baseline=f"plain batched SDPA forwards {plain_tokens / plain_s:.0f} tok/s",
                    ratio=ratio,
                    target=f"≥ {target}×",
                    passed=ratio >= target,
                )
            )
    return rows


def rss_child(n_texts: int) -> dict[str, Any]:
    from bench import mem, models

    loaded = models.default_model()
    with tempfile.TemporaryDirectory() as tmp, job_runner(loaded, Path(tmp)) as jobs:
        dataset = jobs.datasets.create("bench", corpus(loaded, n_texts), 0).id
        start = time.perf_counter()
        _, tokens = run_job(jobs, dataset, ("roles",))
        return {"seconds": time.perf_counter() - start, "tokens": tokens, "peak_rss_bytes": mem.peak_rss()}


def rss_row(small: int, large: int) -> Row:
    """Peak RSS of a roles-only job over `large` texts vs `small` texts, each in a fresh process (≤ 1.1×)."""
    peaks = {}
    for n in (small, large):
        out = subprocess.run(
            [sys.executable, "-m", "bench.corpus", "rss", str(n)], capture_output=True, text=True, check=True
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
    ratio = peaks[large] / peaks[small]
    return Row(
        what=f"peak RSS, roles job over {large} texts vs {small} texts (fresh processes)",
        measured=nbytes(peaks[large]),
        baseline=f"{small} texts {nbytes(peaks[small])}",
        ratio=ratio,
        target="≤ 1.10×",
        passed=ratio <= 1.10,
    )


@contextmanager
def app_client(loaded: Loaded, data_dir: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = Settings(model=loaded.name, data_dir=data_dir, max_tokens=loaded.adapter.layout.max_positions)
    with TestClient(create_app(settings, loaded=loaded)) as c:
        while c.get("/api/ready").status_code != 200:
            time.sleep(0.05)
        yield c


def server_rows(loaded: Loaded, n_texts: int, reps: int) -> list[Row]:
    """First progress event after the start (≤ 5 s); cached /api/attention during a job vs idle (≤ 2×)."""
    with tempfile.TemporaryDirectory() as tmp, app_client(loaded, Path(tmp)) as c:
        dataset = c.post("/api/datasets", json={"name": "bench", "texts": corpus(loaded, n_texts)}).json()["id"]
        start = time.perf_counter()
        job_id = c.post("/api/jobs", json={"dataset": dataset}).json()["id"]
        first = None
        with c.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["progress"]["done"] > 0:
                    first = time.perf_counter() - start
                    break
        c.delete(f"/api/jobs/{job_id}")
        rows = [
            Row(
                what="first progress event (a finished batch) after POST /api/jobs",
                measured=seconds(first),
                target="≤ 5 s",
                passed=first is not None and first <= 5.0,
            )
        ]
        body = {"text": inputs.text_of(loaded.tokenizer, 512), "heads": [{"layer": 3, "head": 1}], "encoding": "f16"}
        assert c.post("/api/attention", json=body).status_code == 200  # the run is cached from here on

        def timed() -> float:
            t = time.perf_counter()
            assert c.post("/api/attention", json=body).status_code == 200
            return time.perf_counter() - t

        idle = statistics.median(timed() for _ in range(reps))
        job_id = c.post("/api/jobs", json={"dataset": dataset, "analyses": ["roles", "importance"]}).json()["id"]
        while c.get(f"/api/jobs/{job_id}").json()["progress"]["done"] == 0:
            time.sleep(0.02)
        busy = [timed() for _ in range(reps)]
        running = c.get(f"/api/jobs/{job_id}").json()["state"] == "running"
        c.delete(f"/api/jobs/{job_id}")
        ratio = statistics.median(busy) / idle
        rows.append(
            Row(
                what="cached /api/attention (one head, 512 tokens) while a job runs",
                measured=seconds(statistics.median(busy)),
                baseline=f"idle {seconds(idle)}",
                ratio=ratio,
                target="≤ 2×",
                passed=ratio <= 2.0 and running,
                beside="" if running else "the job ended before the timing did",
            )
        )
    return rows


def measure(loaded: Loaded, quick: bool) -> list[Row]:
    n = 64 if quick else 256
    rows = throughput_rows(loaded, n)
    rows += server_rows(loaded, n, 5 if quick else 15)
    rows.append(rss_row(64, 512) if quick else rss_row(256, 4096))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        print(json.dumps(rss_child(int(sys.argv[2]))))
    else:
        from bench import models

        for row in measure(models.default_model(), quick="--quick" in sys.argv):
            print(row)
