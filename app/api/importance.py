"""Head importance: Michel et al. gradient scores or the exact single-head ablation sweep."""

from __future__ import annotations

from collections.abc import Generator

from fastapi import APIRouter, Request

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, ImportanceIn, ImportanceOut
from app.errors import InvalidInput
from app.inspect.engine.steps import Progress
from app.inspect.intervene.importance import gradient_importance, normalise_per_layer, sweep_slices

router = APIRouter(prefix="/api", tags=["heads"])


@router.post("/importance", response_model=ImportanceOut, responses=ERRORS)
async def importance(body: ImportanceIn, svc: ServiceDep, request: Request) -> ImportanceOut:
    """Which heads matter for predicting this text (n_layers × n_heads scores).

    The ablation sweep runs in slices between other requests and stops when the client disconnects.
    """
    ids = checked_ids(svc, body.text)
    if len(ids) < 2:
        raise InvalidInput("importance needs at least 2 tokens: the loss is over next-token predictions")

    if body.method == "gradient":

        def gradient() -> ImportanceOut:
            scores = gradient_importance(svc.model, ids)
            return ImportanceOut(
                method="gradient", scores=scores.tolist(), normalized=normalise_per_layer(scores).tolist()
            )

        return await svc.call(gradient, n_tokens=len(ids))

    def sweep() -> Generator[Progress, None, ImportanceOut]:
        result = yield from sweep_slices(svc.model, svc.run_for(body.text, ids))
        return ImportanceOut(method="ablation", scores=result.delta_loss.tolist(), kl_last=result.kl_last.tolist())

    return await svc.sliced("ablation sweep", sweep(), request.is_disconnected, n_tokens=len(ids))
