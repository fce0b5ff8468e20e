"""Causal tracing on one prompt: activation patching, direct logit attribution, logit lens, the token view."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, check_traceable, checked_heads, checked_ids, checked_position, checked_token
from app.api.schemas import ERRORS, TopToken
from app.api.tracing_schemas import (
    AttentionFromIn,
    AttentionFromOut,
    DlaIn,
    DlaOut,
    LensGridOut,
    LensIn,
    LensLayerOut,
    LensOut,
    LensReadingOut,
    PatchIn,
    PatchOut,
    PositionScores,
    TokenRef,
)
from app.errors import InvalidInput
from app.inspect.intervene import patching
from app.inspect.observe import dla, lens, token_view
from app.service import Service

router = APIRouter(prefix="/api", tags=["tracing"])
MAX_POSITION_PATCH_CELLS = 1 << 19  # per-position patched runs × tokens: bounds by_position and residual work


def token_ref(svc: Service, token_id: int) -> TokenRef:
    return TokenRef(token=svc.model.tokenizer.decode([token_id]), id=token_id)


def required_token(svc: Service, text: str | None, token_id: int | None, field: str) -> int:
    found = checked_token(svc, text, token_id, field)
    if found is None:
        raise InvalidInput(f"give `{field}` (a one-token string) or `{field}_id`")
    return found


@router.post("/patch", response_model=PatchOut, responses=ERRORS)
async def patch(body: PatchIn, svc: ServiceDep) -> PatchOut:
    """Activation patching: how much each head's output (and optionally each position) carries the answer."""
    check_traceable(svc)
    layout = svc.model.adapter.layout
    answer = required_token(svc, body.answer, body.answer_id, "answer")
    wrong = required_token(svc, body.wrong, body.wrong_id, "wrong")
    if answer == wrong:
        raise InvalidInput("answer and wrong are the same token; the logit difference would always be 0")
    by_position = checked_heads(layout, body.by_position, "by_position")
    ids_clean, ids_corrupted = checked_ids(svc, body.clean), checked_ids(svc, body.corrupted)
    if len(ids_clean) != len(ids_corrupted):
        raise InvalidInput(
            f"clean is {len(ids_clean)} tokens and corrupted is {len(ids_corrupted)}; they must have the same number"
        )
    n = len(ids_clean)
    position = checked_position(body.position, n)
    per_position = (len(by_position) + (layout.n_layers if body.residual else 0)) * n
    if per_position * n > MAX_POSITION_PATCH_CELLS:
        raise InvalidInput(
            f"{per_position} per-position patched runs of {n} tokens is too much work for one request "
            f"(at most {MAX_POSITION_PATCH_CELLS} run × token cells): use a shorter prompt or fewer heads"
        )

    def work() -> PatchOut:
        loaded = svc.model
        clean, corrupted = svc.run_for(body.clean, ids_clean), svc.run_for(body.corrupted, ids_corrupted)
        try:
            res = patching.patch(
                loaded, clean, corrupted, position, answer, wrong, body.direction, by_position, body.residual
            )
        except patching.NothingToRecover as exc:
            raise InvalidInput(str(exc)) from exc
        return PatchOut(
            tokens_clean=clean.tokens,
            tokens_corrupted=corrupted.tokens,
            token_ids_clean=clean.token_ids,
            token_ids_corrupted=corrupted.token_ids,
            position=position,
            direction=body.direction,
            answer=token_ref(svc, answer),
            wrong=token_ref(svc, wrong),
            clean_logit_diff=res.clean_diff,
            corrupted_logit_diff=res.corrupted_diff,
            scores=res.scores.tolist(),
            position_scores=[
                PositionScores(layer=layer, head=head, scores=s.tolist())
                for (layer, head), s in res.position_scores.items()
            ],
            residual_scores=None if res.residual_scores is None else res.residual_scores.tolist(),
        )

    return await svc.call(work, n_tokens=2 * n)


