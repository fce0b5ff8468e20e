"""Head metrics of one text: a field per registry metric (GET /api/roles lists them)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, HeadRoles, HeadsOut, TextIn
from app.inspect.observe.roles import every_score, head_stats

router = APIRouter(prefix="/api", tags=["heads"])


@router.post("/heads", response_model=HeadsOut, responses=ERRORS)
async def heads(body: TextIn, svc: ServiceDep) -> HeadsOut:
    """Every head metric on the text; `induction` comes from the model's own repeated-token probe."""
    ids = checked_ids(svc, body.text)

    def work() -> HeadsOut:
        layout = svc.model.adapter.layout
        run = svc.run_for(body.text, ids)
        scores = every_score(head_stats(run, layout), svc.probe_scores())
        grids = {name: None if grid is None else grid.tolist() for name, grid in scores.items()}
        rows = [
            HeadRoles(
                layer=ly,
                head=h,
                kv_group=layout.kv_head(h),
                **{name: None if grid is None else grid[ly][h] for name, grid in grids.items()},
            )
            for ly in range(layout.n_layers)
            for h in range(layout.n_heads)
        ]
        return HeadsOut(tokens=run.tokens, token_ids=run.token_ids, heads=rows)

    return await svc.call(work, n_tokens=len(ids))
