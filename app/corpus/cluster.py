"""Corpus jobs on a Ray cluster: actors that each hold the model measure batches; the server stores them.

What crosses the boundary: in, a job's batches as (text index, token ids) lists and its analyses; out,
one `BatchResult` per batch (each text's per-head numbers and the batch's similarity sums: mergeable,
never attention maps). The actors run `measure_batch_steps`, the very code of an in-process job, on
the very batches an in-process job would run, so the numbers are the same. The server's driver thread
keeps one batch in flight per actor and commits each result when it arrives, keyed by text index, so
a batch is stored once whichever actor (or retry) measured it.

Faults: actors restart and retry their task when killed (Ray's `max_restarts` / `max_task_retries`);
an actor that stays dead has its batch given to another; with no actor left the job stops as
interrupted (ClusterLost) and resumes later from its stored batches. Cancel tells every actor to stop
the run at its next step. Ray is imported only in this module, and only when a cluster is configured.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.corpus.batches import Items, halves
from app.corpus.measure import measure_batch_steps
from app.corpus.records import BatchResult
from app.inspect.engine.hooks import before_every_block
from app.inspect.engine.steps import Sliced, is_oom
from app.inspect.loading import load, resolve
from app.inspect.model.loaded import Loaded

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the project: on every node's PYTHONPATH (the image puts it there)
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # a local instance then binds 127.0.0.1 only
POLL_S = 0.2  # how often the driver looks at cancel while batches run
MAX_RESTARTS = 3  # per actor; then it counts as lost
READY_TIMEOUT_S = 1800.0  # actors loading a large model from disk
Commit = Callable[[BatchResult, int | None, float], None]  # result, finished batch number or None, seconds


class Stopped(Exception):
    """Raised inside an actor's forward when its run has been stopped."""


class ClusterLost(Exception):
    """No actor is left (or the cluster cannot be reached): the job stops as interrupted."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster is and how the actors load the model (HEADSCOPE_RAY_* and the model settings)."""

    address: str  # "local", "auto", "ray://host:port" or a GCS host:port
    workers: int | None  # None: one per GPU group of the cluster, or 1 without GPUs
    gpus_per_worker: float | None  # None: 1 on a cluster with GPUs, else 0
    model: str
    dtype: str = "auto"


class Worker:
    """One actor: loads the model once, measures batches, stops a run when told (Ray makes it remote)."""

    def __init__(self, source: str, name: str, device: str, dtype: str, device_map: str | None) -> None:
        self.loaded: Loaded = load(source, device, dtype, device_map)
        self.loaded.name = name
        self.stopped: set[str] = set()
        self.running = 0  # batches being measured now

    def ready(self) -> tuple[str, int]:
        return f"{self.loaded.name} on {self.loaded.device}", os.getpid()

    def status(self) -> tuple[int, int]:
        """(process id, batches running): a restarted actor has a new pid; a stopped run leaves 0."""
        return os.getpid(), self.running

    def stop(self, run: str) -> None:
        self.stopped.add(run)

    def measure(self, run: str, piece: int, items: Items, analyses: list[str], importance: str) -> tuple[int, Any]:
        """(piece, BatchResult), or (piece, "oom") / (piece, "stopped"); `stop` takes effect at the next block.

        One forward of a large batch takes seconds on one CPU, so the check runs before every decoder block
        (a pre-hook that raises), not only between forwards.
        """

        def check() -> None:
            if run in self.stopped:
                raise Stopped

        def advance(steps: Generator[Any, None, BatchResult]) -> Any:
            check()
            with before_every_block(self.loaded.adapter, check):
                return next(steps)

        task = Sliced(
            f"run {run} piece {piece}", measure_batch_steps(self.loaded, items, frozenset(analyses), importance)
        )
        self.running += 1
        try:
            task.run(advance)  # a failed or stopped run is closed: its own hooks and gates come off
        finally:
            self.running -= 1
        error = task.future.exception()
        if error is None:
            return piece, task.future.result()
        if isinstance(error, Stopped):
            return piece, "stopped"
        if not is_oom(error):
            raise error
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return piece, "oom"


