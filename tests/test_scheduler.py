"""The model worker's scheduler: requests first, long work in slices, cancel, disconnect, cached reads."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import Cancelled, ClientGone
from app.inspect.engine import runs
from app.inspect.intervene import importance
from app.inspect.model.loaded import Loaded
from app.main import create_app
from app.service import Service
from tests.support.clients import make_client
from tests.support.disconnect import Watch, leave_midway, run_async


def _service(loaded: Loaded, **overrides: Any) -> Service:
    svc = Service(Settings(model=loaded.name, **overrides), loaded)
    svc.ready = True
    return svc


def _slices(log: list[str], name: str, n: int, seconds: float) -> Generator[int, None, str]:
    try:
        for i in range(n):
            time.sleep(seconds)
            log.append(f"{name}{i}")
            yield i
        return f"{name} done"
    finally:
        log.append(f"{name} closed")


def test_requests_run_between_slices_and_background_tasks_take_turns(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"])
    log: list[str] = []
    a = svc.submit("a", _slices(log, "a", 6, 0.02))
    b = svc.submit("b", _slices(log, "b", 3, 0.02))

    async def scenario() -> None:
        await asyncio.sleep(0.05)
        assert await svc.call(lambda: log.append("request") or "served") == "served"

    run_async(scenario)
    assert a.future.result(5) == "a done" and b.future.result(5) == "b done"
    served = log.index("request")
    assert 0 < served < log.index("a5")  # before the long task had finished, between two of its slices
    assert log.index("b2") < log.index("a4")  # round robin: b did not wait for all of a
    svc.shutdown()


def test_a_requests_long_work_goes_before_a_jobs_slices(tiny_loaded: dict[str, Loaded]) -> None:
    """Generation or a sweep runs in slices too, but never takes turns with a job: a job's slice runs only
    when no request and no request's long work is waiting."""
    svc = _service(tiny_loaded["llama"])
    log: list[str] = []
    job = svc.submit("job", _slices(log, "job", 20, 0.02))
    time.sleep(0.05)
    before = len(log)
    asked = svc.submit("gen", _slices(log, "gen", 5, 0.0), interactive=True)
    assert asked.future.result(5) == "gen done"
    first, last = log.index("gen0"), log.index("gen4")
    assert log[first : last + 1] == [f"gen{i}" for i in range(5)]  # no job slice in between
    assert first - before <= 1  # it waited for the job's slice under way, no more
    job.cancel()
    svc.shutdown()


