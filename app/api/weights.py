"""Why a head attends: composition scores and one head's circuits from the weights, QK attribution on a text."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ServiceDep, checked_ids, checked_index, checked_position
from app.api.schemas import ERRORS, Head
from app.api.tracing_schemas import TokenRef
from app.api.weights_schemas import (
    CompositionOut,
    HeadCircuitOut,
    HeadScore,
    NodeValue,
    OutputToken,
    PositionalOut,
    QkAttributionIn,
    QkAttributionOut,
    RowKey,
    Term,
    TokenMapRow,
)
from app.errors import InvalidInput
from app.inspect.observe import composition, head_circuits, qk_attribution, qkv
from app.inspect.observe.composition import Kind
from app.service import Service

router = APIRouter(prefix="/api", tags=["why a head attends"])
REFUSED = (qkv.NotLinear, qk_attribution.NotReproduced)


def _ref(svc: Service, token_id: int) -> TokenRef:
    return TokenRef(token=svc.model.tokenizer.decode([token_id]), id=token_id)


@router.get("/composition", response_model=CompositionOut, responses=ERRORS)
async def composition_scores(svc: ServiceDep, kind: Annotated[Kind, Query()] = "k") -> CompositionOut:
    """Composition scores from the weights between every sender head and every later receiver head."""

    def work() -> CompositionOut:
        try:
            comp = composition.composition(svc.model.adapter, kind)
        except REFUSED as exc:
            raise InvalidInput(str(exc)) from exc
        heads = [Head(layer=layer, head=head) for layer, head in comp.heads]
        rows = [[None if math.isnan(v) else v for v in row] for row in comp.scores.tolist()]
        return CompositionOut(
            kind=kind,
            senders=heads,
            receivers=heads,
            scores=rows,
            baseline=comp.baseline,
            baseline_std=comp.baseline_std,
            note=comp.note,
        )

    return await svc.call(work)


@router.get("/head_circuits", response_model=HeadCircuitOut, responses=ERRORS)
async def head_circuit(
    svc: ServiceDep,
    layer: Annotated[int, Query(ge=-1_000_000, le=1_000_000)],
    head: Annotated[int, Query(ge=-1_000_000, le=1_000_000)],
    token_ids: Annotated[list[int] | None, Query(max_length=32, description="the token map's source tokens")] = None,
    top_k: Annotated[int, Query(ge=1, le=50)] = 5,
) -> HeadCircuitOut:
    """One head's QK and OV circuits from the weights: singular values, copying score, OV token map."""
    lay = svc.model.adapter.layout
    layer, head = checked_index("layer", "layer", layer, lay.n_layers), checked_index("head", "head", head, lay.n_heads)
    for t in token_ids or []:
        checked_index("token_ids", "token id", t, lay.vocab_size)

    def work() -> HeadCircuitOut:
        try:
            hc = head_circuits.head_circuit(svc.model, layer, head, token_ids, top_k)
        except REFUSED as exc:
            raise InvalidInput(str(exc)) from exc
        decode = svc.model.tokenizer.decode
        return HeadCircuitOut(
            layer=layer,
            head=head,
            kv_head=lay.kv_head(head),
            qk_singular_values=hc.qk_singular_values,
            ov_singular_values=hc.ov_singular_values,
            qk_effective_rank=hc.qk_effective_rank,
            ov_effective_rank=hc.ov_effective_rank,
            effective_rank_definition=head_circuits.EFFECTIVE_RANK_DEFINITION,
            copying_score=hc.copying_score,
            copying_definition=head_circuits.COPYING_DEFINITION,
            token_map=[
                TokenMapRow(
                    token=_ref(svc, row.token_id),
                    top=[
                        OutputToken(token=decode([i]), id=i, value=v)
                        for i, v in zip(row.top_ids, row.top_values, strict=True)
                    ],
                    self_rank=row.self_rank,
                )
                for row in hc.token_map
            ],
            positional=PositionalOut(**vars(hc.positional)),
            top_senders={
                kind: [HeadScore(layer=a, head=b, score=s) for a, b, s in found]
                for kind, found in hc.top_senders.items()
            },
            baseline=hc.baseline,
            qk_note=hc.qk_note,
        )

    return await svc.call(work)


