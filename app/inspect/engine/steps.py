"""Work done in steps: a generator that yields between forwards (no hook on the model then) and returns a result.

The model worker (app.service.Service) runs one step at a time so waiting requests go first; corpus jobs and
the Ray driver run them the same way; scripts, tests and the bench `drain` them. Out-of-memory errors are told
apart by `is_oom`, in one place.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

Y = TypeVar("Y")
R = TypeVar("R")
Steps = Generator[Y, None, R]  # each next() is one step; StopIteration carries the result


@dataclass(frozen=True)
class Progress:
    """Units of work done so far, of `total` known so far."""

    done: int
    total: int


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
