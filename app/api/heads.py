"""Head roles: entropy, confidence, previous-token, self, sink, duplicate and induction scores."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, HeadRoles, HeadsOut, TextIn
from app.inspect.observe.roles import head_stats

router = APIRouter(prefix="/api", tags=["heads"])


@router.post("/heads", response_model=HeadsOut, responses=ERRORS)
async def heads(body: TextIn, svc: ServiceDep) -> HeadsOut:
    """Role scores of every head on the text; `induction` comes from the model's own repeated-token probe."""
    ids = checked_ids(svc, body.text)

    def work() -> HeadsOut:
        loaded = svc.model
        layout = loaded.adapter.layout
        run = svc.run_for(body.text, ids)
        s = head_stats(run, layout)
        induction = svc.induction()
        rows = [
            HeadRoles(
                layer=ly,
                head=h,
                kv_group=layout.kv_head(h),
                entropy=float(s.entropy[ly, h]),
                entropy_ratio=float(s.entropy_ratio[ly, h]),
                confidence=float(s.confidence[ly, h]),
                previous_token=float(s.previous_token[ly, h]),
                self=float(s.self_attention[ly, h]),
                first_token=float(s.first_token[ly, h]),
                duplicate_token=None if s.duplicate_token is None else float(s.duplicate_token[ly, h]),
                induction=float(induction[ly, h]),
                text_induction=None if s.text_induction is None else float(s.text_induction[ly, h]),
            )
            for ly in range(layout.n_layers)
            for h in range(layout.n_heads)
        ]
        return HeadsOut(tokens=run.tokens, token_ids=run.token_ids, heads=rows)

    return await svc.call(work, n_tokens=len(ids))