@router.post("/dla", response_model=DlaOut, responses=ERRORS)
async def direct_logit_attribution(body: DlaIn, svc: ServiceDep) -> DlaOut:
    """Direct logit attribution: each head's, MLP's and the embeddings' share of a logit at a position."""
    check_traceable(svc, dla=True)
    target = checked_token(svc, body.target, body.target_id, "target")
    contrast = checked_token(svc, body.contrast, body.contrast_id, "contrast")
    ids = checked_ids(svc, body.text)
    position = checked_position(body.position, len(ids))

    def work() -> DlaOut:
        loaded = svc.model
        run = svc.run_for(body.text, ids)
        tgt = target if target is not None else int(lens.final_logits(loaded, run, position).argmax())
        res = dla.attribute(loaded, run, position, tgt, contrast)
        return DlaOut(
            tokens=run.tokens,
            token_ids=run.token_ids,
            position=position,
            target=token_ref(svc, tgt),
            contrast=None if contrast is None else token_ref(svc, contrast),
            logit=res.logit,
            heads=res.heads.tolist(),
            mlp=res.mlp.tolist(),
            embed=res.embed,
            other=res.other,
            model_logit=res.model_logit,
            final_softcap=res.final_softcap,
        )

    return await svc.call(work, n_tokens=len(ids))


@router.post("/logit_lens", response_model=LensOut, responses=ERRORS)
async def logit_lens(body: LensIn, svc: ServiceDep) -> LensOut:
    """Logit lens: each block's residual stream at a position through the final norm and the LM head."""
    check_traceable(svc)
    target = checked_token(svc, body.target, body.target_id, "target")
    ids = checked_ids(svc, body.text)
    position = checked_position(body.position, len(ids))

    def work() -> LensOut:
        loaded = svc.model
        decode = loaded.tokenizer.decode
        run = svc.run_for(body.text, ids)
        tgt = target if target is not None else int(lens.final_logits(loaded, run, position).argmax())

        def reading(r: lens.LensLayer) -> LensReadingOut:
            top = [TopToken(token=decode([i]), id=i, prob=p) for i, p in zip(r.top_ids, r.top_probs, strict=True)]
            rank, logit = r.target_rank, r.target_logit
            return LensReadingOut(top_k=top, target_prob=r.target_prob, target_rank=rank, target_logit=logit)

        blocks = lens.lens(loaded, run, position, tgt, body.top_k)
        layers = [LensLayerOut(layer=layer, **dict(reading(r))) for layer, r in enumerate(blocks)]
        embed = reading(lens.embeddings_lens(loaded, run, position, tgt, body.top_k))
        grid: LensGridOut | None = None
        if body.grid:
            g = lens.grid(loaded, run)
            top_ids: list[list[int]] = g.top_ids.tolist()
            names: dict[int, str] = {i: str(decode([i])) for i in set(g.top_ids.flatten().tolist())}
            tokens = [[names[i] for i in row] for row in top_ids]
            grid = LensGridOut(top_ids=top_ids, top_tokens=tokens, top_probs=g.top_probs.tolist())
        return LensOut(
            tokens=run.tokens,
            token_ids=run.token_ids,
            position=position,
            target=token_ref(svc, tgt),
            layers=layers,
            embed=embed,
            grid=grid,
        )

    return await svc.call(work, n_tokens=len(ids))


@router.post("/attention_from", response_model=AttentionFromOut, responses=ERRORS)
async def attention_from(body: AttentionFromIn, svc: ServiceDep) -> AttentionFromOut:
    """Every head's attention row from one query position (the token view), from the cached run."""
    ids = checked_ids(svc, body.text)
    query_pos = checked_position(body.query_pos, len(ids), "query_pos")

    def work() -> AttentionFromOut:
        run = svc.run_for(body.text, ids)
        weights = token_view.attention_from(run, svc.model.adapter.layout, query_pos)
        return AttentionFromOut(
            tokens=run.tokens, token_ids=run.token_ids, query_pos=query_pos, weights=weights.tolist()
        )

    return await svc.call(work, n_tokens=len(ids))
