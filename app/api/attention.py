"""Attention maps of chosen heads, derived from the cached run of the text."""

from __future__ import annotations

import torch
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import ServiceDep, check_map_budget, checked_heads, checked_ids, checked_layers
from app.api.encode import json_response, maps_json
from app.api.schemas import ERRORS, AttentionIn, AttentionOut
from app.errors import InvalidInput
from app.inspect.engine.runs import Run

router = APIRouter(prefix="/api", tags=["attention"])


@router.post("/attention", response_model=AttentionOut, responses=ERRORS)
async def attention(body: AttentionIn, svc: ServiceDep) -> Response:
    """Per-head attention maps (rows = queries, columns = keys) for `heads`, or every head of `layers`."""
    layout = svc.model.adapter.layout
    if not body.heads and not body.layers:  # absent or empty alike: a request must name at least one head
        raise InvalidInput("give `heads` (a list of {layer, head}) or `layers` (a list of layer indices)")
    heads = checked_heads(layout, body.heads or [], "heads")
    for layer in checked_layers(layout, body.layers or []):
        heads += [(layer, h) for h in range(layout.n_heads) if (layer, h) not in heads]
    ids = checked_ids(svc, body.text)
    check_map_budget(svc, len(heads), len(ids))

    def work(run: Run) -> Response:
        found: dict[tuple[int, int], torch.Tensor] = {}
        for layer in dict.fromkeys(layer for layer, _ in heads):
            in_layer = [h for ly, h in heads if ly == layer]
            weights = run.maps(layer, in_layer, layout.group_size)  # (h, T, T)
            found.update({(layer, h): w for h, w in zip(in_layer, weights, strict=True)})
        maps = maps_json([(layer, head, found[(layer, head)]) for layer, head in heads], body.encoding)
        return json_response({"tokens": run.tokens, "token_ids": run.token_ids}, {"maps": maps})

    return await svc.on_run(body.text, ids, work, n_tokens=len(ids))  # cached run: no wait behind a job