def test_cancel_closes_the_work_before_its_next_slice(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"])
    log: list[str] = []
    task = svc.submit("a", _slices(log, "a", 100, 0.02))
    time.sleep(0.1)
    task.cancel()
    with pytest.raises(Cancelled):
        task.future.result(5)
    ran = task.slices
    assert log[-1] == "a closed"  # its finally ran
    time.sleep(0.1)
    assert task.slices == ran < 100
    svc.shutdown()


def test_shutdown_closes_background_work_and_finishes_admitted_requests(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"])
    log: list[str] = []
    task = svc.submit("a", _slices(log, "a", 1000, 0.01))
    time.sleep(0.05)
    svc.shutdown()
    assert task.done and log[-1] == "a closed"


def test_a_cached_attention_request_does_not_wait_behind_a_slice(tiny_loaded: dict[str, Loaded]) -> None:
    text = "The cached run answers without the model thread."
    for client in make_client(tiny_loaded["llama"]):
        svc: Service = client.app.state.service  # type: ignore[attr-defined]
        body = {"text": text, "heads": [{"layer": 1, "head": 2}]}
        first = client.post("/api/attention", json=body)  # analyses and caches the run
        assert first.status_code == 200
        release = threading.Event()

        def blocking(release: threading.Event = release) -> Generator[None, None, None]:
            release.wait(10)  # a slice that holds the model thread
            yield

        task = svc.submit("blocker", blocking())
        time.sleep(0.05)
        start = time.perf_counter()
        again = client.post("/api/attention", json=body)
        elapsed = time.perf_counter() - start
        release.set()
        task.future.result(5)
        assert again.status_code == 200 and again.json() == first.json()
        assert elapsed < 2.0  # it did not wait for the 10 s slice
        # an uncached text needs a forward, so it waits for the model thread like any other request
        assert client.post("/api/attention", json={**body, "text": "new"}).status_code == 200


LONG = " ".join(f"word{i % 37} and" for i in range(180))  # ≈ 600 tokens: one head per sweep slice


def test_an_ablation_answers_within_twice_its_idle_time_while_a_sweep_runs(tiny_loaded: dict[str, Loaded]) -> None:
    loaded = tiny_loaded["llama"]
    ablate = {"text": LONG, "ablate": [{"layer": 0, "head": 1}]}
    for client in make_client(loaded):
        svc: Service = client.app.state.service  # type: ignore[attr-defined]
        assert client.post("/api/ablate", json=ablate).status_code == 200  # the run and its baseline, cached

        def timed(client: TestClient = client) -> float:
            start = time.perf_counter()
            assert client.post("/api/ablate", json=ablate).status_code == 200
            return time.perf_counter() - start

        idle = statistics.median(timed() for _ in range(5))
        sweep_done = threading.Event()

        def sweep(client: TestClient = client, sweep_done: threading.Event = sweep_done) -> None:
            r = client.post("/api/importance", json={"text": LONG, "method": "ablation"})
            assert r.status_code == 200
            sweep_done.set()

        thread = threading.Thread(target=sweep)
        thread.start()
        while svc.queue_depth == 0:
            time.sleep(0.005)
        busy = []
        while not sweep_done.is_set() and len(busy) < 5:
            busy.append(timed())
        thread.join(120)
        assert len(busy) >= 3, "the sweep ended before the ablations could be timed"
        assert statistics.median(busy) <= 2 * idle + 0.02, (idle, busy)


def test_a_sweep_whose_client_disconnects_stops_within_one_slice(
    tiny_loaded: dict[str, Loaded], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real ASGI: the client gives up (http.disconnect) while the sweep runs; the sweep is closed."""
    loaded = tiny_loaded["llama"]
    app = create_app(Settings(model=loaded.name), loaded=loaded)
    svc: Service = app.state.service
    svc.ready = True
    watch = Watch()
    monkeypatch.setattr("app.api.importance.sweep_slices", watch.wrap(importance.sweep_slices, 0.05))
    body = b'{"text": "%s", "method": "ablation"}' % LONG.encode()
    runs.analyse(loaded, LONG)  # warm

    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        left = await leave_midway(app, "/api/importance", body, watch, 3, sent=sent)
        assert sum(t > left for t in watch.made) <= 1  # at most the slice already under way when it left
        assert len(watch.made) < loaded.adapter.layout.n_layers * loaded.adapter.layout.n_heads

    run_async(scenario)
    assert svc.queue_depth == 0
    # the answer nobody reads, for the access log: 499 in the one error shape
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert statuses == [499] and json.loads(answer)["error"] == "client_closed_request"
    svc.shutdown()


def test_sliced_work_is_closed_and_raises_client_gone_once_the_client_has_left(tiny_loaded: dict[str, Loaded]) -> None:
    svc = _service(tiny_loaded["llama"])
    log: list[str] = []

    async def gone() -> bool:
        return "a2" in log

    async def scenario() -> None:
        with pytest.raises(ClientGone):
            await svc.sliced("a", _slices(log, "a", 100, 0.02), gone, poll_s=0.01)

    run_async(scenario)
    deadline = time.monotonic() + 5
    while log[-1] != "a closed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log[-1] == "a closed"  # its finally ran on the model thread
    assert len(log) < 10  # closed within a slice or two of the client leaving, not run to its end (100 slices)
    assert svc.queue_depth == 0  # the request's place in the queue was given back
    svc.shutdown()


def test_sweep_in_slices_equals_the_sweep_at_once(tiny_loaded: dict[str, Loaded]) -> None:
    loaded = tiny_loaded["gpt2"]
    run = runs.analyse(loaded, LONG)
    steps = importance.sweep_slices(loaded, run, slice_tokens=len(run.token_ids))  # one head per slice
    n = 0
    while True:
        try:
            progress = next(steps)
            assert progress.done == n and progress.total == 8
            n += 1
        except StopIteration as stop:
            sliced = stop.value
            break
    assert n == 8
    whole = importance.ablation_sweep(loaded, run)
    assert float((sliced.delta_loss - whole.delta_loss).abs().max()) < 1e-5
    assert float((sliced.kl_last - whole.kl_last).abs().max()) < 1e-5


def test_set_threads_reaches_the_model_thread_and_not_the_callers(tiny_loaded: dict[str, Loaded]) -> None:
    """torch's thread count is per thread: set from here it would not reach the model thread (the Ray bench's trap)."""
    svc = _service(tiny_loaded["llama"])
    mine = torch.get_num_threads()
    try:
        before = svc.set_threads(1)
        assert svc.set_threads(before) == 1  # the model thread ran with 1
        assert torch.get_num_threads() == mine  # the caller's own count is untouched
    finally:
        svc.shutdown()
