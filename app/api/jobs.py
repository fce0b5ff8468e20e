"""Corpus jobs: start, watch, cancel and resume analyses over a dataset; read their statistics."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from app.api.corpus_schemas import (
    ExampleOut,
    ExamplesOut,
    HeadName,
    HeadStatsOut,
    JobBackend,
    JobHeadsOut,
    JobIn,
    JobList,
    JobOut,
    JobProgress,
    JobSimilarityOut,
    QKEmbeddingOut,
    QKPoint,
    StatOut,
)
from app.api.deps import JobsDep, ServiceDep, checked_index
from app.api.encode import dumps
from app.api.schemas import CONFLICT, ERRORS, NOT_FOUND
from app.atlas import build as atlas
from app.corpus.examples import describe
from app.corpus.jobs import JobSpec, progress
from app.corpus.jobstore import JobRecord
from app.corpus.qk_space import MAX_POSITIONS, head_embedding_steps
from app.corpus.results import export_rows
from app.errors import Conflict
from app.inspect.observe.registry import SimilarityName

router = APIRouter(prefix="/api", tags=["jobs"])
KEEPALIVE_S = 15.0
JobId = Annotated[str, Path(min_length=1, max_length=100)]


def job_out(job: JobRecord) -> JobOut:
    p = progress(job)
    return JobOut(
        id=job.id,
        dataset=job.dataset,
        analyses=job.analyses,
        importance=job.importance,
        max_tokens=job.max_tokens,
        seed=job.seed,
        state=job.state,  # type: ignore[arg-type]
        error=job.error,
        progress=JobProgress(done=p.done, total=p.total, tokens=p.tokens, tokens_per_s=p.tokens_per_s, eta_s=p.eta_s),
        created=job.created,
        started=job.started,
        finished=job.finished,
    )


@router.post("/jobs", status_code=202, response_model=JobOut, responses={**ERRORS, **NOT_FOUND})
def start_job(body: JobIn, jobs: JobsDep) -> JobOut:
    """Start analysing every text of a dataset; follow it with GET /api/jobs/{id} or its events."""
    spec = JobSpec(body.dataset, tuple(body.analyses), body.importance, body.max_tokens, body.seed)
    return job_out(jobs.start(spec))


@router.get("/jobs", response_model=JobList, responses=ERRORS)
def list_jobs(jobs: JobsDep) -> JobList:
    """Every job, newest first, and where jobs run (the model worker or a Ray cluster's actors)."""
    cluster = jobs.cluster
    if cluster is None:
        backend = JobBackend(backend="in-process", workers=1, state="ready")
    else:
        backend = JobBackend(backend="ray", error=cluster.error, **cluster.describe())
    return JobList(jobs=[job_out(j) for j in jobs.all()], backend=backend)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={**ERRORS, **NOT_FOUND})
