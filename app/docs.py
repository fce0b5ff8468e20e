"""/docs (Swagger UI) and /redoc, offline: their assets come from the installed `fastapi-offline` wheel.

FastAPI's own docs pages load Swagger UI from a CDN and start it with an inline script; the server's CSP
(script-src 'self') blocks both. These pages load the same libraries from this server and start them with
external scripts (static/docs/), so the CSP stays as strict as on every other page. ReDoc's sidebar always
shows a logo from its CDN: the bundle is served with that address pointed at HeadScope's own mark.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.errors import NotFound
from app.templating import templates

log = logging.getLogger(__name__)
ASSETS = Path(fastapi_offline.__file__).parent / "static"
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
}
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
router = APIRouter(include_in_schema=False)


@cache
def _redoc_bundle() -> bytes:
    """The ReDoc bundle with its footer logo on this server (the CSP would block the CDN's, a console error)."""
    bundle = (ASSETS / "redoc.standalone.js").read_bytes()
    if REDOC_LOGO not in bundle:
        log.warning("the ReDoc bundle no longer names %s; its footer logo is served as it is", REDOC_LOGO.decode())
    return bundle.replace(REDOC_LOGO, b"/static/favicon.svg")  # HeadScope's own mark in its place


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
def asset(name: str) -> Response:
    """One of the docs' vendored files (a fixed list: the name never reaches the file system unchecked)."""
    if name not in MEDIA_TYPES:
        raise NotFound(f"no docs asset {name!r}")
    headers = {"Cache-Control": "public, max-age=86400"}
    if name == "redoc.standalone.js":
        return Response(_redoc_bundle(), media_type=MEDIA_TYPES[name], headers=headers)
    return FileResponse(ASSETS / name, media_type=MEDIA_TYPES[name], headers=headers)
