"""The one place that decides the error shape: {"error": str, "detail": ...}, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)


def error_body(code: str, detail: Any) -> dict[str, Any]:
    """The error shape itself. Every error response, from a router, a handler or the middleware, is built here."""
    return {"error": code, "detail": detail}


def error_response(
    status: int, code: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error as a response (also an ASGI app, so the middleware sends it the same way)."""
    return JSONResponse(error_body(code, detail), status_code=status, headers=headers)


RULES = """\
Every error is `{"error": code, "detail": ...}`, never a traceback; `detail` is a sentence in words (a field's
mistake reads `field: what is wrong`, several joined by `; `). One rule per kind of mistake:

- **Bodies are JSON** sent with `Content-Type: application/json` (file uploads: `multipart/form-data`). A body
  without that header, or with another type (curl's `-d` alone sends a form type), is 422 `invalid_request`
  saying so, whatever the body holds.
- **Text must hold a non-whitespace character.** Empty or whitespace-only `text` is 422 `invalid_request` on
  every endpoint, as the page refuses it.
- **Layers, heads and KV heads are checked against the served model** (`GET /api/model`), never against a
  fixed number: any index outside it, negative or huge alike, in `{layer, head}`, `layers`, `layer` or
  `kv_head`, is 422 `invalid_input` with a message naming the model's bounds.
- **/api/attention needs at least one head.** `heads` and `layers` both absent or both empty is 422
  `invalid_input`. (`ablate: []` is valid: the unchanged model.)
- 401 `unauthorized`: a missing or wrong API key (only when the server has one). 413 `body_too_large`: a body over
  the limit, however it is sent (with a Content-Length or chunked). 503 with `Retry-After`: busy, out of memory or
  not ready yet; 503 `load_failed`: the model failed to load (`/api/health` says so too).
"""


def _not_json(request: Request) -> str | None:
    """The request's content type when its body cannot be JSON by that type (None when it can)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json") or kind == "multipart/form-data":
        return None
    return kind or "no Content-Type"


# Pydantic's error types in words; the rest are its message with "Input should" made "must" (see _in_words).
WORDS = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request",
    "json_invalid": "is not valid JSON",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}
NO_WHITESPACE_ONLY = r"\S"  # the pattern every `text` field carries


def _in_words(error: Mapping[str, Any]) -> str:
    """One field error as a phrase ("must be a whole number"). Never the input: it may be huge or not JSON."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NO_WHITESPACE_ONLY:
        return "must hold a character other than whitespace"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind in WORDS:
        return WORDS[kind]
    msg = str(error.get("msg", ""))
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    for head in ("Input should", "String should", "List should", "Value should", "Dictionary should"):
        if msg.startswith(head):
            return "must" + msg[len(head) :]
    return msg[:1].lower() + msg[1:]


def _field_errors(exc: RequestValidationError) -> str:
    """Every field error of a request as one sentence: "field: what is wrong; other.field: …"."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        field = ".".join(loc[1:] if loc[:1] in (["body"], ["query"], ["path"], ["header"]) else loc) or "the body"
        parts.append(f"{field}: {_in_words(error)}")
    return "; ".join(dict.fromkeys(parts))  # a union type can report one mistake once per member


def install(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that turn every failure into the one error shape."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(retry_after_s)} if isinstance(exc, Unavailable) else None
        return error_response(exc.status, exc.code, exc.detail if exc.detail is not None else str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = _not_json(request)
        if kind is not None and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
            detail = f"the body must be JSON sent with 'Content-Type: application/json' (got {kind})"
            return error_response(422, "invalid_request", detail)
        return error_response(422, "invalid_request", _field_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": invalid input, so 422 like the rest
            return error_response(422, "invalid_request", "the body is not valid JSON (UTF-8)")
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")
