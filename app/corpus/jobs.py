"""Corpus jobs: run analyses over a dataset in length-bucketed batches on the model worker, persistently.

What crosses the boundary: job parameters in; job records (state, progress) and change notifications
out. A job is a generator of slices (a Sliced task) run by app.service after every waiting request: a
batch is many slices, each about one forward of SLICE_TOKENS tokens (a few decoder blocks of the batch, a
piece of its LM head, a backward chunk, one text's statistics), so a request waits for one such slice at
most, and a cancel stops the work within one. Each finished batch is committed to the JobStore in one
transaction, only while the job is running and this run is still its current one, so a cancel, a restart
or SIGTERM loses at most the batch in flight, nothing computed after a cancel is counted, and a resumed
job skips what is stored. An out-of-memory error in a batch retries it in halves, down to
one text (app.corpus.batches); a text that does not fit alone fails the job with a message that says so.

With a Ray cluster (app.corpus.cluster) the same task runs on a driver thread of its own instead: the same plan,
its batches measured by the cluster's actors and committed here as they arrive; the model worker is not
involved, so interactive requests never wait for the cluster. A lost cluster leaves the job interrupted.

States: queued → running → done | failed | cancelled; a job left queued or running by a stopped
server is interrupted; interrupted, cancelled and failed jobs can be resumed.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.corpus.batches import Items, OutOfMemoryInBatch, halves
from app.corpus.cluster import Cluster, ClusterLost, tokenizer_copy
from app.corpus.datasets import DatasetStore
from app.corpus.jobstore import JobRecord, JobStore, now_iso
from app.corpus.measure import length_batches, measure_batch_steps
from app.corpus.qk_space import CACHED, LRU, HeadEmbedding
from app.corpus.records import BatchResult
from app.corpus.results import Results
from app.corpus.sampling import Reservoir
from app.errors import Cancelled, Conflict, InvalidInput, NotReady
from app.inspect.engine.runs import encode
from app.inspect.engine.segments import SLICE_TOKENS
from app.inspect.engine.steps import Sliced, is_oom
from app.inspect.model.loaded import Loaded
from app.service import Service

log = logging.getLogger(__name__)

ANALYSES = ("roles", "importance", "similarity")
IMPORTANCE = ("gradient", "ablation")
RESUMABLE = frozenset({"interrupted", "cancelled", "failed"})
ACTIVE = frozenset({"queued", "running"})
TOKENIZE_CHUNK = 256  # texts tokenized per slice while a job plans its batches
MAX_BATCH_TOKENS = 2048  # padded tokens per batch (measured in slices of about SLICE_TOKENS each)
MAX_BATCH_TEXTS = 64


class _Superseded(Exception):
    """This run may not commit: its job was cancelled, interrupted or failed, or resumed as a newer run."""


@dataclass(frozen=True)
class JobSpec:
    dataset: str
    analyses: tuple[str, ...] = ("roles",)
    importance: str = "gradient"
    max_tokens: int = 128
    seed: int = 0


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    tokens: int
    tokens_per_s: float | None
    eta_s: float | None


def progress(job: JobRecord) -> Progress:
    """Texts and tokens done; tokens/s over the time the job has run (all its sessions); ETA while running."""
    rate = job.tokens / job.run_s if job.run_s > 0 and job.tokens else None
    eta = None
    if job.state == "done":
        eta = 0.0
    elif job.state in ACTIVE and rate:
        eta = max(job.total_tokens - job.tokens, 0) / rate
    return Progress(job.done, job.total, job.tokens, rate, eta)


class Jobs:
    """Starts, cancels and resumes jobs; tells listeners when a job changes. Thread-safe."""

    def __init__(
        self,
        service: Service,
        datasets: DatasetStore,
        store: JobStore,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        max_batch_texts: int = MAX_BATCH_TEXTS,
        cluster: Cluster | None = None,
    ) -> None:
        self.service = service
        self.cluster = cluster
        self._tokenizer: Any = None  # the cluster driver's own copy
        self.datasets = datasets
        self.store = store
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.results = Results(store)
        self.samples: LRU[tuple[object, ...], Reservoir] = LRU(2)  # Q/K samples of recent layers (~30 MB each)
        self.embeddings: LRU[tuple[object, ...], HeadEmbedding] = LRU(CACHED)  # per (job, texts done, head)
        self._tasks: dict[str, Sliced[None]] = {}
        self._runs: dict[str, object] = {}  # job id → token of its current run: a cancelled run's exit is ignored
        self._listeners: dict[str, list[Callable[[JobRecord], None]]] = {}
        self._lock = threading.Lock()
        self.forwards = 0  # batches measured (pieces after an out-of-memory split count once each)

    # -- lifecycle -------------------------------------------------------------------------------

    def recover(self) -> None:
        """At startup: jobs a previous process left queued or running become interrupted."""
        for job_id in self.store.interrupt_unfinished():
            log.info(
                "job %s was interrupted by the last shutdown; POST /api/jobs/%s/resume continues it", job_id, job_id
            )

    def shutdown(self) -> None:
        """Mark active jobs interrupted (their finished batches are already stored) and stop them."""
        with self._lock:
            tasks = dict(self._tasks)
        for job_id, task in tasks.items():
            self.store.update(job_id, expect=ACTIVE, state="interrupted")
            task.cancel()
            self._publish(job_id)

    # -- requests --------------------------------------------------------------------------------

    def start(self, spec: JobSpec) -> JobRecord:
        """Check the request, store the job as queued and hand it to the model worker."""
        if not spec.analyses:
            raise InvalidInput("analyses is empty: give at least one of " + ", ".join(ANALYSES))
        unknown = set(spec.analyses) - set(ANALYSES)
        if unknown:
            raise InvalidInput(f"unknown analyses {sorted(unknown)}; choose from {list(ANALYSES)}")
        if spec.importance not in IMPORTANCE:
            raise InvalidInput(f"importance must be one of {list(IMPORTANCE)}")
        limit = self.service.max_tokens  # NotReady while the model loads
        if not 1 <= spec.max_tokens <= limit:
            raise InvalidInput(f"max_tokens is {spec.max_tokens}; this server accepts 1..{limit}")
        job = JobRecord(
            id="job_" + secrets.token_hex(6),
            dataset=spec.dataset,
            analyses=[a for a in ANALYSES if a in spec.analyses],
            importance=spec.importance,
            max_tokens=spec.max_tokens,
            seed=spec.seed,
            state="queued",
            created=now_iso(),
        )
        with self._lock:  # not between delete_dataset's check and its delete
            self.datasets.get(spec.dataset)  # NotFound
            self.store.create(job)
        self._submit(job.id)
        return self.store.get(job.id)

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset, unless a queued or running job reads it (409: cancel that job first)."""
        with self._lock:
            for job in self.store.all():
                if job.dataset == dataset_id and job.state in ACTIVE:
                    raise Conflict(
                        f"dataset {dataset_id} is being read by job {job.id} ({job.state}); "
                        f"cancel it first (DELETE /api/jobs/{job.id})"
                    )
            self.datasets.delete(dataset_id)

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def all(self) -> list[JobRecord]:
        return self.store.all()

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (409 once it has ended); its finished batches stay."""
        job = self.store.get(job_id)
        if not self.store.update(job_id, expect=ACTIVE, state="cancelled", finished=now_iso()):
            raise Conflict(f"job {job_id} has already ended ({job.state})")
        with self._lock:
            task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        self._publish(job_id)
        return self.store.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        """Continue an interrupted, cancelled or failed job from its finished batches (409 otherwise)."""
        job = self.store.get(job_id)
        if job.state not in RESUMABLE:
            raise Conflict(f"job {job_id} is {job.state}; only interrupted, cancelled or failed jobs resume")
        loaded = self.service.model
        if job.model is not None and job.model != loaded.name:
            raise Conflict(f"job {job_id} ran on {job.model}; this server serves {loaded.name}")
        self.datasets.get(job.dataset)  # NotFound when the dataset has been deleted since
        if not self.store.update(job_id, expect=RESUMABLE, state="queued", error=None, finished=None):
            raise Conflict(f"job {job_id} changed state meanwhile; try again")
        self._submit(job_id)
        return self.store.get(job_id)

    # -- listeners -------------------------------------------------------------------------------

    @contextmanager
    def listening(self, job_id: str, listener: Callable[[JobRecord], None]) -> Iterator[None]:
        """Call `listener(job)` (from any thread) after each change of the job, until the block ends."""
        with self._lock:
            self._listeners.setdefault(job_id, []).append(listener)
        try:
            yield
        finally:
            with self._lock:
                found = self._listeners.get(job_id, [])
                found.remove(listener)
                if not found:
                    self._listeners.pop(job_id, None)

    def _publish(self, job_id: str) -> None:
        with self._lock:
            listeners = list(self._listeners.get(job_id, []))
        if listeners:
            job = self.store.get(job_id)
            for listener in listeners:
                try:
                    listener(job)
                except Exception:  # e.g. a listener's event loop closed: the job goes on
                    log.exception("a listener of job %s failed", job_id)

    # -- running (model thread) ------------------------------------------------------------------

    def _submit(self, job_id: str) -> None:
        token = object()
        with self._lock:
            self._runs[job_id] = token
        try:
            if self.cluster is None:
                task = self.service.submit(f"job {job_id}", self._run(job_id, token))
            else:
                _ = self.service.model  # NotReady while the model loads: the driver plans with its tokenizer
                task = Sliced(f"job {job_id}", self._run(job_id, token))
                threading.Thread(target=_drive, args=(task,), name=task.name, daemon=True).start()
        except NotReady:
            self.store.update(job_id, state="interrupted")
            raise
        with self._lock:
            self._tasks[job_id] = task
        task.future.add_done_callback(lambda _: self._forget(job_id, task))

    def _forget(self, job_id: str, task: Sliced[None]) -> None:
        with self._lock:
            if self._tasks.get(job_id) is task:
                del self._tasks[job_id]

    def _end(self, job_id: str, token: object, expect: frozenset[str], **changes: Any) -> bool:
        """Set the job's state as run `token` ends, if it is still the job's current run (a resume after a cancel
        starts a new one) and its state is one of `expect`. True if it changed."""
        with self._lock:  # resume swaps the run under this lock: no new run can start between check and update
            return self._runs.get(job_id) is token and self.store.update(job_id, expect=expect, **changes)

    def _batch_tokens(self, job: JobRecord) -> int:
        """Padded tokens per batch. The ablation sweep reads each of its forwards whole (the LM head over every
        position of the batch, in one step), so on the model worker its batches hold one slice's worth."""
        if self.cluster is None and "importance" in job.analyses and job.importance == "ablation":
            return min(self.max_batch_tokens, SLICE_TOKENS)
        return self.max_batch_tokens

    def _run(self, job_id: str, token: object) -> Generator[Any, None, None]:
        """The job as slices: plan the batches, then one batch per slice, each committed when it ends.

        A cancelled run is closed at its next slice; by then the job may have been resumed as a new run,
        whose state the old run's exit must not touch (`token`).
        """
        try:
            job = self.store.get(job_id)
            loaded = self.service.model
            layout = loaded.adapter.layout
            texts = self.datasets.texts(job.dataset)
            tokenizer = self._driver_tokenizer(loaded) if self.cluster else loaded.tokenizer
            lengths: list[int] = []
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                lengths += [len(self._ids(tokenizer, t, job.max_tokens)) for t in texts[start : start + TOKENIZE_CHUNK]]
                yield
            plan = length_batches(lengths, self._batch_tokens(job), self.max_batch_texts)
            started = job.started or now_iso()
            shape = (layout.n_layers, layout.n_heads, layout.group_size)
            if not self.store.update(
                job_id,
                expect=frozenset({"queued"}),
                state="running",
                started=started,
                model=loaded.name,
                shape=shape,
                total=len(texts),
                total_tokens=sum(lengths),
            ):
                return  # cancelled while queued
            self._publish(job_id)
            finished = self.store.finished_batches(job_id)
            stored = self.store.stored_texts(job_id)
            todo = [(n, [i for i in batch if i not in stored]) for n, batch in enumerate(plan) if n not in finished]
            if self.cluster is None:
                yield from self._in_process(loaded, job, texts, todo, token)
            else:
                yield from self._on_cluster(self.cluster, tokenizer, job, texts, todo, token)
            if self._end(job_id, token, expect=frozenset({"running"}), state="done", finished=now_iso()):
                self._publish(job_id)
        except _Superseded:  # cancelled, interrupted or resumed while it measured: whoever did it set the state
            return
        except GeneratorExit:  # cancelled (state already set) or the server stopping
            if self._end(job_id, token, expect=ACTIVE, state="interrupted"):
                self._publish(job_id)
            raise
        except ClusterLost as exc:
            log.warning("job %s: %s", job_id, exc)
            if self._end(job_id, token, expect=ACTIVE, state="interrupted", error=str(exc)):
                self._publish(job_id)
        except Exception as exc:
            oom = isinstance(exc, OutOfMemoryInBatch | MemoryError)
            message = str(exc) if oom else f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", job_id)
            if self._end(job_id, token, expect=ACTIVE, state="failed", error=message, finished=now_iso()):
                self._publish(job_id)

    def _in_process(
        self, loaded: Loaded, job: JobRecord, texts: list[str], todo: list[tuple[int, list[int]]], token: object
    ) -> Generator[Any, None, None]:
        """The batches on the model worker, one slice each; out-of-memory halves run as slices of their own."""
        for number, batch in todo:
            pieces = [[(i, self._ids(loaded.tokenizer, texts[i], job.max_tokens)) for i in batch]]
            while pieces:
                yield
                piece = pieces.pop(0)
                split = yield from self._measure(loaded, job, piece, number if not pieces else None, token)
                if split:
                    pieces[:0] = split
                else:
                    self._publish(job.id)
            self.store.finish_batch(job.id, number)  # when its texts were stored before (or in pieces)

    def _on_cluster(
        self,
        cluster: Cluster,
        tokenizer: Any,
        job: JobRecord,
        texts: list[str],
        todo: list[tuple[int, list[int]]],
        token: object,
    ) -> Generator[Any, None, None]:
        """The batches on the cluster's actors, each committed here as it arrives (any order)."""
        batches: list[tuple[int, Items]] = []
        for number, batch in todo:
            if batch:
                batches.append((number, [(i, self._ids(tokenizer, texts[i], job.max_tokens)) for i in batch]))
            else:
                self.store.finish_batch(job.id, number)  # its texts were stored before

        def commit(result: BatchResult, batch: int | None, seconds: float) -> None:
            self.forwards += 1
            self._commit(job, result, seconds, batch, token)
            self._publish(job.id)

        yield from cluster.measure(batches, list(job.analyses), job.importance, commit)

    def _measure(
        self, loaded: Loaded, job: JobRecord, items: Items, batch: int | None, token: object
    ) -> Generator[Any, None, list[Items]]:
        """Measure and commit one piece of a batch; on out-of-memory, its two halves to run instead.

        Yields between the measurement's steps (measure_batch_steps), so one batch does not hold the model
        worker for more than one step.
        """
        if not items:
            return []
        began = time.monotonic()
        try:
            self.forwards += 1
            result = yield from measure_batch_steps(loaded, items, frozenset(job.analyses), job.importance)
        except Exception as exc:
            if not is_oom(exc):
                raise
            self.service.release_memory()
            split = halves(items, exc)
            log.warning("job %s: out of memory on %d texts; retrying in halves", job.id, len(items))
            return list(split)
        self._commit(job, result, time.monotonic() - began, batch, token)
        return []

    def _commit(self, job: JobRecord, result: BatchResult, seconds: float, batch: int | None, token: object) -> None:
        """Store a measured batch, only while the job runs as run `token` (else _Superseded: nothing stored)."""
        with self._lock:  # as in _end: a resume cannot start a new run between the check and the commit
            if self._runs.get(job.id) is not token:
                raise _Superseded
            try:
                committed = self.store.commit(job.id, result.texts, result.similarity_sum, seconds, batch)
            except sqlite3.IntegrityError as exc:  # a text already stored: a bug, and nothing was written
                raise RuntimeError(f"job {job.id}: batch {batch} was already stored") from exc
        if not committed:
            raise _Superseded

    def _driver_tokenizer(self, loaded: Loaded) -> Any:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_copy(loaded)
        return self._tokenizer

    @staticmethod
    def _ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
        return encode(tokenizer, text)[:max_tokens]


def _drive(task: Sliced[None]) -> None:
    """A job's driver thread (on a cluster): every step of the job here, not on the model worker."""
    task.run()
    error = task.future.exception()
    if error is not None and not isinstance(error, Cancelled):  # the job handles its own errors: this is a bug
        log.error("job driver %s crashed", task.name, exc_info=error)
