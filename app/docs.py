"""/docs (Swagger UI) and /redoc, offline: their assets come from the installed `fastapi-offline` wheel.

FastAPI's own docs pages load Swagger UI from a CDN and start it with an inline script; the server's CSP
(script-src 'self') blocks both. These pages load the same libraries from this server and start them with
external scripts (static/docs/), so the CSP stays as strict as on every other page.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.errors import NotFound
from app.templating import templates

ASSETS = Path(fastapi_offline.__file__).parent / "static"
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
}
router = APIRouter(include_in_schema=False)


def _page(request: Request, title: str, root: str, bundle: str, init: str, css: str | None = None) -> HTMLResponse:
    context = {
        "title": title,
        "root": root,
        "bundle": f"/vendor/docs/{bundle}",
        "init": f"/static/docs/{init}",
        "css": css,
    }
    return templates.TemplateResponse(request, "docs.html", {**context, "openapi": request.app.openapi_url})


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: every operation, with its schema, and a form to try it."""
    return _page(request, "API", "swagger-ui", "swagger-ui-bundle.js", "swagger-init.js", "/vendor/docs/swagger-ui.css")


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the same OpenAPI description as one long reference page."""
    return _page(request, "API reference", "redoc", "redoc.standalone.js", "redoc-init.js")


@router.get("/vendor/docs/{name}")
def asset(name: str) -> FileResponse:
    """One of the docs' vendored files (a fixed list: the name never reaches the file system unchecked)."""
    if name not in MEDIA_TYPES:
        raise NotFound(f"no docs asset {name!r}")
    return FileResponse(ASSETS / name, media_type=MEDIA_TYPES[name], headers={"Cache-Control": "public, max-age=86400"})
