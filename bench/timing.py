"""Wall-clock timing: interleaved repetitions, medians, CUDA-aware synchronisation."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes, synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each function, run in turn rep by rep (order rotated) so drift hits all alike.

    Args:
        fns: name → zero-argument callable.
        reps: timed calls of each.
        device: where the work runs (for synchronisation).
        warmup: untimed calls of each first (allocator, kernels, caches).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(fns[name], device))
    return {name: statistics.median(times) for name, times in samples.items()}


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """Share of the machine's CPU capacity that other processes used between start() and share().

    On a shared machine, a ratio is only as good as the quiet it was measured in: each row reports this.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._busy, self._total = _busy_jiffies()
        self._own = _own_cpu_seconds()

    def share(self) -> float | None:
        busy, total = _busy_jiffies()
        if total - self._total < os.sysconf("SC_CLK_TCK"):  # under ~1 CPU-second: jiffies too coarse to say
            return None
        hz = os.sysconf("SC_CLK_TCK")
        others = (busy - self._busy) / hz - (_own_cpu_seconds() - self._own)
        return max(0.0, others / ((total - self._total) / hz))


def wait_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 3.0) -> float | None:
    """Wait (up to max_wait_s) until other processes use under `threshold` of the CPUs; returns the last share."""
    deadline = time.monotonic() + max_wait_s
    share: float | None = None
    while True:
        meter = OtherLoad()
        time.sleep(window_s)
        share = meter.share()
        if share is None or share < threshold or time.monotonic() >= deadline:
            return share


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, as printed in a section's notes."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())
