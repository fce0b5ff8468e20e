"""Work done in steps: a generator that yields between forwards (no hook on the model then) and returns a result.

`Sliced` is the one handle on such work while something runs it: cancel from any thread, a future for the
result, `step()` to run one unit. The model worker (app.service.Service) steps it between requests, a Ray job's
driver thread and a Ray actor (app.corpus.cluster) `run` it to the end; scripts, tests and the bench `drain`
a bare generator. Out-of-memory errors are told apart by `is_oom`, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from app.errors import Cancelled

Y = TypeVar("Y")
R = TypeVar("R")
Steps = Generator[Y, None, R]  # each next() is one step; StopIteration carries the result


@dataclass(frozen=True)
class Progress:
    """Units of work done so far, of `total` known so far."""

    done: int
    total: int


class Sliced(Generic[R]):
    """Steps that something runs one unit at a time, with a cancel flag and a future for the result.

    Each `step()` runs one unit (one `next()`), or, once cancelled, closes the generator (its `finally`
    blocks run on the stepping thread) and fails the future. What a unit yields goes to `on_slice`; what the
    generator returns, or the error it raises, goes to `future`. A unit must not yield inside a context
    that changes the model (hooks, gates): other work may run between units.
    """

    def __init__(
        self, name: str, steps: Generator[Any, None, R], on_slice: Callable[[Any], None] | None = None
    ) -> None:
        self.name = name
        self.steps = steps
        self.on_slice = on_slice
        self.future: Future[R] = Future()
        self.slices = 0  # units run so far
        self.cancelled = False
        self.wake: Callable[[], None] = lambda: None  # set by a scheduler that sleeps until there is work

    def cancel(self) -> None:
        """Stop before the next unit (callable from any thread; a no-op once done)."""
        self.cancelled = True
        self.wake()

    @property
    def done(self) -> bool:
        return self.future.done()

    def step(
        self, advance: Callable[[Generator[Any, None, R]], Any] = next, stopped: BaseException | None = None
    ) -> bool:
        """Run one unit on this thread, or close the steps when cancelled. True once the future holds the end.

        Args:
            advance: runs one unit: `next`, or a wrapper of it (timing, a hook, an out-of-memory handler).
            stopped: what the future gets when cancelled (default: Cancelled naming the work).
        """
        try:
            if self.cancelled:
                self.steps.close()
                self.future.set_exception(stopped or Cancelled(f"{self.name}: cancelled"))
                return True
            value = advance(self.steps)
            self.slices += 1
            if self.on_slice is not None:
                self.on_slice(value)
            return False
        except StopIteration as stop:
            self.future.set_result(stop.value)
        except BaseException as exc:
            self.steps.close()
            self.future.set_exception(exc)
        return True

    def run(self, advance: Callable[[Generator[Any, None, R]], Any] = next) -> None:
        """Every unit on this thread, until the steps end, fail or are cancelled; the future then holds the end."""
        while not self.step(advance):
            pass


def drain(steps: Generator[Any, None, R]) -> R:
    """Run a steps generator to its end at once and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: R = stop.value
            return result


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is the host or the accelerator running out of memory."""
    return isinstance(exc, MemoryError | torch.OutOfMemoryError)
