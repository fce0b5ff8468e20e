"""create_app(): assembles settings, the model service, routers, pages and static files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from app import __version__, docs, web
from app.api import (
    ablate,
    attention,
    circuits,
    datasets,
    errors,
    generate,
    heads,
    importance,
    jobs,
    lecture,
    meta,
    overview,
    similarity,
    snapshot,
    tracing,
    weights,
)
from app.api.encode import FiniteJSONResponse
from app.config import Settings
from app.corpus.cluster import Cluster, ClusterConfig
from app.corpus.datasets import DatasetStore
from app.corpus.jobs import Jobs
from app.corpus.jobstore import JobStore
from app.inspect.model.loaded import Loaded
from app.middleware import Guard
from app.service import Service
from app.telemetry import RequestMetrics, Telemetry

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
GZIP_LEVEL = 5  # ≈ level 9's size on attention maps at a fraction of its time


def create_app(settings: Settings | None = None, loaded: Loaded | None = None) -> FastAPI:
    """The HeadScope ASGI app. The model loads in the background once the app starts (see /api/ready).

    Args:
        settings: configuration (default: from HEADSCOPE_* environment variables).
        loaded: an already loaded model (tests); skips loading.
    """
    settings = settings or Settings()
    telemetry = Telemetry()
    service = Service(settings, loaded, telemetry)
    store = DatasetStore(settings.data_dir, settings.max_dataset_texts)  # opens its file on first use
    cluster = None
    if settings.ray_address is not None:  # corpus jobs on Ray actors; ray is imported only then
        cluster = Cluster(
            ClusterConfig(
                settings.ray_address, settings.ray_workers, settings.ray_gpus_per_worker, settings.model, settings.dtype
            )
        )
    corpus_jobs = Jobs(service, store, JobStore(settings.data_dir), cluster=cluster)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await asyncio.to_thread(service.start)
            except Exception as exc:
                service.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("the model failed to load; /api/health and /api/ready now answer 503 load_failed")

        await asyncio.to_thread(corpus_jobs.recover)  # jobs a stopped server left running are now interrupted
        task = asyncio.create_task(start())
        if cluster is not None:  # jobs wait for the actors; requests never do
            app.state.cluster_start = asyncio.create_task(asyncio.to_thread(cluster.start))
        try:
            yield
        finally:
            await asyncio.to_thread(corpus_jobs.shutdown)  # running jobs: interrupted (finished batches are stored)
            if cluster is not None:
                await asyncio.to_thread(cluster.started.wait)
                await asyncio.to_thread(cluster.shutdown)
            await asyncio.to_thread(service.shutdown)  # sets stopping first: /api/ready turns 503 at once
            corpus_jobs.store.close()
            store.close()
            task.cancel()

    app = FastAPI(
        title="HeadScope",
        version=__version__,
        summary="See, compare and switch off the attention heads of a causal language model.",
        description=errors.RULES,
        docs_url=None,  # app.docs serves /docs and /redoc offline, under the CSP
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=FiniteJSONResponse,
    )
    app.state.service = service
    app.state.datasets = store
    app.state.jobs = corpus_jobs
    errors.install(app, settings.retry_after_s)
    for module in (
        meta,
        attention,
        overview,
        ablate,
        similarity,
        importance,
        heads,
        tracing,
        circuits,
        datasets,
        jobs,
        lecture,
        generate,
        snapshot,
        weights,
    ):
        app.include_router(module.router)
    app.include_router(web.router)
    app.include_router(docs.router)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(telemetry.render(), media_type=telemetry.content_type)

    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    # Inside the Guard (which reads request bodies and adds headers to whatever comes out of here): large
    # JSON (an attention map, an export) goes out gzipped to clients that accept it; SSE streams never are.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=GZIP_LEVEL)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(
        Guard,
        max_body_bytes=settings.max_body_bytes,
        api_key=api_key,
        upload_paths=("/api/datasets",),
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(RequestMetrics, telemetry=telemetry)  # outermost: counts 401/413 too
    return app
