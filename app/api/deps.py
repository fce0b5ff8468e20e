"""Request-side checks shared by routers: they run before anything is queued for the model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request

from app.api.schemas import HeadRef
from app.inspect.adapters import Layout
from app.inspect.runs import encode
from app.service import InvalidInput, Service


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


ServiceDep = Annotated[Service, Depends(service)]


def checked_ids(svc: Service, text: str) -> list[int]:
    """Tokenize and enforce max_tokens (422 naming both numbers)."""
    ids = encode(svc.model.tokenizer, text)
    if not ids:
        raise InvalidInput("text gives no tokens")
    limit = svc.max_tokens
    if len(ids) > limit:
        raise InvalidInput(
            f"text is {len(ids)} tokens; this server accepts at most {limit} "
            "(HEADSCOPE_MAX_TOKENS, capped by the model's max positions)"
        )
    return ids


def checked_heads(layout: Layout, heads: Iterable[HeadRef], field: str) -> list[tuple[int, int]]:
    """(layer, head) pairs, each in range, duplicates removed, order kept."""
    out: dict[tuple[int, int], None] = {}
    for ref in heads:
        if ref.layer >= layout.n_layers:
            raise InvalidInput(
                f"{field}: layer {ref.layer} out of range; the model has layers 0..{layout.n_layers - 1}"
            )
        if ref.head >= layout.n_heads:
            raise InvalidInput(f"{field}: head {ref.head} out of range; the model has heads 0..{layout.n_heads - 1}")
        out[(ref.layer, ref.head)] = None
    return list(out)


def checked_layers(layout: Layout, layers: Iterable[int], field: str = "layers") -> list[int]:
    out: dict[int, None] = {}
    for layer in layers:
        if not 0 <= layer < layout.n_layers:
            raise InvalidInput(f"{field}: layer {layer} out of range; the model has layers 0..{layout.n_layers - 1}")
        out[layer] = None
    return list(out)


def check_map_budget(svc: Service, n_maps: int, n_tokens: int) -> None:
    cells = n_maps * n_tokens * n_tokens
    if cells > svc.settings.max_map_cells:
        raise InvalidInput(
            f"{n_maps} maps of {n_tokens}×{n_tokens} is {cells} weights; one response carries at most "
            f"{svc.settings.max_map_cells}: ask for fewer heads per request"
        )
