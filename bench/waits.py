"""Waits behind a corpus job (issue 25), over real HTTP: interactive endpoints idle and while a job runs, and cancel.

`python -m bench.waits [reps]` writes its own section of RESULTS.md. Each endpoint is timed idle and while a job
runs (roles + gradient importance, then roles + ablation importance, over 2,048 texts of 64 tokens), medians of `reps`
calls each, endpoints taken in turn; the idle medians pool the runs before and after the jobs. Target per
endpoint: busy ≤ 2 × idle + 0.5 s. Cancel: seconds from DELETE /api/jobs/{id} until the job's work has stopped
on the model worker (≤ 1 s), and texts committed after the answer said `cancelled` (0).
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.corpus.jobs import Jobs
from bench import corpus, inputs, live, models, report, timing
from bench.report import Row, seconds

log = logging.getLogger("bench.waits")
BEFORE = (
    "Before jobs ran in slices (commit 440224a, this bench, 1 call each, 75% other load): while a roles + gradient "
    "job ran, /api/ablate 18.0 s (idle 0.43 s), a new prompt's /api/overview 25.6 s (1.61 s), /api/dla 51.2 s "
    "(0.09 s), /api/generate of 16 tokens still waiting after 120 s (4.3 s; it took turns with the job token by "
    "token); with ablation importance 4.9 s, 20.6 s, 21.8 s and ≥ 120 s. Cancel: the gradient job computed for "
    "24.9 s more and committed 32 texts after the answer said cancelled."
)
N_TEXTS = 2048  # enough that a job outlasts the timing, before and after slicing
JOBS = ((("roles", "importance"), "gradient"), (("roles", "importance"), "ablation"))
PROMPT = 64  # tokens of the interactive prompts
TIMEOUT_S = 120.0  # a call still waiting after this counts as this long (the median then reads "≥")


def endpoints(loaded: Any) -> dict[str, Callable[[httpx.Client, int], httpx.Response]]:
    """Name → one call of an interactive endpoint as the page makes it (rep number in: a new head or prompt)."""
    layout = loaded.adapter.layout
    cached = inputs.text_of(loaded.tokenizer, PROMPT)
    ids = inputs.token_ids(loaded.tokenizer, 4096)

    def fresh(rep: int) -> str:  # a prompt never sent before: its run is not cached
        start = 97 * rep + 13
        return str(loaded.tokenizer.decode(ids[start : start + PROMPT]))

    def head(rep: int) -> dict[str, int]:  # a different head each call: the ablation is not cached
        return {"layer": (7 * rep + 3) % layout.n_layers, "head": rep % layout.n_heads}

    return {
        f"POST /api/ablate (a head off, text cached), {PROMPT} tokens": lambda c, rep: c.post(
            "/api/ablate", json={"text": cached, "ablate": [head(rep)]}
        ),
        f"POST /api/overview (a new prompt), {PROMPT} tokens": lambda c, rep: c.post(
            "/api/overview", json={"text": fresh(rep)}
        ),
        f"POST /api/dla (text cached), {PROMPT} tokens": lambda c, rep: c.post("/api/dla", json={"text": cached}),
        f"POST /api/generate, 16 greedy tokens after {PROMPT}": lambda c, rep: c.post(
            "/api/generate", json={"text": cached, "max_new_tokens": 16}
        ),
        f"POST /api/attention (one head, text cached), {PROMPT} tokens": lambda c, rep: c.post(
            "/api/attention", json={"text": cached, "heads": [head(rep)], "encoding": "f16"}
        ),
    }


def timed_round(
    client: httpx.Client, calls: dict[str, Callable[[httpx.Client, int], httpx.Response]], rep: int
) -> dict[str, float]:
    """Each endpoint once, in turn (order rotated by rep): name → seconds (TIMEOUT_S for a call that timed out)."""
    names = list(calls)
    shift = rep % len(names)
    out = {}
    for name in names[shift:] + names[:shift]:
        start = time.perf_counter()
        try:
            r = calls[name](client, rep)
        except httpx.TimeoutException:
            out[name] = TIMEOUT_S
            log.info("%s: timed out after %.0f s", name, TIMEOUT_S)
            continue
        out[name] = time.perf_counter() - start
        assert r.status_code == 200, (name, r.status_code, r.text[:300])
        log.info("%s: %.3f s", name, out[name])
    return out


def rows(loaded: Any, reps: int) -> list[Row]:
    calls = endpoints(loaded)
    idle: dict[str, list[float]] = {n: [] for n in calls}
    busy: dict[tuple[str, str], list[float]] = {}
    notes: list[Row] = []
    rep = 0
    with tempfile.TemporaryDirectory() as tmp, live.serving(loaded, Path(tmp), timeout_s=TIMEOUT_S) as (client, app):
        jobs: Jobs = app.state.jobs
        texts = corpus.corpus(loaded, N_TEXTS, PROMPT)
        dataset = client.post("/api/datasets", json={"name": "bench", "texts": texts}).json()["id"]
        for name in calls:  # warm: the cached text's run and baseline, the probe
            calls[name](client, 10_000)
        for _ in range(reps):
            for name, s in timed_round(client, calls, rep := rep + 1).items():
                idle[name].append(s)
        for analyses, importance in JOBS:
            label = f"{' + '.join(analyses)} ({importance})"
            body = {"dataset": dataset, "analyses": list(analyses), "importance": importance, "max_tokens": PROMPT}
            job_id = client.post("/api/jobs", json=body).json()["id"]
            while client.get(f"/api/jobs/{job_id}").json()["state"] != "running":
                time.sleep(0.05)
            time.sleep(1.0)  # well into its first batch
            for _ in range(reps):
                for name, s in timed_round(client, calls, rep := rep + 1).items():
                    busy.setdefault((label, name), []).append(s)
            running = client.get(f"/api/jobs/{job_id}").json()["state"] == "running"
            assert running, f"the {label} job ended before the timing did; use a larger dataset"
            task = jobs._tasks[job_id]
            start = time.perf_counter()
            answer = client.delete(f"/api/jobs/{job_id}").json()
            task.future.exception()  # waits until the work has stopped on the model worker
            stopped = time.perf_counter() - start
            time.sleep(1.0)
            later = client.get(f"/api/jobs/{job_id}").json()
            extra = later["progress"]["done"] - answer["progress"]["done"]
            notes.append(
                Row(
                    what=f"cancel a running {label} job: until its work stops on the model worker",
                    measured=seconds(stopped),
                    target="≤ 1 s",
                    passed=stopped <= 1.0,
                    beside=f"texts committed after the answer said cancelled: {extra}",
                )
            )
            if extra:
                notes[-1].passed = False
        for _ in range(reps):
            for name, s in timed_round(client, calls, rep := rep + 1).items():
                idle[name].append(s)
    out = []
    for (label, name), samples in busy.items():
        quiet = statistics.median(idle[name])
        during = statistics.median(samples)
        bound = 2 * quiet + 0.5
        out.append(
            Row(
                what=f"{name}, while a {label} job runs",
                measured=("≥ " if during >= TIMEOUT_S else "") + seconds(during),
                baseline=f"idle {seconds(quiet)}",
                ratio=during / quiet,
                target=f"≤ 2× idle + 0.5 s ({seconds(bound)})",
                passed=during <= bound,
                beside=f"max {seconds(max(samples))}",
            )
        )
    return out + notes


def main() -> None:
    """`python -m bench.waits [reps]`: the rows alone, written as their own RESULTS.md section."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("app", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    loaded = models.default_model()
    load_start = timing.load_average()
    meter = timing.OtherLoad()
    began = time.perf_counter()
    made = rows(loaded, reps)
    share = meter.share()
    for row in made:
        row.other_load = share
    title = "Waits behind a corpus job, over HTTP (issue 25)"
    info = {"command": f"`python -m bench.waits {reps}`", **report.machine(loaded.device)}
    notes = [
        f"Medians of {reps} calls per endpoint and state, endpoints in turn; idle pools the calls before and after "
        "the jobs. The server is uvicorn on 127.0.0.1 in the bench's process with the default model.",
        f"Load average at start {load_start}, at end {timing.load_average()}; took "
        f"{seconds(time.perf_counter() - began)}. A shared 2-core machine: other engineers' test runs share the "
        "CPUs ('other load').",
    ]
    notes.append(BEFORE)
    body = report.section(title, info, made, notes)
    print(body)
    report.write(title, body)


if __name__ == "__main__":
    main()
