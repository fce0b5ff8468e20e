"""Served speed (issue 25): the HTTP paths beside the functions behind them, timed in the same process, in turn.

`python -m bench.served [reps]` writes its own section of RESULTS.md: /api/overview at 512 tokens against a plain
forward with logits, /api/generate (64 greedy tokens, JSON and streamed) against transformers `generate`, and a
roles-only corpus job started and polled over HTTP against plain batched forwards over the job's own batches.
The server is uvicorn on 127.0.0.1 in this process (bench.live), so both sides share the model and the machine.
Each call is timed in wall-clock seconds and in this process's CPU seconds (every thread: the event loop, the
model worker, torch's): on a shared machine other processes stretch the wall-clock times unevenly, while the CPU
seconds still compare the work each side does.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from app.inspect.engine.runs import encode
from app.inspect.model.loaded import Loaded
from bench import corpus, generation, inputs, live, models, report, timing
from bench.report import Row, seconds

log = logging.getLogger("bench.served")
OVERVIEW_TOKENS = 512


@dataclass
class Timed:
    """Median wall-clock and process-CPU seconds of one side."""

    wall: float
    cpu: float


def alternate(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, Timed]:
    """Each function called in turn rep by rep (order rotated), after one untimed call of each: medians."""
    names = list(fns)
    for name in names:
        fns[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            log.info("%s: %.3f s (CPU %.3f s)", name, wall[name][-1], cpu[name][-1])
    return {name: Timed(statistics.median(wall[name]), statistics.median(cpu[name])) for name in names}


def cpu_note(served: Timed, base: Timed) -> str:
    return f"CPU seconds (all threads): {served.cpu:.2f} vs {base.cpu:.2f} ({served.cpu / base.cpu:.2f}×)"


def overview_rows(loaded: Loaded, client: httpx.Client, reps: int) -> list[Row]:
    """A new text's /api/overview (thumbnails, role scores, prediction) vs a plain forward with logits."""
    ids = inputs.token_ids(loaded.tokenizer, 4096)
    texts = [loaded.tokenizer.decode(ids[i * 61 : i * 61 + OVERVIEW_TOKENS]) for i in range(reps + 2)]
    x = models.input_ids(loaded, ids[:OVERVIEW_TOKENS])
    served = iter(texts)

    def http() -> None:
        r = client.post("/api/overview", json={"text": next(served), "thumb": 32, "top_k": 10})
        assert r.status_code == 200, r.text[:300]

    got = alternate({"http": http, "plain": lambda: models.plain_full(loaded, x)}, reps)
    ratio = got["http"].wall / got["plain"].wall
    return [
        Row(
            what=f"POST /api/overview over HTTP (a new text: run, role scores, thumbnails, prediction), "
            f"{OVERVIEW_TOKENS} tokens",
            measured=seconds(got["http"].wall),
            baseline=f"plain SDPA forward with logits {seconds(got['plain'].wall)}",
            ratio=ratio,
            target="≤ 1.15×",
            passed=ratio <= 1.15,
            beside=cpu_note(got["http"], got["plain"]),
        )
    ]


def generate_rows(loaded: Loaded, client: httpx.Client, reps: int) -> list[Row]:
    """64 greedy tokens: /api/generate as JSON and as a stream vs transformers generate, in turn."""
    ids = inputs.token_ids(loaded.tokenizer, generation.PROMPT_TOKENS)
    text = loaded.tokenizer.decode(ids)
    prompt = models.input_ids(loaded, inputs.token_ids(loaded.tokenizer, generation.PROMPT_TOKENS))
    new = generation.NEW_TOKENS
    body = {"text": text, "max_new_tokens": new}

    @torch.inference_mode()
    def reference() -> None:
        with models.attention(loaded, "sdpa"):
            loaded.model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    def as_json() -> None:
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200 and len(r.json()["baseline"]["token_ids"]) == new, r.text[:300]

    def streamed() -> None:
        with client.stream("POST", "/api/generate", json=body, headers={"accept": "text/event-stream"}) as r:
            assert sum(line.startswith("event: token") for line in r.iter_lines()) == new

    got = alternate({"generate": reference, "json": as_json, "sse": streamed}, reps)
    rows = []
    for kind, label in (("json", "JSON"), ("sse", "streamed, SSE")):
        ratio = got[kind].wall / got["generate"].wall
        rows.append(
            Row(
                what=f"POST /api/generate over HTTP ({label}), {new} greedy tokens after {generation.PROMPT_TOKENS}",
                measured=seconds(got[kind].wall),
                baseline=f"transformers generate (SDPA, greedy), same process {seconds(got['generate'].wall)}",
                ratio=ratio,
                target="≤ 1.1×",
                passed=ratio <= 1.1,
                beside=cpu_note(got[kind], got["generate"]),
            )
        )
    return rows


