"""HTML pages (Jinja2) and the vendored plotly.js, served from the installed `plotly` package."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.templating import PLOTLY_JS, templates

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    """The single-page instrument."""
    return templates.TemplateResponse(request, "index.html", {"page": "heads"})


@router.get("/trace", response_class=HTMLResponse)
def trace(request: Request) -> HTMLResponse:
    """Causal tracing: activation patching, direct logit attribution, logit lens, token view."""
    return templates.TemplateResponse(request, "trace.html", {"page": "trace"})


@router.get("/circuit", response_class=HTMLResponse)
def circuit(request: Request) -> HTMLResponse:
    """The circuit view: edge attribution between heads and MLPs, with exact path patching of one edge."""
    return templates.TemplateResponse(request, "circuit.html", {"page": "circuit"})


@router.get("/corpus", response_class=HTMLResponse)
def corpus(request: Request) -> HTMLResponse:
    """Corpus mode: datasets, jobs and dataset-level head statistics."""
    return templates.TemplateResponse(request, "corpus.html", {"page": "corpus"})


@router.get("/lecture", response_class=HTMLResponse)
def lecture(request: Request) -> HTMLResponse:
    """The lecture's experiments: the pruning curve and the head-count trade-off."""
    return templates.TemplateResponse(request, "lecture.html", {"page": "lecture"})


@router.get("/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js from the installed Python package: no CDN, works offline."""
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})
