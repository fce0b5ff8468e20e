"""Head-similarity matrices: which heads attend alike."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids, checked_index, checked_layers
from app.api.schemas import ERRORS, SimilarityIn, SimilarityOut
from app.errors import InvalidInput
from app.inspect.observe.similarity import head_similarity

router = APIRouter(prefix="/api", tags=["heads"])


@router.post("/similarity", response_model=SimilarityOut, responses=ERRORS)
async def similarity(body: SimilarityIn, svc: ServiceDep) -> SimilarityOut:
    """Heads × heads: Jensen–Shannon divergence (nats, 0 = identical) or cosine similarity of their maps."""
    layout = svc.model.adapter.layout
    if body.kv_head is not None and body.layer is None:
        raise InvalidInput("kv_head needs layer: a KV group is the query heads of one layer sharing one KV head")
    layers = checked_layers(layout, [body.layer], "layer") if body.layer is not None else range(layout.n_layers)
    query_heads = list(range(layout.n_heads))
    if body.kv_head is not None:
        query_heads = layout.kv_groups()[checked_index("kv_head", "KV head", body.kv_head, layout.n_kv_heads)]
    heads = [(layer, h) for layer in layers for h in query_heads]
    ids = checked_ids(svc, body.text)

    def work() -> SimilarityOut:
        run = svc.run_for(body.text, ids)
        return SimilarityOut.of(head_similarity(run, layout, heads, body.metric, body.order), body.metric, body.order)

    return await svc.call(work, n_tokens=len(ids))