@router.post("/qk_attribution", response_model=QkAttributionOut, responses=ERRORS)
async def qk_attribution_cell(body: QkAttributionIn, svc: ServiceDep) -> QkAttributionOut:
    """A head's pre-softmax score at (query_pos, key_pos) split exactly into query-node × key-node terms."""
    lay = svc.model.adapter.layout
    layer = checked_index("layer", "layer", body.layer, lay.n_layers)
    head = checked_index("head", "head", body.head, lay.n_heads)
    ids = checked_ids(svc, body.text)
    query_pos = checked_position(body.query_pos, len(ids), "query_pos")
    key_pos = None if body.key_pos is None else checked_position(body.key_pos, len(ids), "key_pos")
    if key_pos is not None and key_pos > query_pos:
        raise InvalidInput(f"key_pos {key_pos} is after query_pos {query_pos}: a causal head never reads it")

    def work() -> QkAttributionOut:
        loaded = svc.model
        run = svc.run_for(body.text, ids)
        key = key_pos
        if key is None:
            key = int(run.maps(layer, [head], lay.group_size, slice(query_pos, query_pos + 1))[0, 0].argmax())
        try:
            cell = qk_attribution.cell(loaded, run, layer, head, query_pos, key)
            row = qk_attribution.query_row(loaded, run, layer, head, query_pos, body.row_top) if body.row else None
        except REFUSED as exc:
            raise InvalidInput(str(exc)) from exc
        nodes, n = cell.nodes, len(cell.nodes)
        flat = cell.terms.flatten()
        order = flat.abs().argsort(descending=True)[: body.top].tolist()
        cap = cell.softcap
        return QkAttributionOut(
            tokens=run.tokens,
            token_ids=run.token_ids,
            layer=layer,
            head=head,
            kv_head=lay.kv_head(head),
            query_pos=query_pos,
            key_pos=key,
            score=cell.score,
            total=cell.total,
            terms=[Term(query_node=nodes[i // n], key_node=nodes[i % n], value=float(flat[i])) for i in order],
            query_sums=[NodeValue(node=a, value=v) for a, v in zip(nodes, cell.terms.sum(1).tolist(), strict=True)],
            key_sums=[NodeValue(node=a, value=v) for a, v in zip(nodes, cell.terms.sum(0).tolist(), strict=True)],
            weight=cell.weight,
            masked=cell.masked,
            softcap=cap,
            capped_score=cell.score if cap is None else cap * math.tanh(cell.score / cap),
            position_bias=cell.position_bias,
            rope=cell.rope,
            row=None if row is None else _row(row, body.row_top),
        )

    return await svc.call(work, n_tokens=len(ids))


def _row(row: qk_attribution.QueryRow, k: int) -> list[RowKey]:
    nodes = row.nodes

    def largest(sums: list[float]) -> list[NodeValue]:
        order = sorted(range(len(sums)), key=lambda i: -abs(sums[i]))[:k]
        return [NodeValue(node=nodes[i], value=sums[i]) for i in order]

    q_sums, k_sums = row.query_sums.T.tolist(), row.key_sums.T.tolist()  # (keys, n_nodes)
    return [
        RowKey(
            key_pos=j,
            score=float(row.scores[j]),
            weight=float(row.weights[j]),
            masked=bool(row.masked[j]),
            position_bias=None if row.position_bias is None else float(row.position_bias[j]),
            terms=[Term(query_node=nodes[a], key_node=nodes[b], value=v) for a, b, v in row.top[j]],
            query_nodes=largest(q_sums[j]),
            key_nodes=largest(k_sums[j]),
        )
        for j in range(len(row.top))
    ]
