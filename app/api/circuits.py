"""Circuits on one prompt pair: edge attribution (EAP, EAP-IG) and exact path patching of chosen edges."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter

from app.api.circuit_schemas import (
    CircuitIn,
    CircuitOut,
    Cost,
    EdgeOut,
    FaithPoint,
    MetricPair,
    NodeScore,
    PairOut,
    PathPatchIn,
    PathPatchOut,
    PositionEdge,
)
from app.api.deps import ServiceDep, check_traceable, checked_ids, checked_position, checked_token
from app.api.schemas import ERRORS
from app.api.tracing_schemas import PairIn, TokenRef
from app.errors import InvalidInput
from app.inspect.engine.nodes import Graph, NotAnEdge, UnknownNode
from app.inspect.engine.runs import Run
from app.inspect.intervene import circuits, path_patching
from app.service import Service

router = APIRouter(prefix="/api", tags=["circuits"])
MAX_DIFF_BYTES = 3 << 29  # the senders' differences, (senders × tokens × d_model) float32, held during attribution
SEQUENTIAL = "sequential blocks: each MLP reads its own layer's heads as well as every earlier block's output"
PARALLEL = "parallel blocks: attention and MLP read the same block input, so an MLP does not read its own layer's heads"


@dataclass(frozen=True)
class Pair:
    """A checked prompt pair: token ids, the position read, the answer and wrong token ids."""

    clean: list[int]
    corrupted: list[int]
    position: int
    answer: int
    wrong: int | None


def checked_pair(svc: Service, body: PairIn) -> Pair:
    """422 for a missing or multi-token answer, answer = wrong, unequal token counts or a position out of range."""
    answer = checked_token(svc, body.answer, body.answer_id, "answer")
    if answer is None:
        raise InvalidInput("give `answer` (a one-token string) or `answer_id`")
    wrong = checked_token(svc, body.wrong, body.wrong_id, "wrong")
    if answer == wrong:
        raise InvalidInput("answer and wrong are the same token; the logit difference would always be 0")
    clean, corrupted = checked_ids(svc, body.clean), checked_ids(svc, body.corrupted)
    if len(clean) != len(corrupted):
        raise InvalidInput(
            f"clean is {len(clean)} tokens and corrupted is {len(corrupted)}; they must have the same number"
        )
    return Pair(clean, corrupted, checked_position(body.position, len(clean)), answer, wrong)


def checked_graph(svc: Service, pair: Pair) -> Graph:
    """The served model's graph; 422 when its senders' differences over the prompt would not fit."""
    graph = Graph.of(svc.model.adapter)
    need = len(graph.senders) * (pair.position + 1) * svc.model.adapter.layout.d_model * 4
    if need > MAX_DIFF_BYTES:
        most = MAX_DIFF_BYTES // (len(graph.senders) * svc.model.adapter.layout.d_model * 4)
        raise InvalidInput(
            f"circuits over {pair.position + 1} tokens would hold {need / 1e9:.1f} GB of sender differences; "
            f"read a position among the first {most} tokens"
        )
    return graph


def runs_of(svc: Service, body: PairIn, pair: Pair) -> tuple[Run, Run]:
    """(clean, corrupted) runs, after checking circuits are exact on the model (model thread)."""
    gap = path_patching.check(svc.model)
    if gap is not None:
        raise InvalidInput(f"circuits are not available for this model: {gap}")
    return svc.run_for(body.clean, pair.clean), svc.run_for(body.corrupted, pair.corrupted)


def pair_out(svc: Service, body: PairIn, pair: Pair, clean: Run, corrupted: Run) -> PairOut:
    def ref(token_id: int) -> TokenRef:
        return TokenRef(token=svc.model.tokenizer.decode([token_id]), id=token_id)

    return PairOut(
        tokens_clean=clean.tokens,
        tokens_corrupted=corrupted.tokens,
        token_ids_clean=clean.token_ids,
        token_ids_corrupted=corrupted.token_ids,
        position=pair.position,
        direction=body.direction,
        answer=ref(pair.answer),
        wrong=None if pair.wrong is None else ref(pair.wrong),
    )


def edge_out(graph: Graph, sender: int, receiver: int, score: float) -> EdgeOut:
    rec = graph.receivers[receiver]
    return EdgeOut(source=graph.senders[sender], target=rec.target, channel=rec.channel, score=score)


def node_edges(graph: Graph, focus: circuits.Focus, n_tokens: int) -> list[PositionEdge]:
    """The focus node's edges, largest |score| first, each with its scores per position (0 after the last read)."""
    found = sorted(focus.edges(graph), key=lambda e: -abs(float(e[2].sum())))
    out = []
    for s, r, per in found:
        edge = edge_out(graph, s, r, float(per.sum()))
        scores = per.tolist() + [0.0] * (n_tokens - per.shape[0])
        out.append(PositionEdge(**edge.model_dump(), scores=scores))
    return out


