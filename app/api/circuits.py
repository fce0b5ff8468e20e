"""Circuits: edge attribution (EAP, EAP-IG) on one prompt pair or over a set of pairs (the mean with a bootstrap
CI over pairs), and exact path patching of chosen edges."""

from __future__ import annotations

from collections.abc import Generator

from fastapi import APIRouter, Request

from app.api.circuit_schemas import (
    CircuitIn,
    CircuitOut,
    CircuitPairsIn,
    CircuitPairsOut,
    Cost,
    EdgeOut,
    FaithPoint,
    MetricPair,
    NodeScore,
    PairOut,
    PairSetOut,
    PairSetsOut,
    PathPatchIn,
    PathPatchOut,
    PositionEdge,
    PromptPairIn,
    SetEdgeOut,
    SetMetric,
    SetNodeScore,
    SetPairOut,
    SetStat,
)
from app.api.deps import ServiceDep, check_traceable, checked_ids, checked_position, checked_token
from app.api.schemas import ERRORS
from app.api.tracing_schemas import PairIn, TokenRef
from app.corpus import pairs as pair_sets
from app.errors import InvalidInput
from app.inspect.engine.nodes import Graph, NotAnEdge, UnknownNode
from app.inspect.engine.runs import Run
from app.inspect.engine.steps import Progress
from app.inspect.intervene import circuits, path_patching
from app.inspect.intervene.circuits import Pair
from app.service import Service

router = APIRouter(prefix="/api", tags=["circuits"])
MAX_DIFF_BYTES = 3 << 29  # the senders' differences, (senders × tokens × d_model) float32, held during attribution
SEQUENTIAL = "sequential blocks: each MLP reads its own layer's heads as well as every earlier block's output"
PARALLEL = "parallel blocks: attention and MLP read the same block input, so an MLP does not read its own layer's heads"


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


def check_exact(svc: Service) -> None:
    """422 when circuits are not exact on the served model (model thread: the check may run a forward)."""
    gap = path_patching.check(svc.model)
    if gap is not None:
        raise InvalidInput(f"circuits are not available for this model: {gap}")


def runs_of(svc: Service, body: PairIn, pair: Pair) -> tuple[Run, Run]:
    """(clean, corrupted) runs, after checking circuits are exact on the model (model thread)."""
    check_exact(svc)
    return svc.run_for(body.clean, pair.clean), svc.run_for(body.corrupted, pair.corrupted)


def token_ref(svc: Service, token_id: int) -> TokenRef:
    return TokenRef(token=svc.model.tokenizer.decode([token_id]), id=token_id)


