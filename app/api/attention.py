"""Attention maps of chosen heads, derived from the cached run of the text."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, check_map_budget, checked_heads, checked_ids, checked_layers
from app.api.schemas import AttentionIn, AttentionOut, Error, HeadMap
from app.service import InvalidInput

router = APIRouter(prefix="/api", tags=["attention"])


@router.post("/attention", response_model=AttentionOut, responses={422: {"model": Error}, 503: {"model": Error}})
async def attention(body: AttentionIn, svc: ServiceDep) -> AttentionOut:
    """Per-head attention maps (rows = queries, columns = keys) for `heads`, or every head of `layers`."""
    layout = svc.model.adapter.layout
    if body.heads is None and body.layers is None:
        raise InvalidInput("give `heads` (a list of {layer, head}) or `layers` (a list of layer indices)")
    heads = checked_heads(layout, body.heads or [], "heads")
    for layer in checked_layers(layout, body.layers or []):
        heads += [(layer, h) for h in range(layout.n_heads) if (layer, h) not in heads]
    ids = checked_ids(svc, body.text)
    check_map_budget(svc, len(heads), len(ids))

    def work() -> AttentionOut:
        run = svc.run_for(body.text)
        maps: list[HeadMap] = []
        for layer in dict.fromkeys(layer for layer, _ in heads):
            in_layer = [h for ly, h in heads if ly == layer]
            weights = run.maps(layer, in_layer, layout.group_size)  # (h, T, T)
            maps += [HeadMap(layer=layer, head=h, weights=w.tolist()) for h, w in zip(in_layer, weights, strict=True)]
        order = {head: i for i, head in enumerate(heads)}
        maps.sort(key=lambda m: order[(m.layer, m.head)])
        return AttentionOut(tokens=run.tokens, token_ids=run.token_ids, maps=maps)

    return await svc.call(work)
