"""Everything the all-heads grid needs in one compact response: thumbnails, role scores, prediction."""

from __future__ import annotations

import base64

import torch
from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, OverviewIn, OverviewOut, PredictionOut, RoleGrid
from app.inspect.engine.runs import predict
from app.inspect.observe.roles import every_score, head_stats

router = APIRouter(prefix="/api", tags=["attention"])


def _grid(t: torch.Tensor) -> list[list[float]]:
    out: list[list[float]] = t.tolist()
    return out


@router.post("/overview", response_model=OverviewOut, responses=ERRORS)
async def overview(body: OverviewIn, svc: ServiceDep) -> OverviewOut:
    """Thumbnails of every head's map, every head's role scores, and the model's prediction, for one text."""
    ids = checked_ids(svc, body.text)

    def work() -> OverviewOut:
        loaded = svc.model
        layout = loaded.adapter.layout
        run = svc.run_for(body.text, ids)
        s = head_stats(run, layout, body.thumb)
        assert s.thumbnails is not None
        peak = s.thumbnails.amax(dim=(-1, -2)).clamp_min(1e-12)  # (L, H)
        scaled = (s.thumbnails / peak[..., None, None] * 255).round().clamp(0, 255).to(torch.uint8)
        scores = every_score(s, svc.probe_scores())
        pred = predict(loaded.adapter.lm_head(), run, body.top_k)
        return OverviewOut(
            tokens=run.tokens,
            token_ids=run.token_ids,
            n_layers=layout.n_layers,
            n_heads=layout.n_heads,
            thumb_size=int(s.thumbnails.shape[-1]),
            thumbnails=base64.b64encode(scaled.numpy().tobytes()).decode("ascii"),
            thumb_max=_grid(peak),
            stats=RoleGrid(**{name: None if g is None else _grid(g) for name, g in scores.items()}),
            prediction=PredictionOut.of(pred, loaded.tokenizer),
        )

    return await svc.call(work, n_tokens=len(ids))
