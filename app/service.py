"""The one worker per device: a bounded queue in front of the model, the run cache, limits and timing."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from app.config import Settings
from app.errors import Busy, ClientGone, LoadFailed, NotReady, OutOfMemory, ServiceError
from app.inspect.engine import runs
from app.inspect.engine.runs import Run, RunCache
from app.inspect.engine.steps import Sliced, is_oom
from app.inspect.loading import load
from app.inspect.model.loaded import Loaded
from app.inspect.observe import registry, roles
from app.telemetry import Telemetry

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class _Request:
    """One interactive call waiting for the model thread."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.enqueued = time.monotonic()
        self.future: Future[Any] = Future()


class Service:
    """Holds the model; runs all model work on one thread: requests first, long work in slices between them.

    Scheduling: the model thread takes the oldest waiting request if there is one, else one slice of
    a request's own long work (`sliced`: generation, the ablation sweep), else one slice of a background
    job (each kind round robin). A request therefore waits for at most one slice, so slices are kept short
    (about one forward of a few hundred tokens: corpus jobs, engine.segments), and a request's long work
    never takes turns with a job.
    Requests that need no forward (maps of a cached run) do not wait at all: `read()` runs them on a
    reader thread at normal priority while the model thread runs at nice 10, so a corpus batch that
    takes a second cannot make a cached /api/attention wait for it. Reading a cached run's Q/K
    while the model thread runs a forward is safe: runs are immutable tensors and readers never
    touch the model.
    """

    def __init__(self, settings: Settings, loaded: Loaded | None = None, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.loaded = loaded
        self.cache = RunCache(settings.cache_entries, settings.cache_bytes)
        self.ready = False
        self.stopping = False
        self.load_error: str | None = None  # why the model failed to load, once it has
        self._requests: deque[_Request] = deque()
        self._interactive: deque[Sliced[Any]] = deque()  # a request's own long work: before any job
        self._background: deque[Sliced[Any]] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headscope-reader")
        self._waiting = 0  # admitted requests not yet finished
        self._lock = threading.Lock()
        self._probed: dict[str, torch.Tensor] = {}  # probe metric -> scores, once per model
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
        """Stop taking work, finish the admitted requests, close every background task, join the thread."""
        self.stopping = True
        self.ready = False
        with self._wakeup:
            self._closing = True
            for task in (*self._interactive, *self._background):
                task.cancelled = True
            self._wakeup.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._reader.shutdown(wait=True)

    def unavailable(self) -> ServiceError:
        """Why no request can use the model now, in the words /api/health and /api/ready use too."""
        if self.load_error is not None:
            return LoadFailed(f"the model failed to load: {self.load_error}")
        return NotReady("the server is shutting down" if self.stopping else "the model is still loading")

    @property
    def model(self) -> Loaded:
        if self.loaded is None or not self.ready:
            raise self.unavailable()
        return self.loaded

    @property
    def max_tokens(self) -> int:
        """The longest text accepted: the configured limit, capped by the model's position table."""
        positions = self.model.adapter.layout.max_positions
        return min(self.settings.max_tokens, positions) if positions > 0 else self.settings.max_tokens

    @property
    def queue_depth(self) -> int:
        return self._waiting

    # -- admission -------------------------------------------------------------------------------

    def _admit(self, n_tokens: int) -> None:
        """Count one more request in, or raise 503 at once (not ready, shutting down, queue full)."""
        if self.stopping or not self.ready:
            self.telemetry.rejections.labels("not_ready").inc()
            raise self.unavailable()
        with self._lock:
            if self._waiting >= self.settings.queue_size:
                self.telemetry.rejections.labels("queue_full").inc()
                raise Busy(f"{self._waiting} requests are already waiting for the model; retry shortly")
            self._waiting += 1
        if n_tokens:
            self.telemetry.tokens.observe(n_tokens)

    def _release(self, *_: object) -> None:
        with self._lock:
            self._waiting -= 1

    async def call(self, fn: Callable[..., T], *args: Any, n_tokens: int = 0) -> T:
        """Run `fn(*args)` on the model thread before any background slice; 503 when full or past the deadline."""
        self._admit(n_tokens)
        request = _Request(fn, args)
        # the request gives its queue slot back when it ends, even if the caller has gone away
        request.future.add_done_callback(self._release)
        with self._wakeup:
            self._requests.append(request)
            self._ensure_thread()
            self._wakeup.notify()
        return await asyncio.wrap_future(request.future)  # type: ignore[no-any-return]

    async def read(self, fn: Callable[..., T], *args: Any, n_tokens: int = 0) -> T:
        """Run `fn(*args)`, which must not use the model, on the reader thread: it never waits for a slice."""
        self._admit(n_tokens)
        future = self._reader.submit(self._timed, fn, args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    async def on_run(self, text: str, token_ids: list[int], fn: Callable[[Run], T], n_tokens: int = 0) -> T:
        """`fn(run of text)`, where fn only reads the run: on the reader thread when the run is cached
        (no waiting behind a slice), else on the model thread after analysing the text."""
        run = self.cache.get(self.model.name, text)
        if run is not None:
            return await self.read(fn, run, n_tokens=n_tokens)
        return await self.call(lambda: fn(self.run_for(text, token_ids)), n_tokens=n_tokens)

    def submit(
        self,
        name: str,
        steps: Generator[Any, None, T],
        on_slice: Callable[[Any], None] | None = None,
        interactive: bool = False,
    ) -> Sliced[T]:
        """Queue long work as background slices (NotReady while loading or stopping).

        One slice is one `next()` of `steps` (a few blocks of a corpus batch, a few heads of the ablation sweep):
        a request waits for at most one, so they are kept short. What a slice yields goes to `on_slice`.
        `interactive`: a request is waiting for this work; its slices go before any background job's.
        """
        if self.stopping or not self.ready:
            steps.close()
            raise self.unavailable()
        task = Sliced(name, steps, on_slice)
        with self._wakeup:
            task.wake = self._notify
            (self._interactive if interactive else self._background).append(task)
            self._ensure_thread()
            self._wakeup.notify()
        return task

    def set_threads(self, n: int) -> int:
        """torch's intra-op thread count on the model thread (set from any other thread it does not reach there).

        Queued like long work, so it waits for the slice running now. Returns the count it replaced.
        """

        def steps() -> Generator[None, None, int]:
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            return before
            yield  # a generator that ends at its first step

        return self.submit("threads", steps()).future.result()

    async def sliced(
        self,
        name: str,
        steps: Generator[Any, None, T],
        gone: Callable[[], Awaitable[bool]],
        n_tokens: int = 0,
        poll_s: float = 0.1,
    ) -> T:
        """A request's long work in background slices; cancelled (within one slice) once `gone()` says the
        client has disconnected or when this coroutine is cancelled."""
        self._admit(n_tokens)
        try:
            task = self.submit(name, steps, interactive=True)
        except BaseException:
            self._release()
            raise
        task.future.add_done_callback(self._release)
        result = asyncio.wrap_future(task.future)
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=poll_s)
                if done:
                    return result.result()
                if await gone():
                    task.cancel()
                    raise ClientGone(f"{name}: the client disconnected; stopped")
        finally:
            task.cancel()  # a no-op once finished
            result.add_done_callback(lambda f: f.cancelled() or f.exception())  # left early: read its end, unlogged

    # -- the model thread ------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _ensure_thread(self) -> None:
        """Start the model thread on first use (caller holds _wakeup)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="headscope-model", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        _lower_model_thread_priority()
        while True:
            with self._wakeup:
                while not self._requests and not self._interactive and not self._background and not self._closing:
                    self._wakeup.wait()
                if self._requests:
                    request: _Request | None = self._requests.popleft()
                    task = None
                elif self._interactive or self._background:
                    tasks = self._interactive or self._background
                    request, task = None, tasks[0]
                    tasks.rotate(-1)  # round robin between tasks of a kind
                else:
                    return  # closing, nothing left
            if request is not None:
                self._serve(request)
            elif task is not None:
                self._step(task)

    def _serve(self, request: _Request) -> None:
        if not request.future.set_running_or_notify_cancel():
            return
        try:
            waited = time.monotonic() - request.enqueued
            self.telemetry.queue_wait.observe(waited)
            if waited > self.settings.queue_timeout_s:
                self.telemetry.rejections.labels("deadline").inc()
                raise Busy(
                    f"the request waited {waited:.1f} s for the model, past the {self.settings.queue_timeout_s} s limit"
                )
            request.future.set_result(self._timed(request.fn, request.args))
        except BaseException as exc:
            request.future.set_exception(exc)

    def _step(self, task: Sliced[Any]) -> None:
        """Run one slice of `task`, timed, or close it once cancelled (always on this thread); drop it once ended."""
        try:
            task.step(
                lambda steps: self._timed(next, (steps,)),
                NotReady("the server is shutting down") if self._closing else None,
            )
        finally:
            if task.done:
                with self._wakeup:
                    for tasks in (self._interactive, self._background):
                        if task in tasks:
                            tasks.remove(task)

    def _timed(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        start = time.monotonic()
        try:
            return fn(*args)
        except Exception as exc:
            if is_oom(exc):
                self.telemetry.ooms.inc()
                self.release_memory()
                raise OutOfMemory("the model ran out of memory on this input; try a shorter text") from exc
            raise
        finally:
            self.telemetry.model_time.observe(time.monotonic() - start)

    def release_memory(self) -> None:
        """Drop cached runs and free what the allocator holds (after an out-of-memory error)."""
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

    def probe_scores(self) -> dict[str, torch.Tensor]:
        """Every probe metric's scores of every head (n_layers, n_heads), measured once per model (model thread)."""
        missing = [m for m in registry.METRICS if m.probe is not None and m.name not in self._probed]
        for m in missing:
            assert m.probe is not None
            self._probed[m.name] = m.probe(self.model)
        return self._probed