def pair_out(svc: Service, body: PairIn, pair: Pair, clean: Run, corrupted: Run) -> PairOut:
    return PairOut(
        tokens_clean=clean.tokens,
        tokens_corrupted=corrupted.tokens,
        token_ids_clean=clean.token_ids,
        token_ids_corrupted=corrupted.token_ids,
        position=pair.position,
        direction=body.direction,
        answer=token_ref(svc, pair.answer),
        wrong=None if pair.wrong is None else token_ref(svc, pair.wrong),
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


# -- over a set of prompt pairs ----------------------------------------------------------------------


@router.get("/pair_sets", response_model=PairSetsOut, responses=ERRORS)
async def list_pair_sets(svc: ServiceDep) -> PairSetsOut:
    """The built-in prompt-pair sets for /api/circuit_pairs (their pairs under the served tokenizer), and the cap."""
    out = []
    for name, (description, _) in pair_sets.PAIR_SETS.items():
        found = pair_sets.pair_set(name, svc.model.tokenizer)
        items = [PromptPairIn(clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong) for p in found]
        out.append(PairSetOut(id=name, description=description, n_pairs=len(items), pairs=items))
    return PairSetsOut(max_pairs=pair_sets.MAX_PAIRS, sets=out)


def chosen_pairs(svc: Service, body: CircuitPairsIn) -> list[pair_sets.PromptPair]:
    """The request's pairs (a built-in set or its own); 422 for neither or both, none, or more than MAX_PAIRS."""
    if (body.pair_set is None) == (body.pairs is None):
        raise InvalidInput("give `pair_set` (a built-in set) or `pairs` (one of them)")
    if body.pair_set is not None:
        found = pair_sets.pair_set(body.pair_set, svc.model.tokenizer)
    else:
        found = [pair_sets.PromptPair(p.clean, p.corrupted, p.answer, p.wrong) for p in body.pairs or []]
    if not found:
        raise InvalidInput(f"pairs: the set is empty; give 1 to {pair_sets.MAX_PAIRS} pairs")
    if len(found) > pair_sets.MAX_PAIRS:
        raise InvalidInput(f"pairs: {len(found)} pairs; a request measures at most {pair_sets.MAX_PAIRS}")
    return found


def checked_pairs(svc: Service, body: CircuitPairsIn, found: list[pair_sets.PromptPair]) -> list[Pair]:
    """Each pair checked as /api/circuit checks one (422 naming the pair, 1-based); one metric for every pair."""
    out = []
    for i, p in enumerate(found, start=1):
        one = PairIn(clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong, position=body.position)
        try:
            pair = checked_pair(svc, one)
            checked_graph(svc, pair)
        except InvalidInput as exc:
            raise InvalidInput(f"pair {i}: {exc}") from exc
        if (pair.wrong is None) != (found[0].wrong is None):
            raise InvalidInput(
                f"pair {i}: {'no' if pair.wrong is None else 'a'} wrong token, unlike pair 1; every pair needs the "
                "same metric (logit(answer) − logit(wrong), or logit(answer) alone)"
            )
        out.append(pair)
    return out


def set_stat(spread: pair_sets.Spread, values: list[list[float]], j: int) -> SetStat:
    """Column j of a spread, with its per-pair values."""
    return SetStat(
        score=float(spread.mean[j]),
        ci_low=float(spread.ci_low[j]),
        ci_high=float(spread.ci_high[j]),
        n=spread.n,
        scores=[row[j] for row in values],
    )


@router.post("/circuit_pairs", response_model=CircuitPairsOut, responses=ERRORS)
async def circuit_pairs(body: CircuitPairsIn, svc: ServiceDep, request: Request) -> CircuitPairsOut:
    """Edge attribution over a set of prompt pairs: each edge's and node's mean score with a bootstrap CI over pairs.

    Runs one pair per slice between other requests and stops when the client disconnects.
    """
    check_traceable(svc)
    found = chosen_pairs(svc, body)
    checked = checked_pairs(svc, body, found)
    steps = body.steps if body.method == "eap-ig" else 1
    n_tokens = sum(2 * len(p.clean) for p in checked)

    def work() -> Generator[Progress, None, CircuitPairsOut]:
        check_exact(svc)
        result = yield from circuits.attribute_pairs(svc.model, checked, body.direction, steps)
        graph = result.graph
        ranked, values = result.ranked(body.top_n)
        edges, nodes = values.numpy(), result.node_scores.numpy()
        on_edges, on_nodes = pair_sets.spread(edges, body.seed), pair_sets.spread(nodes, body.seed)
        metrics = result.metrics.numpy()
        on_metric = pair_sets.spread(metrics, body.seed)
        edge_rows, node_rows, pair_rows = edges.tolist(), nodes.tolist(), metrics.tolist()
        return CircuitPairsOut(
            pair_set=body.pair_set,
            n_pairs=len(checked),
            pairs=[
                SetPairOut(
                    clean=text.clean,
                    corrupted=text.corrupted,
                    answer=token_ref(svc, pair.answer),
                    wrong=None if pair.wrong is None else token_ref(svc, pair.wrong),
                    n_tokens=len(pair.clean),
                    position=pair.position,
                    metric=MetricPair(clean=c, corrupted=k),
                )
                for text, pair, (c, k) in zip(found, checked, pair_rows, strict=True)
            ],
            method=body.method,
            steps=steps,
            direction=body.direction,
            seed=body.seed,
            n_boot=pair_sets.N_BOOT,
            metric=SetMetric(clean=set_stat(on_metric, pair_rows, 0), corrupted=set_stat(on_metric, pair_rows, 1)),
            node_scores=[
                SetNodeScore(id=node, **set_stat(on_nodes, node_rows, j).model_dump())
                for j, node in enumerate(graph.senders)
            ],
            edges=[
                SetEdgeOut(
                    **edge_out(graph, s, r, 0.0).model_dump(exclude={"score"}),
                    **set_stat(on_edges, edge_rows, j).model_dump(),
                )
                for j, (s, r) in enumerate(ranked)
            ],
            n_edges=graph.n_edges,
            parallel_blocks=any(graph.parallel),
            wiring=PARALLEL if any(graph.parallel) else SEQUENTIAL,
            cost=Cost(forwards=result.forwards, backwards=result.backwards, patched_runs=0),
        )

    return await svc.sliced("circuit over pairs", work(), request.is_disconnected, n_tokens=n_tokens)
