"""Edge attribution: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024) over every edge of the graph.

score(s → r, c) = Σ over positions of (out_s(other) − out_s(this)) · ∂metric/∂(input of r's channel c), the
gradient taken on this run (the run patched into). EAP-IG averages that gradient over `steps` forwards whose
block-0 input is this run's embeddings moved a fraction k/steps (k = 0..steps−1) towards the other's; one step
is EAP.

No tensor is ever per edge. One backward gives, per block, the gradient at each query/key/value projection's
output, at the MLP's input and at the final norm's input. A channel's input gradient is then its rows of the
projection applied to that gradient and taken back through the block's norm at the forward's input (the norm's
own backward, a vector-Jacobian product), so each channel gets the gradient of its own copy of the stream. Edges
into one block are scored at once against every earlier sender's difference: a matrix product over positions ×
d_model. A sender's node score is the sum of its outgoing edges, which is the attribution-patching estimate of
patching its output (its difference times the gradient at its output, by the chain rule).

Over a set of prompt pairs (`attribute_pairs`), each pair is attributed on its own, in turn, as slices of work;
the mean and its bootstrap CI over pairs are app.corpus.pairs's.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from app.inspect.engine import runs
from app.inspect.engine.hooks import (
    Edit,
    editing_block_inputs,
    editing_inputs,
    on_grad,
    watching_inputs,
    watching_outputs,
)
from app.inspect.engine.nodes import NODE_OUTPUTS, Graph, NodeOutputs, Reads, head_writes, node_outputs, projection_rows
from app.inspect.engine.rows import TOKEN_BUDGET
from app.inspect.engine.runs import Run
from app.inspect.engine.steps import Progress
from app.inspect.intervene import path_patching
from app.inspect.intervene.path_patching import Direction, cut, metric, wiring
from app.inspect.model.loaded import Loaded

SCORE_BYTES = 64 << 20  # senders' differences held at once while scoring (a chunk of positions)


@dataclass
class Attribution:
    """Every edge's score as (receiver channels, senders): [r, s] is edge s → r (0 where s does not precede r)."""

    graph: Graph
    scores: torch.Tensor  # (n_receivers, n_senders) float64
    metric_this: float
    metric_other: float
    forwards: int  # forwards run (the two runs' node outputs when not cached, and the gradient forwards)
    backwards: int

    @property
    def node_scores(self) -> torch.Tensor:
        """(n_senders,): each sender's outgoing edges summed."""
        return self.scores.sum(0)

    focus: Focus | None = None  # per position, the edges into and out of one node, when asked

    def ranked(self, top_n: int = 0) -> list[tuple[int, int, float]]:
        """(sender, receiver, score) of the top_n edges by |score| (0: every edge), largest first."""
        valid = torch.arange(self.scores.shape[1])[None, :] < torch.tensor(self.graph.prefix)[:, None]
        flat = self.scores.abs().masked_fill(~valid, -1).flatten()
        k = int(valid.sum()) if top_n <= 0 else min(top_n, int(valid.sum()))
        order = torch.topk(flat, k).indices.tolist()
        width = self.scores.shape[1]
        return [(i % width, i // width, float(self.scores.view(-1)[i])) for i in order]


@dataclass
class Focus:
    """Per-position scores of every edge out of and into one node (they sum over positions to its edges' scores)."""

    sender: int | None  # the node as a sender, if it is one
    receivers: list[int]  # its receiver channels
    outgoing: torch.Tensor  # (n_receivers, T): edge sender → r at each position (0 where it is not an edge)
    incoming: torch.Tensor  # (len(receivers), n_senders, T): edge s → receivers[i] at each position

    def edges(self, graph: Graph) -> list[tuple[int, int, torch.Tensor]]:
        """(sender, receiver, per-position scores (T,)) of every edge of the node."""
        out: list[tuple[int, int, torch.Tensor]] = []
        if self.sender is not None:
            out += [
                (self.sender, r, self.outgoing[r]) for r in range(len(graph.receivers)) if self.sender < graph.prefix[r]
            ]
        for i, r in enumerate(self.receivers):
            out += [(s, r, self.incoming[i, s]) for s in range(graph.prefix[r])]
        return out


def attribute(
    loaded: Loaded,
    this: Run,
    other: Run,
    position: int,
    answer: int,
    wrong: int | None,
    steps: int = 1,
    node: str | None = None,
) -> Attribution:
    """Score every edge: EAP with steps = 1, EAP-IG with more.

    Args:
        loaded: the model.
        this: the run patched into (gradients are taken on it); other: the run the values come from.
        position: the query position read, 0 ≤ position < n_tokens (later positions cannot matter).
        answer, wrong: the metric is logit[answer] − logit[wrong] (logit[answer] when wrong is None).
        steps: interpolation steps of the block-0 input from this run's towards the other's.
        node: a node id whose edges are also scored per position (Attribution.focus).

    Raises:
        UnknownNode: `node` is not in the graph.
    """
    graph, wires = Graph.of(loaded.adapter), wiring(loaded)
    n = position + 1
    forwards = int(NODE_OUTPUTS not in other.memo)
    theirs = cut(node_outputs(loaded, other), n)
    kept = this.memo.get(NODE_OUTPUTS)
    # this run's outputs: kept on the run, or recorded by the first gradient forward (its first row is this run)
    mine = cut(kept, n) if kept is not None else NodeOutputs(runs.layer_inputs(loaded, this)[0][0, :n], {}, {})
    device = mine.emb.device
    scores = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.float64, device=device)
    focus = None
    if node is not None:
        sender, receivers = graph.roles(node)
        outgoing = torch.zeros(len(graph.receivers), n, dtype=torch.float64, device=device)
        incoming = torch.zeros(len(receivers), len(graph.senders), n, dtype=torch.float64, device=device)
        focus = Focus(sender, receivers, outgoing, incoming)
    alphas = [k / steps for k in range(steps)]
    per_forward = max(1, TOKEN_BUDGET // n)
    chunks = [alphas[i : i + per_forward] for i in range(0, steps, per_forward)]
    for i, chunk in enumerate(chunks):
        record = mine if i == 0 and kept is None else None
        grads = _gradients(loaded, wires, this.token_ids[:n], mine, theirs, chunk, answer, wrong, record)
        _score(graph, wires, grads, mine, theirs, scores, focus)
    own = float(metric(loaded, this.hidden[position : position + 1], answer, wrong)[0])
    theirs_m = float(metric(loaded, other.hidden[position : position + 1], answer, wrong)[0])
    if focus is not None:
        focus.outgoing, focus.incoming = (focus.outgoing / steps).cpu(), (focus.incoming / steps).cpu()
    return Attribution(graph, (scores / steps).cpu(), own, theirs_m, forwards + len(chunks), len(chunks), focus)


@dataclass
class _Grads:
    """What one backward leaves, per block: the norms' inputs, the gradients at the query/key/value projections'
    outputs and at the MLP's input, and at the final norm's input; each (B, T, …), B the interpolation rows."""

    inputs: dict[tuple[str, int], torch.Tensor]  # ("attn" | "mlp", layer) → (B, T, d)
    projections: dict[tuple[int, int], torch.Tensor]  # (layer, projection) → (B, T, out features)
    mlp: dict[int, torch.Tensor]  # (B, T, d)
    final: list[torch.Tensor]  # one (B, T, d)


def _gradients(
    loaded: Loaded,
    wires: list[Reads],
    ids: list[int],
    mine: NodeOutputs,
    theirs: NodeOutputs,
    alphas: list[float],
    answer: int,
    wrong: int | None,
    record: NodeOutputs | None = None,
) -> _Grads:
    """One forward and backward of len(alphas) rows, row k's block-0 input moved alphas[k] of the way from this
    run's to the other's. With `record`, the first row's head and MLP outputs go into it (the first row is this run
    itself when alphas[0] = 0)."""
    adapter = loaded.adapter
    wide = torch.promote_types(mine.emb.dtype, torch.float32)
    alpha = torch.tensor(alphas, dtype=wide, device=mine.emb.device)[:, None, None]
    e_this, e_other = mine.emb.clone().to(wide), theirs.emb.clone().to(wide)
    start = (e_this + alpha * (e_other - e_this)).to(mine.emb.dtype).requires_grad_()  # (B, T, d): the leaf
    grads = _Grads({}, {}, {}, [])

    def keep_input(key: tuple[str, int], x: torch.Tensor) -> None:
        grads.inputs[key] = x.detach()

    def keep_proj_grad(key: tuple[int, int], y: torch.Tensor) -> None:
        on_grad(y, lambda g: grads.projections.__setitem__(key, g))

    def mlp_view(layer: int) -> Edit:
        def edit(x: torch.Tensor) -> torch.Tensor:
            return _watched(x, lambda g: grads.mlp.__setitem__(layer, g))

        return edit

    layers = range(len(wires))
    norms = {(kind, layer): getattr(wires[layer], f"{kind}_norm") for layer in layers for kind in ("attn", "mlp")}
    projections = {(layer, i): p for layer in layers for i, p in enumerate(wires[layer].projections)}
    mlps = {layer: wires[layer].mlp for layer in layers}
    with torch.enable_grad(), ExitStack() as stack:
        stack.enter_context(editing_block_inputs({0: adapter.layers[0]}, {0: lambda x: start}))
        stack.enter_context(watching_inputs(norms, keep_input))
        stack.enter_context(watching_outputs(projections, keep_proj_grad))
        stack.enter_context(editing_inputs(mlps, {layer: mlp_view(layer) for layer in layers}))
        stack.enter_context(editing_inputs({0: adapter.final_norm()}, {0: lambda x: _watched(x, grads.final.append)}))
        if record is not None:
            z, m = record.z, record.mlp
            outs = {layer: wires[layer].out_proj for layer in layers}
            stack.enter_context(watching_inputs(outs, lambda layer, x: z.__setitem__(layer, x[0].detach())))
            stack.enter_context(watching_outputs(mlps, lambda layer, y: m.__setitem__(layer, y[0].detach())))
        ids_t = torch.tensor([ids], device=loaded.device).expand(len(alphas), -1)
        hidden = adapter.backbone()(input_ids=ids_t, use_cache=False).last_hidden_state[:, -1]  # (B, d)
        metric(loaded, hidden, answer, wrong).sum().backward()  # type: ignore[no-untyped-call]
    return grads


def _score(
    graph: Graph,
    wires: list[Reads],
    grads: _Grads,
    mine: NodeOutputs,
    theirs: NodeOutputs,
    scores: torch.Tensor,
    focus: Focus | None,
) -> None:
    """Add Σ over positions and rows of (out_s(other) − out_s(this)) · (gradient of receiver r's own input) to
    scores[r, s] for every edge, a chunk of positions at a time (SCORE_BYTES of sender differences); and, per
    position, to the focus node's edges."""
    n, d = mine.emb.shape
    wide = torch.promote_types(mine.emb.dtype, torch.float32)
    chunk = max(1, SCORE_BYTES // (len(graph.senders) * d * wide.itemsize))
    for lo in range(0, n, chunk):
        at = slice(lo, min(n, lo + chunk))
        diffs = _differences(graph, wires, mine, theirs, at)  # (S, P, d)
        for first, g in _channel_gradients(graph, wires, grads, at):
            p = graph.prefix[first]
            scores[first : first + g.shape[0], :p] += (g.flatten(1) @ diffs[:p].flatten(1).T).double()
            if focus is None:
                continue
            if focus.sender is not None and focus.sender < p:
                focus.outgoing[first : first + g.shape[0], at] += torch.einsum("cpd,pd->cp", g, diffs[focus.sender])
            for i, r in enumerate(focus.receivers):
                if first <= r < first + g.shape[0]:
                    focus.incoming[i, :p, at] += torch.einsum("pd,spd->sp", g[r - first], diffs[:p]).double()


def _differences(graph: Graph, wires: list[Reads], mine: NodeOutputs, theirs: NodeOutputs, at: slice) -> torch.Tensor:
    """out_s(other) − out_s(this) of every sender at positions `at`, in the senders' order: (S, P, d_model)."""
    wide = torch.promote_types(mine.emb.dtype, torch.float32)
    emb = mine.emb[at]
    out = torch.empty(len(graph.senders), *emb.shape, dtype=wide, device=emb.device)
    out[0] = theirs.emb[at].to(wide) - emb.to(wide)
    for layer, wire in enumerate(wires):
        first = graph.head_sender(layer)
        dz = theirs.z[layer][at].to(wide) - mine.z[layer][at].to(wide)  # (P, H·hd)
        out[first : first + graph.n_heads] = head_writes(wire, dz, graph.n_heads)  # (H, P, d)
        dm = theirs.mlp[layer][at].to(wide) - mine.mlp[layer][at].to(wide)
        out[graph.mlp_sender(layer)] = dm * wire.multiplier
    return out


def _channel_gradients(
    graph: Graph, wires: list[Reads], grads: _Grads, at: slice
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first receiver index, each channel's input gradient at positions `at` summed over the rows (C, P, d)) for
    runs of channels that read the same senders: each block's attention channels, its MLP, then the logits."""
    for layer, wire in enumerate(wires):
        cotangents = []  # per attention channel: the gradient at the norm's output through the channel's rows alone
        for c, (i, lo, hi) in enumerate(wire.slices):
            w, _ = projection_rows(wire, c)  # (hi − lo, d)
            g = grads.projections[(layer, i)][:, at, lo:hi]  # (B, P, hi − lo)
            cotangents.append(g @ w.to(g.dtype))  # (B, P, d)
        attn = _norm_backward(wire.attn_norm, grads.inputs[("attn", layer)][:, at], torch.stack(cotangents))
        yield layer * graph.per_layer, _wide(attn).sum(1)
        mlp = _norm_backward(wire.mlp_norm, grads.inputs[("mlp", layer)][:, at], grads.mlp[layer][None, :, at])
        yield graph.mlp_receiver(layer), _wide(mlp).sum(1)
    yield len(graph.receivers) - 1, _wide(grads.final[0][:, at]).sum(0)[None]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 or wider (sums over rows and positions of bfloat16 gradients would round)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _watched(x: torch.Tensor, keep: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """A view of x whose gradient goes to `keep`: the gradient of this use of x alone."""
    view = x.view_as(x)
    on_grad(view, keep)
    return view


def _norm_backward(norm: torch.nn.Module, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """Each cotangent (C, B, T, d) at the norm's output taken back to its input x (B, T, d): (C, B, T, d)."""
    with torch.enable_grad():
        xs = x.detach().expand(cotangents.shape[0], *x.shape).clone().requires_grad_()
        y = norm.forward(xs)
        (grad,) = torch.autograd.grad(y, xs, cotangents.to(y.dtype))
    return grad


def log_grid(n_edges: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … below n_edges, then n_edges itself."""
    out: list[int] = []
    scale = 1
    while scale < n_edges:
        out += [m * scale for m in (1, 2, 5) if m * scale < n_edges]
        scale *= 10
    return [*out, n_edges]


def faithfulness(
    loaded: Loaded,
    this: Run,
    other: Run,
    att: Attribution,
    position: int,
    answer: int,
    wrong: int | None,
    ns: list[int],
) -> torch.Tensor:
    """The metric with the top n edges by |score| patched exactly (path_patching), for each n: (len(ns),) float64."""
    ranked = att.ranked(max(ns, default=0))
    rows = [tuple((s, r) for s, r, _ in ranked[:n]) for n in ns]
    return path_patching.metrics(loaded, this, other, rows, position, answer, wrong)


@dataclass(frozen=True)
class Pair:
    """A prompt pair as token ids: the position read and the metric's answer and wrong token ids."""

    clean: list[int]
    corrupted: list[int]
    position: int  # 0 ≤ position < len(clean)
    answer: int
    wrong: int | None


@dataclass
class PairScores:
    """Every edge's score on each pair of a set: scores[p] is pair p's Attribution.scores."""

    graph: Graph
    scores: torch.Tensor  # (n_pairs, n_receivers, n_senders) float64
    metric_clean: list[float]  # per pair
    metric_corrupted: list[float]
    forwards: int  # over every pair: the two analysed runs and attribution's own
    backwards: int

    @property
    def metrics(self) -> torch.Tensor:
        """(n_pairs, 2) float64: the metric on each pair's clean and corrupted prompt."""
        return torch.tensor([self.metric_clean, self.metric_corrupted], dtype=torch.float64).T

    @property
    def node_scores(self) -> torch.Tensor:
        """(n_pairs, n_senders): each sender's outgoing edges summed, per pair."""
        return self.scores.sum(1)

    def ranked(self, top_n: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """The top_n edges by |mean score over pairs| (ties in graph order): their (sender, receiver) and their
        scores on each pair, (n_pairs, top_n)."""
        valid = torch.arange(self.scores.shape[2])[None, :] < torch.tensor(self.graph.prefix)[:, None]  # (R, S)
        where = valid.nonzero()  # (n_edges, 2): (receiver, sender), receiver-major
        values = self.scores[:, valid]  # (n_pairs, n_edges), in the order of `where`
        order = torch.sort(-values.mean(0).abs(), stable=True).indices[:top_n]
        return [(int(s), int(r)) for r, s in where[order].tolist()], values[:, order]


def attribute_pairs(
    loaded: Loaded, pairs: Sequence[Pair], direction: Direction, steps: int = 1
) -> Generator[Progress, None, PairScores]:
    """`attribute` on each pair in turn (both prompts analysed afresh), yielding after each pair: a set of pairs
    runs in slices on the model worker and stops between pairs when cancelled."""
    graph = Graph.of(loaded.adapter)
    scores = torch.zeros(len(pairs), len(graph.receivers), len(graph.senders), dtype=torch.float64)
    on_clean: list[float] = []
    on_corrupted: list[float] = []
    forwards = backwards = 0
    for i, p in enumerate(pairs):
        clean, corrupted = runs.analyse(loaded, "", token_ids=p.clean), runs.analyse(loaded, "", token_ids=p.corrupted)
        this, other = path_patching.pair(direction, clean, corrupted)
        att = attribute(loaded, this, other, p.position, p.answer, p.wrong, steps)
        scores[i] = att.scores
        mine, theirs = att.metric_this, att.metric_other
        on_clean.append(mine if this is clean else theirs)
        on_corrupted.append(theirs if this is clean else mine)
        forwards, backwards = forwards + 2 + att.forwards, backwards + att.backwards
        yield Progress(i + 1, len(pairs))
    return PairScores(graph, scores, on_clean, on_corrupted, forwards, backwards)
