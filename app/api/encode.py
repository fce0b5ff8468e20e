"""JSON encoding for large float payloads: finite numbers only, built row by row off the event loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.service import ServiceError


class NonFinite(ServiceError):
    status = 500
    code = "non_finite_result"


def dumps(obj: Any) -> bytes:
    """Compact JSON; NaN or ±Infinity is an error, never sent."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except ValueError as exc:
        raise NonFinite("the model produced a non-finite number (overflow in a low-precision dtype?)") from exc


class FiniteJSONResponse(JSONResponse):
    """The default response class: like JSONResponse, but compact and refusing non-finite numbers."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def rows_json(matrix: torch.Tensor) -> bytes:
    """A 2-D tensor as a JSON list of rows. Encoded row by row so other threads get the GIL in between."""
    if not bool(torch.isfinite(matrix).all()):
        raise NonFinite("an attention map holds a non-finite number")
    rows = matrix.detach().cpu().double()
    return b"[" + b",".join(dumps(row.tolist()) for row in rows) + b"]"


def maps_json(head_maps: list[tuple[int, int, torch.Tensor]]) -> bytes:
    """[{layer, head, weights}, …] with weights as rows."""
    parts = [b'{"layer":%d,"head":%d,"weights":' % (layer, head) + rows_json(w) + b"}" for layer, head, w in head_maps]
    return b"[" + b",".join(parts) + b"]"


STREAM_CHUNK = 1 << 20  # bytes per write: big bodies go out in pieces, so the event loop keeps answering


def json_response(fields: dict[str, Any], raw: dict[str, bytes]) -> Response:
    """A JSON object from plain `fields` plus already-encoded `raw` members; streamed when large."""
    parts = [dumps(fields)[:-1]]
    for key, value in raw.items():
        parts += [b",", dumps(key), b":", value]
    parts.append(b"}")
    size = sum(len(p) for p in parts)
    if size <= STREAM_CHUNK:
        return Response(b"".join(parts), media_type="application/json")

    def chunks() -> Iterator[bytes]:
        for part in parts:
            for start in range(0, len(part), STREAM_CHUNK):
                yield part[start : start + STREAM_CHUNK]

    return StreamingResponse(chunks(), media_type="application/json", headers={"Content-Length": str(size)})
