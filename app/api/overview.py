"""Everything the all-heads grid needs in one compact response: thumbnails, role scores, prediction."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.grid import overview_out
from app.api.schemas import ERRORS, OverviewIn, OverviewOut

router = APIRouter(prefix="/api", tags=["attention"])


@router.post("/overview", response_model=OverviewOut, responses=ERRORS)
async def overview(body: OverviewIn, svc: ServiceDep) -> OverviewOut:
    """Thumbnails of every head's map, every head's role scores, and the model's prediction, for one text."""
    ids = checked_ids(svc, body.text)

    def work() -> OverviewOut:
        return overview_out(svc, svc.run_for(body.text, ids), body.thumb, body.top_k)

    return await svc.call(work, n_tokens=len(ids))
