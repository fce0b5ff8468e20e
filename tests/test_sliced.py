"""Sliced work: the one task handle (step, cancel, future) that the model worker, a Ray job's driver and a Ray
actor share, and the one out-of-memory split of a corpus batch."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.corpus import cluster
from app.corpus.batches import OutOfMemoryInBatch, halves
from app.corpus.measure import measure_batch_steps
from app.errors import Cancelled
from app.inspect.engine.runs import encode
from app.inspect.engine.steps import Sliced, drain
from app.inspect.model.loaded import Loaded


def counting(n: int, log: list[str]) -> Generator[int, None, str]:
    try:
        for i in range(n):
            log.append(f"unit {i}")
            yield i
        return "the end"
    finally:
        log.append(f"closed on {threading.current_thread().name}")


def test_a_task_runs_one_unit_per_step_and_its_future_holds_the_result() -> None:
    log: list[str] = []
    seen: list[int] = []
    task = Sliced("count", counting(3, log), seen.append)
    ends = [task.step() for _ in range(4)]
    assert ends == [False, False, False, True] and task.done
    assert task.future.result() == "the end" and seen == [0, 1, 2] and task.slices == 3


def test_cancel_from_another_thread_closes_the_steps_on_the_stepping_thread() -> None:
    log: list[str] = []
    task = Sliced("count", counting(5, log))
    assert task.step() is False
    woken = threading.Event()
    task.wake = woken.set
    other = threading.Thread(target=task.cancel, name="canceller")
    other.start()
    other.join()
    assert woken.is_set() and not task.done  # nothing runs on the cancelling thread
    assert task.step() is True
    assert log == ["unit 0", f"closed on {threading.current_thread().name}"]
    with pytest.raises(Cancelled, match="count: cancelled"):
        task.future.result()
    stopped = Sliced("count", counting(5, []))
    stopped.cancel()
    stopped.step(stopped=KeyError("shutting down"))
    assert isinstance(stopped.future.exception(), KeyError)


def test_an_error_in_a_unit_or_in_its_wrapper_fails_the_future_and_closes_the_steps() -> None:
    log: list[str] = []

    def wrapper(steps: Generator[Any, None, str]) -> Any:
        value = next(steps)
        if value == 1:
            raise MemoryError("a wrapper's error, as an out-of-memory handler or a stop hook raises it")
        return value

    task = Sliced("count", counting(5, log))
    task.run(wrapper)
    assert isinstance(task.future.exception(), MemoryError) and task.slices == 1
    assert log[-1].startswith("closed on")


def test_a_batch_that_runs_out_of_memory_splits_in_order_and_one_text_fails_clearly() -> None:
    items = [(i, [7] * (i + 1)) for i in range(5)]
    first, second = halves(items)
    assert first + second == items and (len(first), len(second)) == (2, 3)
    cause = torch.OutOfMemoryError("injected")
    with pytest.raises(OutOfMemoryInBatch, match=r"text 3 \(4 tokens\) even alone.*max_tokens") as raised:
        halves([items[3]], cause)
    assert raised.value.__cause__ is cause


@pytest.fixture(scope="module")
def worker(tiny_dirs: dict[str, Path]) -> cluster.Worker:
    """A Ray actor's class, made here without Ray: it loads the tiny llama from its directory."""
    return cluster.Worker(str(tiny_dirs["llama"]), "tiny", "cpu", "float32", None)


def test_an_actor_measures_stops_and_reports_out_of_memory_through_the_task(
    worker: cluster.Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: Loaded = worker.loaded
    items = [(i, encode(loaded.tokenizer, t)) for i, t in enumerate(["One text here.", "And a second, longer one."])]
    analyses = ["roles", "importance"]
    piece, result = worker.measure("run-a", 4, items, analyses, "gradient")
    alone = drain(measure_batch_steps(loaded, items, frozenset(analyses), "gradient"))
    assert piece == 4 and [t.index for t in result.texts] == [0, 1]
    for got, want in zip(result.texts, alone.texts, strict=True):
        for metric, grid in want.values.items():
            np.testing.assert_allclose(got.values[metric], grid, atol=1e-6)

    def stops_inside_a_forward(*args: Any) -> Generator[None, None, Any]:
        yield
        worker.stop("run-b")
        loaded.model(torch.tensor([items[0][1]]))  # the first block's pre-hook raises Stopped
        raise AssertionError("the forward ran past a stop")

    monkeypatch.setattr(cluster, "measure_batch_steps", stops_inside_a_forward)
    assert worker.measure("run-b", 0, items, analyses, "gradient") == (0, "stopped")
    assert all(not block._forward_pre_hooks for block in loaded.adapter.layers)  # the stop hook came off
    assert worker.measure("run-b", 1, items, analyses, "gradient") == (1, "stopped")  # a stopped run stays stopped

    def out_of_memory(*args: Any) -> Generator[None, None, Any]:
        yield
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(cluster, "measure_batch_steps", out_of_memory)
    assert worker.measure("run-c", 2, items, analyses, "gradient") == (2, "oom")

    def broken(*args: Any) -> Generator[None, None, Any]:
        yield
        raise ValueError("a bug")

    monkeypatch.setattr(cluster, "measure_batch_steps", broken)
    with pytest.raises(ValueError, match="a bug"):
        worker.measure("run-d", 3, items, analyses, "gradient")
    assert worker.status()[1] == 0  # nothing counts as running after any of these ends