def get_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """One job: parameters, state and progress."""
    return job_out(jobs.get(job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, responses={**ERRORS, **NOT_FOUND, **CONFLICT})
def cancel_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """Cancel a queued or running job; its finished batches stay (409 once it has ended)."""
    return job_out(jobs.cancel(job_id))


@router.post(
    "/jobs/{job_id}/resume", status_code=202, response_model=JobOut, responses={**ERRORS, **NOT_FOUND, **CONFLICT}
)
def resume_job(job_id: JobId, jobs: JobsDep) -> JobOut:
    """Continue an interrupted, cancelled or failed job without redoing its finished batches."""
    return job_out(jobs.resume(job_id))


def _event(name: str, job: JobRecord) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(job_out(job).model_dump()) + b"\n\n"


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "description": "progress events"}},
)
async def job_events(job_id: JobId, jobs: JobsDep) -> StreamingResponse:
    """Server-Sent Events: `progress` (the job) now and after each finished batch, then `end` once; then it closes."""
    await asyncio.to_thread(jobs.get, job_id)  # 404 before the stream starts
    loop = asyncio.get_running_loop()
    changes: asyncio.Queue[JobRecord] = asyncio.Queue()

    def listener(job: JobRecord) -> None:  # any thread
        loop.call_soon_threadsafe(changes.put_nowait, job)

    async def stream() -> AsyncIterator[bytes]:
        with jobs.listening(job_id, listener):  # left when the job ends or the client goes: nothing leaks
            job = await asyncio.to_thread(jobs.get, job_id)
            yield _event("progress", job)
            while not job.ended:
                try:
                    job = await asyncio.wait_for(changes.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _event("progress", job)
            yield _event("end", job)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get(
    "/jobs/{job_id}/heads",
    response_model=JobHeadsOut,
    response_model_exclude_unset=True,  # a head carries only the metrics the job computed
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
def job_heads(job_id: JobId, jobs: JobsDep) -> JobHeadsOut:
    """Every head's statistics over the finished texts (partial until the job is done; 409 before any)."""
    table = jobs.results.heads(jobs.get(job_id))
    heads = []
    for h in table.heads:
        found = {m: StatOut(**h[m]) for m in table.metrics}
        if "text_induction" in found:
            found["induction"] = found["text_induction"]  # the corpus contract's first name for it
        heads.append(HeadStatsOut(layer=h["layer"], head=h["head"], kv_group=h["kv_group"], **found))
    out = JobHeadsOut(
        n_texts=table.n_texts, partial=table.partial, metrics=table.metrics, reliability=table.reliability, heads=heads
    )
    return out


@router.get(
    "/jobs/{job_id}/heads/{layer}/{head}/examples",
    response_model=ExamplesOut,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
def job_examples(
    job_id: JobId,
    layer: Annotated[int, Path(ge=0, le=10_000)],
    head: Annotated[int, Path(ge=0, le=10_000)],
    jobs: JobsDep,
    svc: ServiceDep,
    metric: Annotated[str, Query(min_length=1, max_length=50)] = "text_induction",
    k: Annotated[int, Query(ge=1, le=100, description="texts; with deciles, texts per decile")] = 5,
    sample: Annotated[Literal["top", "deciles"], Query()] = "top",
    seed: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="the deciles' draw (default: the job's)")] = None,
) -> ExamplesOut:
    """The texts where this head scores highest on `metric` (or k drawn from each decile of its per-text scores),
    with where in each text it does it most."""
    job = jobs.get(job_id)
    tokenizer = svc.model.tokenizer
    texts = jobs.datasets.texts(job.dataset)

    def example(index: int, score: float, where: tuple[int, int] | None, decile: int | None = None) -> ExampleOut:
        return ExampleOut(**describe(tokenizer, texts[index], job.max_tokens, index, score, where, decile))

    if sample == "top":
        found = jobs.results.examples(job, metric, layer, head, k)
        return ExamplesOut(metric=metric, examples=[example(i, s, w) for i, s, w in found])
    seed = job.seed if seed is None else seed
    bounds, drawn = jobs.results.decile_examples(job, metric, layer, head, k, seed)
    return ExamplesOut(
        metric=metric,
        sample="deciles",
        examples=[example(i, s, w, d) for i, d, s, w in drawn],
        bounds=[None if math.isnan(b) else b for b in bounds],
        seed=seed,
    )


@router.get(
    "/jobs/{job_id}/heads/{layer}/{head}/qk_embedding",
    response_model=QKEmbeddingOut,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
async def job_qk_embedding(
    job_id: JobId,
    layer: Annotated[int, Path(ge=0, le=10_000)],
    head: Annotated[int, Path(ge=0, le=10_000)],
    request: Request,
    jobs: JobsDep,
    svc: ServiceDep,
    color: Annotated[Literal["kind", "position", "token"], Query(description="what the page colours by")] = "kind",
) -> QKEmbeddingOut:
    """The head's post-RoPE queries and keys at up to 10,000 sampled positions of the job's texts, in one 2-D
    PCA space after AttentionViz's normalisation (computed on the model worker in slices, then kept)."""
    job = await asyncio.to_thread(jobs.get, job_id)
    n_layers, n_heads, group = jobs.results.shape(job)
    checked_index("layer", "layer", layer, n_layers)
    checked_index("head", "head", head, n_heads)
    if job.model is not None and job.model != svc.model.name:
        raise Conflict(f"job {job_id} ran on {job.model}; this server serves {svc.model.name}")
    key = (job.id, job.done, layer, head)
    found = jobs.embeddings.get(key)
    if found is None:
        indices = sorted(await asyncio.to_thread(jobs.store.stored_texts, job.id))
        texts = await asyncio.to_thread(jobs.datasets.texts, job.dataset)
        steps = head_embedding_steps(
            svc.model, texts, indices, job.max_tokens, layer, head, job.seed, jobs.samples, (job.id, job.done, layer)
        )
        found = await svc.sliced("Q/K embedding", steps, request.is_disconnected)
        jobs.embeddings.put(key, found)
    e = found.embedding
    return QKEmbeddingOut(
        layer=layer,
        head=head,
        kv_head=head // group,
        color=color,
        n_texts=found.n_texts,
        positions_seen=found.seen,
        n_positions=len(found.points) // 2,
        max_positions=MAX_POSITIONS,
        seed=job.seed,
        scale=e.scale,
        key_shift=e.key_shift.tolist(),
        explained=e.explained.tolist(),
        points=[QKPoint(**p) for p in found.points],  # type: ignore[arg-type]
    )


@router.get("/jobs/{job_id}/similarity", response_model=JobSimilarityOut, responses={**ERRORS, **NOT_FOUND, **CONFLICT})
def job_similarity(job_id: JobId, jobs: JobsDep, metric: Annotated[SimilarityName, Query()] = "js") -> JobSimilarityOut:
    """The heads × heads similarity matrix averaged over the finished texts (layer order)."""
    n, heads, matrix = jobs.results.similarity(jobs.get(job_id), metric)
    return JobSimilarityOut(n_texts=n, heads=[HeadName(**h) for h in heads], matrix=matrix.tolist())


MEDIA = {"csv": "text/csv", "json": "application/json", "parquet": "application/vnd.apache.parquet"}


def _encode(rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(rows).encode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=["layer", "head", "kv_group", "metric", "mean", "std", "n", "ci_low", "ci_high"]
        )
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@router.get(
    "/jobs/{job_id}/export",
    response_class=Response,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT, 200: {"content": {m: {} for m in MEDIA.values()}}},
)
def export_job(
    job_id: JobId, jobs: JobsDep, format: Annotated[Literal["csv", "json", "parquet"], Query()] = "csv"
) -> Response:
    """Every head's statistics as a file: one row per head × metric (mean, std, n, CI)."""
    table = jobs.results.heads(jobs.get(job_id))
    body = _encode(export_rows(table), format)
    disposition = f'attachment; filename="{job_id}-heads.{format}"'
    return Response(body, media_type=MEDIA[format], headers={"Content-Disposition": disposition})


@router.get(
    "/jobs/{job_id}/atlas",
    response_class=Response,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT, 200: {"content": {"application/zip": {}}}},
)
async def job_atlas(job_id: JobId, request: Request, jobs: JobsDep, svc: ServiceDep) -> Response:
    """The finished job's static atlas (what `python -m app atlas` writes) as one zip: index.html, a page per head,
    their data and the view code; unzipped, it opens from disk with no server. Built on the model worker (the
    Q/K sample's forwards over the job's texts run in slices; a disconnected client stops it)."""
    job = await asyncio.to_thread(jobs.get, job_id)
    if job.state != "done":
        raise Conflict(f"job {job_id} is {job.state}; an atlas is made from a finished job")
    with tempfile.TemporaryDirectory(prefix="headscope-atlas-") as folder:
        out = FilePath(folder) / "atlas"
        steps = atlas.build_steps(svc.model, jobs.datasets, jobs.store, job.id, out)
        await svc.sliced("atlas", steps, request.is_disconnected)
        body = await asyncio.to_thread(atlas.zipped, out)
    disposition = f'attachment; filename="{job_id}-atlas.zip"'
    return Response(body, media_type="application/zip", headers={"Content-Disposition": disposition})