class Cluster:
    """The Ray actors of this server. `start` blocks (call it off the event loop); the rest is thread-safe."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.actors: list[Any] = []
        self.started = threading.Event()  # set when start() ends, either way
        self.error: str | None = None
        self.startup_s: float | None = None
        self._own_ray = False
        self._worker_args: tuple[Any, ...] = ()
        self._options: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        try:
            self._connect()
            self.actors = [self._new_actor() for _ in range(self._plan_actors())]
            self._wait_actors(self.actors)
            self.startup_s = time.monotonic() - began
            log.info("Ray: %d actors ready in %.1f s (%s)", len(self.actors), self.startup_s, self.config.address)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the Ray cluster did not start; corpus jobs will stop as interrupted until it does")
        finally:
            self.started.set()

    def shutdown(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self._own_ray:
            ray.shutdown()

    def describe(self) -> dict[str, Any]:
        """For GET /api/jobs: where the cluster is, how many actors, and whether they are up."""
        state = "starting" if not self.started.is_set() else ("failed" if self.error else "ready")
        return {"address": self.config.address, "workers": len(self.actors), "state": state}

    def _connect(self) -> None:
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        if self.config.address == "local":
            env |= LOOPBACK
            os.environ.update(LOOPBACK)  # read when ray is first imported: before _ray()
        ray = _ray()
        if ray.is_initialized():
            return
        if self.config.address == "local":
            ray.init(
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env},
            )
        else:
            ray.init(address=self.config.address, log_to_driver=False, runtime_env={"env_vars": env})
        self._own_ray = True

    def _plan_actors(self) -> int:
        """How many actors, and how each is made (resources, model arguments); refused if they cannot fit."""
        gpus = float(_ray().cluster_resources().get("GPU", 0))
        per = self.config.gpus_per_worker if self.config.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if per > gpus:
            raise RuntimeError(f"HEADSCOPE_RAY_GPUS_PER_WORKER is {per:g} but the cluster has {gpus:g} GPUs")
        device = "cuda" if per else "cpu"
        device_map = "auto" if per > 1 else None  # a model too big for one GPU: spread over the actor's GPUs
        name, source = resolve(self.config.model)  # registry names become the prepared path on this host
        self._worker_args = (source, name, device, self.config.dtype, device_map)
        self._options = {
            "num_cpus": 1,
            "num_gpus": per,
            "max_restarts": MAX_RESTARTS,
            "max_task_retries": -1,  # a task on an actor that died is run again on the restarted actor
            "max_concurrency": 2,  # `stop` runs while `measure` does
        }
        n = self.config.workers if self.config.workers is not None else (max(1, int(gpus // per)) if per else 1)
        free = _ray().available_resources()
        if free.get("CPU", 0) < n or free.get("GPU", 0) < n * per:  # else the actors would wait forever
            raise RuntimeError(
                f"{n} actors need {n} CPUs and {n * per:g} GPUs; the cluster has {free.get('CPU', 0):g} CPUs and "
                f"{free.get('GPU', 0):g} GPUs free (set HEADSCOPE_RAY_WORKERS / HEADSCOPE_RAY_GPUS_PER_WORKER)"
            )
        return n

    def _new_actor(self) -> Any:
        remote = _ray().remote(Worker)
        return remote.options(**self._options).remote(*self._worker_args)

    def _wait_actors(self, actors: list[Any]) -> None:
        names = _ray().get([a.ready.remote() for a in actors], timeout=READY_TIMEOUT_S)
        log.info("Ray actors: %s", ", ".join(f"{n} (pid {p})" for n, p in names))

    def ensure(self) -> None:
        """Before a job: replace actors that died for good (a job interrupted by a lost cluster resumes)."""
        ray = _ray()
        with self._lock:
            for i, actor in enumerate(self.actors):
                try:
                    ray.get(actor.ready.remote(), timeout=READY_TIMEOUT_S)
                except ray.exceptions.RayActorError:
                    log.warning("Ray actor %d is dead; starting a new one", i)
                    self.actors[i] = self._new_actor()
                    self._wait_actors([self.actors[i]])

    # -- a job's batches ---------------------------------------------------------------------------

    def measure(
        self, batches: list[tuple[int, Items]], analyses: list[str], importance: str, commit: Commit
    ) -> Generator[None, None, None]:
        """Measure `batches` (number, items) on the actors and `commit` each result as it arrives.

        A generator for the job's driver thread: it yields every POLL_S, where a cancel closes it; closing
        tells every actor to stop this run. Out of memory on an actor splits the batch in halves.
        """
        while not self.started.wait(POLL_S):
            yield
        if self.error is not None:
            raise ClusterLost(f"the Ray cluster did not start: {self.error}")
        ray = _ray()
        try:
            self.ensure()
        except ray.exceptions.RayError as exc:
            raise ClusterLost(f"the Ray cluster cannot be reached: {exc}") from exc
        run = secrets.token_hex(6)
        pieces: dict[int, tuple[int, Items]] = {}  # piece id -> (batch number, items)
        waiting: deque[int] = deque()
        open_pieces: dict[int, int] = {}  # batch number -> its pieces not yet committed
        for number, items in batches:
            pieces[len(pieces)] = (number, items)
            waiting.append(len(pieces) - 1)
            open_pieces[number] = 1
        live = list(self.actors)
        idle = deque(live)
        flight: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, piece id)
        last = time.monotonic()
        try:
            while waiting or flight:
                while waiting and idle:
                    actor, piece = idle.popleft(), waiting.popleft()
                    ref = actor.measure.remote(run, piece, pieces[piece][1], analyses, importance)
                    flight[ref] = (actor, piece)
                done, _ = ray.wait(list(flight), num_returns=1, timeout=POLL_S)
                for ref in done:
                    actor, piece = flight.pop(ref)
                    number, items = pieces[piece]
                    try:
                        _, result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the code raised: the job fails, as in-process
                        raise exc.as_instanceof_cause() from None
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                        live.remove(actor)
                        log.warning("a Ray actor was lost (%s); %d left", type(exc).__name__, len(live))
                        if not live:
                            raise ClusterLost("every Ray actor was lost; resume when the cluster is back") from exc
                        waiting.appendleft(piece)
                        continue
                    idle.append(actor)
                    if result == "oom":
                        for part in halves(items):
                            pieces[len(pieces)] = (number, part)
                            waiting.appendleft(len(pieces) - 1)
                        open_pieces[number] += 1
                        continue
                    open_pieces[number] -= 1
                    now = time.monotonic()
                    commit(result, number if not open_pieces[number] else None, now - last)
                    last = now
                yield
            live = []  # all done: nothing to stop
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.RayTaskError):
                raise
            raise ClusterLost(f"the Ray cluster was lost: {type(exc).__name__}: {exc}") from exc
        finally:  # cancelled (closed at a yield) or failed: the actors stop this run at their next block
            for actor in live:
                with contextlib.suppress(Exception):  # the cluster is gone: nothing runs there any more
                    actor.stop.remote(run)


def tokenizer_copy(loaded: Loaded) -> Any:
    """The driver plans batches with its own tokenizer, never the one the model thread is using."""
    return copy.deepcopy(loaded.tokenizer)


def _ray() -> Any:
    import ray

    return ray
