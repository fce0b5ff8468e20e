"""Ray rows (issue 11): the same roles job in-process and on a `local` Ray instance with 1 and 2 actors.

On a 2-core machine Ray cannot be faster; what is measured is its cost. Each actor gets one CPU, so torch
runs one thread there: the overhead is taken against the in-process job run with one thread as well
(same arithmetic), and the 2-actor job against the in-process job with the machine's threads. Per-job
overhead is a one-text job's time on Ray minus in-process; per-batch overhead spreads the rest over the
job's batches. The cluster's start (ray.init + actors loading the model) is timed separately.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.corpus.cluster import Cluster, ClusterConfig
from app.corpus.jobs import Jobs
from app.corpus.measure import length_batches
from app.inspect.engine.runs import encode
from app.inspect.model.loaded import Loaded
from bench.corpus import TOKENS, corpus, job_runner, run_job
from bench.report import Row, seconds

TEXTS = 256


def has_ray() -> bool:
    """Whether the Ray extra is installed (`make ray`; `make env` includes it)."""
    return importlib.util.find_spec("ray") is not None


def _job_s(jobs: Jobs, dataset: str, reps: int) -> float:
    return statistics.median(run_job(jobs, dataset, ("roles",))[0] for _ in range(reps))


def rows(loaded: Loaded, model: str, n_texts: int = TEXTS, reps: int = 3) -> list[Row]:
    """Roles job over n_texts × 128 tokens: in-process (1 and all threads) vs local Ray with 1 and 2 actors."""
    texts = corpus(loaded, n_texts)
    threads = torch.get_num_threads()
    out: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, job_runner(loaded, Path(tmp)) as jobs:
        dataset = jobs.datasets.create("bench", texts, 0).id
        one = jobs.datasets.create("one", texts[:1], 0).id
        ids = [encode(loaded.tokenizer, t)[:TOKENS] for t in texts]
        n_batches = len(length_batches([len(i) for i in ids], jobs.max_batch_tokens, jobs.max_batch_texts))
        run_job(jobs, one, ("roles",))  # warm-up
        jobs.service.set_threads(1)
        try:
            local_1 = _job_s(jobs, dataset, reps)
            local_1_start = _job_s(jobs, one, 5)
        finally:
            jobs.service.set_threads(threads)
        local_all = _job_s(jobs, dataset, reps)
        for workers in (1, 2):
            cluster = Cluster(ClusterConfig("local", workers, None, model, "float32"))
            began = time.perf_counter()
            cluster.start()
            up_s = time.perf_counter() - began
            assert cluster.error is None, cluster.error
            jobs.cluster = cluster
            try:
                run_job(jobs, one, ("roles",))  # warm-up on the actors
                ray_s = _job_s(jobs, dataset, reps)
                ray_start = _job_s(jobs, one, 5)
            finally:
                jobs.cluster = None
                cluster.shutdown()
            if workers == 1:
                overhead = ray_s / local_1 - 1
                per_job = ray_start - local_1_start
                per_batch = max(ray_s - local_1 - per_job, 0.0) / n_batches
                out.append(
                    Row(
                        what=f"Ray local, 1 actor: roles job, {n_texts} texts × {TOKENS} tokens ({n_batches} batches)",
                        measured=seconds(ray_s),
                        baseline=f"in-process, 1 thread {seconds(local_1)}",
                        ratio=ray_s / local_1,
                        target="≤ 1.10× (overhead ≤ 10%)",
                        passed=overhead <= 0.10,
                        beside=f"per job start {seconds(per_job)}, per batch {seconds(per_batch)}",
                    )
                )
            else:
                out.append(
                    Row(
                        what="Ray local, 2 actors (1 CPU each): the same job",
                        measured=seconds(ray_s),
                        baseline=f"in-process, {threads} threads {seconds(local_all)}",
                        ratio=ray_s / local_all,
                        beside="2 cores: no speed-up expected",
                    )
                )
            out.append(
                Row(
                    what=f"Ray local cluster up with {workers} actor(s) (ray.init + model load)",
                    measured=seconds(up_s),
                )
            )
    return out


def main() -> None:
    """`python -m bench.cluster [texts] [reps]`: the Ray rows alone, written as their own RESULTS.md section."""
    import platform
    import subprocess
    import sys

    from bench import models, report, timing

    n_texts = int(sys.argv[1]) if len(sys.argv) > 1 else TEXTS
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    loaded = models.default_model()
    meter = timing.OtherLoad()
    began = time.perf_counter()
    made = rows(loaded, models.DEFAULT, n_texts, reps)
    share = meter.share()
    for row in made:
        row.other_load = share
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = {
        "command": f"`python -m bench.cluster {n_texts} {reps}`",
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ray {_ray_version()}",
        "took": seconds(time.perf_counter() - began),
    }
    notes = [
        "Each actor has one CPU, so torch runs one thread there; the 1-actor row is against the in-process job "
        "with one thread (the same arithmetic), so the ratio is Ray's cost: shipping batches and results, "
        "committing on the server, the actor's idle time between batches.",
        "Per job start: a one-text job's time on Ray minus in-process; per batch: the rest of the difference "
        "over the job's batches.",
    ]
    print(report.table(made))
    report.write("Ray backend, local (issue 11)", report.section("Ray backend, local (issue 11)", info, made, notes))


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


if __name__ == "__main__":
    main()
