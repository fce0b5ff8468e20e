"""Live head masking: switch heads off and compare predictions with the cached baseline."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import ServiceDep, check_map_budget, checked_heads, checked_ids
from app.api.encode import json_response, maps_json
from app.api.schemas import ERRORS, AblateIn, AblateOut
from app.inspect.intervene.ablation import ablate as run_ablation

router = APIRouter(prefix="/api", tags=["ablation"])


@router.post("/ablate", response_model=AblateOut, responses=ERRORS)
async def ablate(body: AblateIn, svc: ServiceDep) -> Response:
    """Switch heads off (zero or mean) and compare next-token predictions with the unablated model."""
    layout = svc.model.adapter.layout
    heads = checked_heads(layout, body.ablate, "ablate")
    map_heads = checked_heads(layout, body.maps, "maps")
    ids = checked_ids(svc, body.text)
    check_map_budget(svc, len(map_heads), len(ids))

    def work() -> Response:
        loaded = svc.model
        run = svc.run_for(body.text, ids)
        cmp = run_ablation(loaded, run, heads, body.mode, body.top_k, map_heads)
        out = AblateOut.of(cmp, run, loaded.tokenizer)
        maps = maps_json([(ly, h, w) for (ly, h), w in cmp.maps.items()], body.encoding)
        return json_response(out.model_dump(exclude={"maps"}), {"maps": maps})

    return await svc.call(work, n_tokens=len(ids))
