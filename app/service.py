"""The one worker per device: a bounded queue in front of the model, the run cache, limits and timing."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from app.config import Settings
from app.inspect import roles, runs
from app.inspect.loading import Loaded, load
from app.inspect.runs import Run, RunCache
from app.telemetry import Telemetry

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceError(Exception):
    """An error with an HTTP status and a machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class InvalidInput(ServiceError):
    status = 422
    code = "invalid_input"


class NotFound(ServiceError):
    """404: no such dataset, job or other named resource."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """409: the resource exists but is in a state that forbids the request (e.g. deleting a built-in set)."""

    status = 409
    code = "conflict"


class Unavailable(ServiceError):
    """503: retry later."""

    status = 503
    code = "unavailable"


class Busy(Unavailable):
    code = "busy"


class NotReady(Unavailable):
    code = "not_ready"


class OutOfMemory(Unavailable):
    code = "out_of_memory"


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError | torch.OutOfMemoryError)


MODEL_THREAD_NICE = 10


def _lower_model_thread_priority() -> None:
    """Run model work at a lower CPU priority than the event loop (Linux: per thread).

    The model thread's intra-op worker threads are created from it and inherit the value, so on a
    machine whose cores are all busy with a forward, /api/health and request admission still get a
    core at once. With nothing else to run, the model keeps every core: nice only orders the queue.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MODEL_THREAD_NICE)
    except (AttributeError, OSError):  # not Linux, or not permitted: keep the default priority
        log.debug("could not lower the model thread's priority")


class Service:
    """Holds the model; runs all model work on one thread, one job at a time, behind a bounded queue."""

    def __init__(self, settings: Settings, loaded: Loaded | None = None, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.loaded = loaded
        self.cache = RunCache(settings.cache_entries, settings.cache_bytes)
        self.ready = False
        self.stopping = False
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="headscope-model", initializer=_lower_model_thread_priority
        )
        self._waiting = 0  # admitted jobs not yet finished
        self._lock = threading.Lock()
        self._induction: torch.Tensor | None = None
        self.telemetry.watch_queue(lambda: self._waiting)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load (if not given) and warm the model. Blocking; call off the event loop."""
        if self.loaded is None:
            s = self.settings
            self.loaded = load(s.model, s.device, s.dtype, s.device_map)
        if self.settings.warmup:
            run = runs.analyse(self.loaded, "Warm up the attention heads.")
            roles.head_stats(run, self.loaded.adapter.layout)
        self.ready = True
        log.info("model %s ready", self.loaded.name)

    def shutdown(self) -> None:
        self.stopping = True
        self.ready = False
        self._executor.shutdown(wait=True)

    @property
    def model(self) -> Loaded:
        if self.loaded is None or not self.ready:
            raise NotReady("the model is still loading")
        return self.loaded

    @property
    def max_tokens(self) -> int:
        """The longest text accepted: the configured limit, capped by the model's position table."""
        positions = self.model.adapter.layout.max_positions
        return min(self.settings.max_tokens, positions) if positions > 0 else self.settings.max_tokens

    @property
    def queue_depth(self) -> int:
        return self._waiting

    # -- the queue -------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, n_tokens: int = 0) -> T:
        """Run `fn(*args)` on the model thread; 503 at once when the queue is full or past the deadline."""
        if self.stopping or not self.ready:
            self.telemetry.rejections.labels("not_ready").inc()
            raise NotReady("the server is shutting down" if self.stopping else "the model is still loading")
        with self._lock:
            if self._waiting >= self.settings.queue_size:
                self.telemetry.rejections.labels("queue_full").inc()
                raise Busy(f"{self._waiting} requests are already waiting for the model; retry shortly")
            self._waiting += 1
        if n_tokens:
            self.telemetry.tokens.observe(n_tokens)
        enqueued = time.monotonic()
        loop = asyncio.get_running_loop()
        # the job itself gives its queue slot back when it ends, even if the caller has gone away
        return await loop.run_in_executor(self._executor, self._guarded, enqueued, fn, args)

    def _guarded(self, enqueued: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            waited = time.monotonic() - enqueued
            self.telemetry.queue_wait.observe(waited)
            if waited > self.settings.queue_timeout_s:
                self.telemetry.rejections.labels("deadline").inc()
                raise Busy(
                    f"the request waited {waited:.1f} s for the model, past the {self.settings.queue_timeout_s} s limit"
                )
            start = time.monotonic()
            try:
                return fn(*args)
            except Exception as exc:
                if _is_oom(exc):
                    self.telemetry.ooms.inc()
                    self._release_memory()
                    raise OutOfMemory("the model ran out of memory on this input; try a shorter text") from exc
                raise
            finally:
                self.telemetry.model_time.observe(time.monotonic() - start)
        finally:
            with self._lock:
                self._waiting -= 1

    def _release_memory(self) -> None:
        self.cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- helpers run on the model thread ---------------------------------------------------------

    def run_for(self, text: str, token_ids: list[int] | None = None) -> Run:
        """The cached run of `text`, analysing it first if needed (model thread only).

        `token_ids`: the text's ids when the request has already tokenized it, so it is not done twice.
        """
        loaded = self.model
        run = self.cache.get(loaded.name, text)
        if run is None:
            run = runs.analyse(loaded, text, token_ids=token_ids)
            self.cache.put(run)
        return run

    def induction(self) -> torch.Tensor:
        """Induction scores of every head, measured once per model on the probe (model thread only)."""
        if self._induction is None:
            self._induction = roles.induction_scores(self.model)
        return self._induction
