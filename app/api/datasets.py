"""Corpus datasets: upload, list, show and delete stored texts (built-in sets are read-only)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from app.api.corpus_schemas import (
    DatasetDetail,
    DatasetIn,
    DatasetList,
    DatasetOut,
    IndexedText,
    TextsPage,
    upload_body,
)
from app.api.deps import JobsDep, ServiceDep, StoreDep
from app.api.schemas import ERRORS, NOT_FOUND, Error
from app.corpus import upload
from app.corpus.datasets import DatasetInfo, DatasetStore, checked
from app.errors import InvalidInput, NotReady
from app.service import Service

router = APIRouter(prefix="/api", tags=["datasets"])
SAMPLE = 5
counter = upload.TokenCounter()


@router.post("/datasets", status_code=201, response_model=DatasetOut, responses=ERRORS, openapi_extra=upload_body())
async def create_dataset(request: Request, svc: ServiceDep, datasets: StoreDep) -> DatasetOut:
    """Store a dataset: JSON {name, texts}, or a multipart .jsonl / .txt file (and an optional name)."""
    tokenizer = svc.model.tokenizer  # 503 while the model loads: n_tokens needs it
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        name, filename, data = await _read_form(request)
        texts = await asyncio.to_thread(upload.read_file, filename, data)
    elif media in ("", "application/json") or media.endswith("+json"):
        name, texts = await asyncio.to_thread(_read_json, await request.body())  # up to 20 MB of JSON
    else:
        raise InvalidInput(f"content type {media!r}: send application/json {{name, texts}} or multipart/form-data")

    def store_it() -> DatasetInfo:  # counting and inserting 10,000 texts: CPU work, off the event loop
        checked(name, texts, datasets.max_texts)
        return datasets.create(name, texts, counter.count(tokenizer, texts))

    return _out(await asyncio.to_thread(store_it))


@router.get("/datasets", response_model=DatasetList, responses=ERRORS)
def list_datasets(svc: ServiceDep, datasets: StoreDep) -> DatasetList:
    """Every dataset: the built-in sets first, then uploads, oldest first."""
    _count_builtins(svc, datasets)
    return DatasetList(datasets=[_out(info) for info in datasets.list()])


@router.get("/datasets/{dataset_id}", response_model=DatasetDetail, responses={**ERRORS, **NOT_FOUND})
def get_dataset(dataset_id: str, svc: ServiceDep, datasets: StoreDep) -> DatasetDetail:
    """One dataset and its first few texts."""
    if datasets.get(dataset_id).builtin:  # 404 first for an unknown id
        _count_builtins(svc, datasets, only=dataset_id)
    _, sample = datasets.page(dataset_id, 0, SAMPLE)
    return DatasetDetail(**_out(datasets.get(dataset_id)).model_dump(), sample=sample)


@router.get("/datasets/{dataset_id}/texts", response_model=TextsPage, responses={**ERRORS, **NOT_FOUND})
def dataset_texts(
    dataset_id: str,
    datasets: StoreDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> TextsPage:
    """A page of a dataset's texts, in order."""
    total, texts = datasets.page(dataset_id, offset, limit)
    return TextsPage(total=total, texts=[IndexedText(index=offset + i, text=t) for i, t in enumerate(texts)])


@router.delete(
    "/datasets/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses={
        **ERRORS,
        **NOT_FOUND,
        409: {"model": Error, "description": "a built-in set, or one a queued or running job reads"},
    },
)
def delete_dataset(dataset_id: str, jobs: JobsDep) -> Response:
    """Delete an uploaded dataset and its texts (not while a queued or running job reads it)."""
    jobs.delete_dataset(dataset_id)
    return Response(status_code=204)


def _out(info: DatasetInfo) -> DatasetOut:
    return DatasetOut(
        id=info.id,
        name=info.name,
        n_texts=info.n_texts,
        n_tokens=info.n_tokens,
        builtin=info.builtin,
        created=info.created,
    )


def _read_json(body: bytes) -> tuple[str, list[str]]:
    """Validated like any JSON body: field errors come back as 422 invalid_request."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        payload = DatasetIn.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False, include_url=False)]
        ) from None
    return payload.name, payload.texts


async def _read_form(request: Request) -> tuple[str, str, bytes]:
    """(name, file name, file bytes) of a multipart upload; the name defaults to the file's name."""
    try:
        async with request.form(max_files=1, max_fields=4) as form:
            file, name = form.get("file"), form.get("name")
            if not isinstance(file, UploadFile):
                raise InvalidInput("a multipart upload needs a 'file' field holding a .jsonl or .txt file")
            data = await file.read()
            filename = upload.file_name(file.filename or "")
    except HTTPException as exc:  # Starlette's 400 for a malformed body or too many parts
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from None
    return (name if isinstance(name, str) and name.strip() else filename), filename, data


def _count_builtins(svc: Service, datasets: DatasetStore, only: str | None = None) -> None:
    """Count built-in sets' tokens once the model is ready (once per process; about 1,000 short texts)."""
    if not svc.ready:
        return  # n_tokens stays null until then
    for info in datasets.list():
        if info.builtin and info.n_tokens is None and only in (None, info.id):
            try:
                tokenizer = svc.model.tokenizer
            except NotReady:  # shutting down
                return
            datasets.set_builtin_tokens(info.id, counter.count(tokenizer, datasets.texts(info.id)))
