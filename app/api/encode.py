"""JSON encoding for large float payloads: finite numbers only, built row by row off the event loop.

Attention maps go out as nested lists (the default) or, compactly, as base64 of little-endian float16
(`encoding: "f16"`): 2 bytes a weight before base64 instead of about 10 characters of JSON.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, Literal

import torch
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.errors import ServiceError


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


def f16_base64(matrix: torch.Tensor) -> bytes:
    """A 2-D tensor as the base64 of its little-endian float16 values, row-major (no quotes)."""
    if not bool(torch.isfinite(matrix).all()):
        raise NonFinite("an attention map holds a non-finite number")
    half = matrix.detach().to("cpu", torch.float16).contiguous().numpy()  # (T, K); weights ≤ 1 stay finite
    return base64.b64encode(half.astype("<f2", copy=False).tobytes())


Encoding = Literal["json", "f16"]


def head_map(layer: int, head: int, weights: torch.Tensor, encoding: Encoding) -> bytes:
    """One map: {layer, head, weights} or {layer, head, shape, weights_f16}."""
    if encoding == "json":
        return b'{"layer":%d,"head":%d,"weights":' % (layer, head) + rows_json(weights) + b"}"
    n_queries, n_keys = weights.shape
    return (
        b'{"layer":%d,"head":%d,"shape":[%d,%d],"weights_f16":"'
        % (
            layer,
            head,
            n_queries,
            n_keys,
        )
        + f16_base64(weights)
        + b'"}'
    )


def maps_json(head_maps: list[tuple[int, int, torch.Tensor]], encoding: Encoding = "json") -> bytes:
    """[{layer, head, weights}, …] with weights as rows, or the compact form of `head_map`."""
    return b"[" + b",".join(head_map(layer, head, w, encoding) for layer, head, w in head_maps) + b"]"


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