@router.post("/circuit", response_model=CircuitOut, responses=ERRORS)
async def circuit(body: CircuitIn, svc: ServiceDep) -> CircuitOut:
    """Edge attribution (EAP or EAP-IG): every edge's estimated effect, node scores, and optionally the exact curve."""
    check_traceable(svc)
    pair = checked_pair(svc, body)
    graph = checked_graph(svc, pair)
    ns = circuits.log_grid(graph.n_edges) if body.faithfulness_n is None else body.faithfulness_n
    if any(not 1 <= n <= graph.n_edges for n in ns):
        raise InvalidInput(f"faithfulness_n: edge counts must be 1..{graph.n_edges} (the model's edges)")
    steps = body.steps if body.method == "eap-ig" else 1
    if body.node is not None:
        try:
            graph.roles(body.node)
        except UnknownNode as exc:
            raise InvalidInput(f"node: {exc}") from exc

    def work() -> CircuitOut:
        loaded = svc.model
        clean, corrupted = runs_of(svc, body, pair)
        this, other = path_patching.pair(body.direction, clean, corrupted)
        att = circuits.attribute(loaded, this, other, pair.position, pair.answer, pair.wrong, steps, body.node)
        faith = None
        if body.faithfulness:
            values = circuits.faithfulness(loaded, this, other, att, pair.position, pair.answer, pair.wrong, ns)
            faith = [
                FaithPoint(n_edges=n, metric=v, recovered=path_patching.recovered(v, att.metric_this, att.metric_other))
                for n, v in zip(ns, values.tolist(), strict=True)
            ]
        mine, theirs = att.metric_this, att.metric_other
        metric = MetricPair(clean=mine, corrupted=theirs) if this is clean else MetricPair(clean=theirs, corrupted=mine)
        return CircuitOut(
            **pair_out(svc, body, pair, clean, corrupted).model_dump(),
            method=body.method,
            steps=steps,
            metric=metric,
            node_scores=[NodeScore(id=s, score=float(v)) for s, v in zip(graph.senders, att.node_scores, strict=True)],
            edges=[edge_out(graph, s, r, score) for s, r, score in att.ranked(body.top_n)],
            n_edges=graph.n_edges,
            parallel_blocks=any(graph.parallel),
            wiring=PARALLEL if any(graph.parallel) else SEQUENTIAL,
            cost=Cost(forwards=att.forwards, backwards=att.backwards, patched_runs=len(ns) if faith else 0),
            faithfulness=faith,
            node_edges=None if att.focus is None else node_edges(graph, att.focus, len(pair.clean)),
        )

    return await svc.call(work, n_tokens=2 * len(pair.clean))


@router.post("/path_patch", response_model=PathPatchOut, responses=ERRORS)
async def path_patch(body: PathPatchIn, svc: ServiceDep) -> PathPatchOut:
    """Exact path patching: the metric with only the given edges carrying the other run's values."""
    check_traceable(svc)
    pair = checked_pair(svc, body)
    graph = checked_graph(svc, pair)
    if body.edges == "all":
        row = path_patching.all_edges(graph)
    else:
        try:
            row = tuple(dict.fromkeys(graph.edge(e.source, e.target, e.channel) for e in body.edges))
        except (UnknownNode, NotAnEdge) as exc:
            raise InvalidInput(f"edges: {exc}") from exc

    def work() -> PathPatchOut:
        loaded = svc.model
        clean, corrupted = runs_of(svc, body, pair)
        this, other = path_patching.pair(body.direction, clean, corrupted)
        p, answer, wrong = pair.position, pair.answer, pair.wrong
        [value] = path_patching.metrics(loaded, this, other, [row], p, answer, wrong).tolist()
        on_clean = float(path_patching.metric(loaded, clean.hidden[p : p + 1], answer, wrong)[0])
        on_corrupted = float(path_patching.metric(loaded, corrupted.hidden[p : p + 1], answer, wrong)[0])
        mine, theirs = (on_clean, on_corrupted) if this is clean else (on_corrupted, on_clean)
        return PathPatchOut(
            **pair_out(svc, body, pair, clean, corrupted).model_dump(),
            metric=value,
            metric_clean=on_clean,
            metric_corrupted=on_corrupted,
            recovered=path_patching.recovered(value, mine, theirs),
            n_edges=len(row),
        )

    return await svc.call(work, n_tokens=2 * len(pair.clean))
