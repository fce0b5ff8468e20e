"""The lecture's experiments: the pruning curve (importance vs random orders) and the head-count trade-off."""

from __future__ import annotations

import asyncio
from collections.abc import Generator

from fastapi import APIRouter, Request

from app.api.deps import ServiceDep, StoreDep, checked_ids
from app.api.lecture_schemas import (
    CurvePoint,
    HeadConfigOut,
    HeadTradeoffOut,
    PruneCurveIn,
    PruneCurveOut,
    RealConfigOut,
    ThresholdOut,
)
from app.api.schemas import ERRORS, NOT_FOUND, AttentionParams, Head
from app.errors import InvalidInput
from app.inspect.engine.runs import encode
from app.inspect.engine.steps import Progress
from app.inspect.intervene.pruning import Curve, dataset_curve, text_curve
from app.inspect.observe import tradeoff

router = APIRouter(prefix="/api", tags=["lecture"])
BAND = "min–max over the seeds"


def curve_out(curve: Curve, rise: float, n_tokens: int, dataset: str | None) -> PruneCurveOut:
    mean, low, high = curve.band
    random = curve.order == "random"
    points = [
        CurvePoint(
            n_pruned=n,
            loss=mean[i],
            loss_low=low[i] if random else None,
            loss_high=high[i] if random else None,
            losses=curve.losses[:, i].tolist(),
        )
        for i, n in enumerate(curve.n_pruned)
    ]
    return PruneCurveOut(
        order=curve.order,
        n_heads=curve.n_pruned[-1],
        points=points,
        band=BAND if random else None,
        rise=rise,
        thresholds=[ThresholdOut(n_pruned=t.n_pruned, loss=t.loss, exact=t.exact) for t in curve.thresholds],
        threshold_n_pruned=curve.mean_threshold,
        pruned_order=[[Head(layer=layer, head=head) for layer, head in order] for order in curve.orders],
        seeds=curve.seeds,
        dataset=dataset,
        n_texts=curve.n_texts,
        n_tokens=n_tokens,
        forwards=curve.forwards,
    )


@router.post("/prune_curve", response_model=PruneCurveOut, responses={**ERRORS, **NOT_FOUND})
async def prune_curve(body: PruneCurveIn, svc: ServiceDep, store: StoreDep, request: Request) -> PruneCurveOut:
    """Loss as heads are zero-ablated in one order (importance or random), on a text or a dataset.

    Runs in slices between other requests (a few rows per slice) and stops when the client disconnects.
    """
    if (body.text is None) == (body.dataset is None):
        raise InvalidInput("give `text` or `dataset` (one of them)")
    seeds = range(body.seed, body.seed + body.seeds)
    if body.text is not None:
        text = body.text
        ids = checked_ids(svc, text)
        if len(ids) < 2:
            raise InvalidInput("a pruning curve needs at least 2 tokens: the loss is over next-token predictions")

        def on_text() -> Generator[Progress, None, PruneCurveOut]:
            run = svc.run_for(text, ids)
            curve = yield from text_curve(svc.model, run, body.order, body.steps, seeds, body.rise, body.refine)
            return curve_out(curve, body.rise, len(ids), None)

        return await svc.sliced("pruning curve", on_text(), request.is_disconnected, n_tokens=len(ids))

    if body.refine:
        raise InvalidInput("refine bisects on one text; a dataset curve's thresholds are at the curve's resolution")
    dataset = body.dataset or ""
    limit = min(body.max_tokens, svc.max_tokens)
    _, texts = await asyncio.to_thread(store.page, dataset, 0, body.max_texts)  # 404 for an unknown id
    tokenizer = svc.model.tokenizer

    def tokenized() -> list[list[int]]:
        cut = [encode(tokenizer, t)[:limit] for t in texts]
        return [ids for ids in cut if len(ids) > 1]

    token_lists = await asyncio.to_thread(tokenized)
    if not token_lists:
        raise InvalidInput(f"dataset {dataset!r}: no text of its first {body.max_texts} has 2 tokens or more")
    n_tokens = sum(len(ids) for ids in token_lists)

    def on_dataset() -> Generator[Progress, None, PruneCurveOut]:
        curve = yield from dataset_curve(svc.model, token_lists, body.order, body.steps, seeds, body.rise)
        return curve_out(curve, body.rise, n_tokens, dataset)

    return await svc.sliced("pruning curve", on_dataset(), request.is_disconnected, n_tokens=n_tokens)


def _params(p: tradeoff.Projections) -> AttentionParams:
    return AttentionParams(q=p.q, k=p.k, v=p.v, o=p.o)


@router.get("/head_tradeoff", response_model=HeadTradeoffOut, responses=ERRORS)
def head_tradeoff(svc: ServiceDep) -> HeadTradeoffOut:
    """At the served model's width: projection parameters and KV-cache bytes per token for other numbers of query
    and KV heads (MHA, every GQA grouping, MQA), beside the model's own configuration counted from its weights."""
    loaded = svc.model
    layout, width = loaded.adapter.layout, loaded.dtype.itemsize
    bias = tradeoff.biases(loaded.adapter)
    counted = tradeoff.attention_params(loaded.adapter)
    own = tradeoff.config(layout, layout.n_heads, layout.n_kv_heads, layout.head_dim, bias, width)
    real = RealConfigOut(
        n_heads=layout.n_heads,
        n_kv_heads=layout.n_kv_heads,
        kind=own.kind,
        head_dim=layout.head_dim,
        params=_params(counted[0]),
        params_all_layers=sum(p.total for p in counted),
        kv_cache_bytes_per_token=own.kv_cache_bytes_per_token,
        closed_form=all(p == own.params for p in counted),
    )
    configs = [
        HeadConfigOut(
            n_heads=c.n_heads,
            n_kv_heads=c.n_kv_heads,
            kind=c.kind,
            head_dim=c.head_dim,
            params=_params(c.params),
            params_per_layer=c.params.total,
            kv_cache_bytes_per_token=c.kv_cache_bytes_per_token,
            real=(c.n_heads, c.n_kv_heads, c.head_dim) == (layout.n_heads, layout.n_kv_heads, layout.head_dim),
        )
        for c in tradeoff.head_tradeoff(layout, bias, width)
    ]
    return HeadTradeoffOut(
        d_model=layout.d_model,
        n_layers=layout.n_layers,
        dtype=str(loaded.dtype).removeprefix("torch."),
        bytes_per_value=width,
        min_head_dim=tradeoff.MIN_HEAD_DIM,
        biases=[name for name in ("q", "k", "v", "o") if getattr(bias, name)],
        real=real,
        configs=configs,
    )
