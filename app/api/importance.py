"""Head importance: Michel et al. gradient scores or the exact single-head ablation sweep."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, ImportanceIn, ImportanceOut
from app.inspect.importance import ablation_sweep, gradient_importance, normalise_per_layer
from app.service import InvalidInput

router = APIRouter(prefix="/api", tags=["heads"])


@router.post("/importance", response_model=ImportanceOut, responses=ERRORS)
async def importance(body: ImportanceIn, svc: ServiceDep) -> ImportanceOut:
    """Which heads matter for predicting this text (n_layers × n_heads scores)."""
    ids = checked_ids(svc, body.text)
    if len(ids) < 2:
        raise InvalidInput("importance needs at least 2 tokens: the loss is over next-token predictions")

    def work() -> ImportanceOut:
        loaded = svc.model
        if body.method == "gradient":
            scores = gradient_importance(loaded, ids)
            return ImportanceOut(
                method="gradient", scores=scores.tolist(), normalized=normalise_per_layer(scores).tolist()
            )
        sweep = ablation_sweep(loaded, svc.run_for(body.text, ids))
        return ImportanceOut(method="ablation", scores=sweep.delta_loss.tolist(), kl_last=sweep.kl_last.tolist())

    return await svc.call(work, n_tokens=len(ids))