def job_rows(loaded: Loaded, client: httpx.Client, app: Any, n_texts: int) -> list[Row]:
    """A roles-only job over n_texts × 128 tokens, started and polled over HTTP, vs plain batched forwards."""
    texts = corpus.corpus(loaded, n_texts)
    dataset = client.post("/api/datasets", json={"name": "served", "texts": texts}).json()["id"]
    tokens = {"plain": sum(len(encode(loaded.tokenizer, t)[: corpus.TOKENS]) for t in texts)}

    def job() -> None:
        job_id = client.post("/api/jobs", json={"dataset": dataset, "max_tokens": corpus.TOKENS}).json()["id"]
        while (found := client.get(f"/api/jobs/{job_id}").json())["state"] in ("queued", "running"):
            time.sleep(0.25)  # as the page polls when its stream drops
        assert found["state"] == "done", found
        tokens["job"] = found["progress"]["tokens"]

    got = alternate({"job": job, "plain": lambda: corpus.plain_batches(loaded, texts, app.state.jobs)}, 2)
    rate = {k: tokens[k] / got[k].wall for k in got}
    ratio = rate["job"] / rate["plain"]
    per_token = (got["job"].cpu / tokens["job"]) / (got["plain"].cpu / tokens["plain"])
    return [
        Row(
            what=f"corpus job (roles) over HTTP, {n_texts} texts × {corpus.TOKENS} tokens: tokens/s",
            measured=f"{rate['job']:.0f} tok/s",
            baseline=f"plain batched SDPA forwards {rate['plain']:.0f} tok/s",
            ratio=ratio,
            target="≥ 0.75×",
            passed=ratio >= 0.75,
            beside=f"CPU seconds per token: {per_token:.2f}× the plain forwards'",
        )
    ]


def rows(loaded: Loaded, reps: int, n_texts: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp, live.serving(loaded, Path(tmp)) as (client, app):
        out = overview_rows(loaded, client, reps)
        out += generate_rows(loaded, client, reps)
        out += job_rows(loaded, client, app, n_texts)
    return out


def main() -> None:
    """`python -m bench.served [reps] [texts]`: the rows alone, written as their own RESULTS.md section."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("app", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    n_texts = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    loaded = models.default_model()
    load_start = timing.load_average()
    meter = timing.OtherLoad()
    began = time.perf_counter()
    made = rows(loaded, reps, n_texts)
    share = meter.share()
    for row in made:
        row.other_load = share
    title = "Served speed vs the functions behind it, over HTTP (issue 25)"
    info = {"command": f"`python -m bench.served {reps} {n_texts}`", **report.machine(loaded.device)}
    notes = [
        f"Each served call and its in-process baseline alternate (order rotated), {reps} each after a warm-up; "
        "medians. The server is uvicorn on 127.0.0.1 in the bench's process, so both share the model and CPUs.",
        f"Load average at start {load_start}, at end {timing.load_average()}; took "
        f"{seconds(time.perf_counter() - began)}. A shared 2-core machine: other engineers' test runs share the "
        "CPUs ('other load'), which inflates both sides of a ratio, unevenly.",
    ]
    body = report.section(title, info, made, notes)
    print(body)
    report.write(title, body)


if __name__ == "__main__":
    main()
