"""Nobody waits behind a corpus job: an interactive request answers about as fast while a real job runs as idle.

A job is measured in slices of about one forward of a few hundred tokens (engine.segments), so a request that
arrives while a batch is being measured waits for one slice, not for the batch. The model is small but not tiny
(d_model 128, GPT-2's vocabulary), so that one batch measured whole (2,048 tokens, roles + gradient importance:
the LM head and its backward dominate) takes many times as long as an /api/ablate of a short prompt.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.corpus import measure
from app.corpus.jobs import Jobs
from app.inspect.engine.runs import encode
from app.inspect.engine.steps import drain
from app.inspect.model.loaded import Loaded
from app.main import create_app
from tests.support.clients import wait_ready
from tests.support.models import TINY, as_loaded, build

SMALL = {**TINY["llama"], "hidden_size": 128, "intermediate_size": 256}
WORDS = ["river", "town", "market", "bread", "school", "teacher", "story", "shadow", "tower", "winter", "bird"]
PROMPT = "When Mary and John went to the store, John gave a drink to"
REPS = 7


@pytest.fixture
def small() -> Loaded:
    return as_loaded(build("llama", SMALL), "small-llama")


@pytest.fixture
def client(small: Loaded, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model=small.name, data_dir=tmp_path / "data"), loaded=small)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def texts(n: int, words: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def test_an_ablation_answers_within_twice_its_idle_time_while_a_job_runs(client: TestClient, small: Loaded) -> None:
    corpus = texts(48, 130)  # cut to 128 tokens: batches of 16 texts, 2,048 tokens each
    batch = [(i, encode(small.tokenizer, t)[:128]) for i, t in enumerate(corpus[:16])]
    analyses = frozenset({"roles", "importance"})
    drain(measure.measure_batch_steps(small, batch[:1], analyses, "gradient"))  # warm up
    began = time.perf_counter()
    drain(measure.measure_batch_steps(small, batch, analyses, "gradient"))
    whole = time.perf_counter() - began  # what a request would wait for if a batch were one unit of work

    def ablate(rep: int) -> float:  # a different head each time: the baseline is cached, the ablation is not
        body = {"text": PROMPT, "ablate": [{"layer": rep % 2, "head": rep % 4}]}
        start = time.perf_counter()
        r = client.post("/api/ablate", json=body)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    ablate(0)
    idle = statistics.median(ablate(rep) for rep in range(REPS))
    dataset = client.post("/api/datasets", json={"name": "long", "texts": corpus}).json()["id"]
    body = {"dataset": dataset, "analyses": sorted(analyses), "importance": "gradient", "max_tokens": 128}
    job_id = client.post("/api/jobs", json=body).json()["id"]
    jobs: Jobs = client.app.state.jobs  # type: ignore[attr-defined]
    while jobs.forwards == 0:  # the model worker is measuring the first batch
        time.sleep(0.005)
    busy = [ablate(rep) for rep in range(REPS)]
    job = client.get(f"/api/jobs/{job_id}").json()
    client.delete(f"/api/jobs/{job_id}")
    assert job["state"] == "running", "the job ended before the requests were timed"
    # the target, 2× idle + 0.5 s, with the allowance cut to a quarter batch where a batch is fast:
    # a request that waited for whole batches would wait half of one at the median
    bound = 2 * idle + min(0.5, whole / 4)
    print("DBG", idle, whole, sorted(busy), bound)
    assert statistics.median(busy) <= bound, (idle, whole, busy)
