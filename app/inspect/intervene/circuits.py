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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import torch

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
from app.inspect.intervene import path_patching
from app.inspect.intervene.path_patching import cut, metric, wiring
from app.inspect.model.loaded import Loaded


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

    def ranked(self, top_n: int = 0) -> list[tuple[int, int, float]]:
        """(sender, receiver, score) of the top_n edges by |score| (0: every edge), largest first."""
        valid = torch.arange(self.scores.shape[1])[None, :] < torch.tensor(self.graph.prefix)[:, None]
        flat = self.scores.abs().masked_fill(~valid, -1).flatten()
        k = int(valid.sum()) if top_n <= 0 else min(top_n, int(valid.sum()))
        order = torch.topk(flat, k).indices.tolist()
        width = self.scores.shape[1]
        return [(i % width, i // width, float(self.scores.view(-1)[i])) for i in order]


def attribute(
    loaded: Loaded, this: Run, other: Run, position: int, answer: int, wrong: int | None, steps: int = 1
) -> Attribution:
    """Score every edge: EAP with steps = 1, EAP-IG with more.

    Args:
        loaded: the model.
        this: the run patched into (gradients are taken on it); other: the run the values come from.
        position: the query position read, 0 ≤ position < n_tokens (later positions cannot matter).
        answer, wrong: the metric is logit[answer] − logit[wrong] (logit[answer] when wrong is None).
        steps: interpolation steps of the block-0 input from this run's towards the other's.
    """
    graph, wires = Graph.of(loaded.adapter), wiring(loaded)
    n = position + 1
    forwards = int(NODE_OUTPUTS not in this.memo) + int(NODE_OUTPUTS not in other.memo)
    mine, theirs = cut(node_outputs(loaded, this), n), cut(node_outputs(loaded, other), n)
    diffs = _differences(graph, wires, mine, theirs)  # (S, T, d)
    scores = torch.zeros(len(graph.receivers), len(graph.senders), dtype=torch.float64, device=diffs.device)
    alphas = [k / steps for k in range(steps)]
    per_forward = max(1, TOKEN_BUDGET // n)
    chunks = [alphas[i : i + per_forward] for i in range(0, steps, per_forward)]
    for chunk in chunks:
        for first, grads in _channel_gradients(
            loaded, graph, wires, this.token_ids[:n], mine, theirs, chunk, answer, wrong
        ):
            p = graph.prefix[first]
            block = grads.flatten(1) @ diffs[:p].flatten(1).T  # (channels, p)
            scores[first : first + grads.shape[0], :p] += block.double() / steps
    own = float(metric(loaded, this.hidden[position : position + 1], answer, wrong)[0])
    theirs_m = float(metric(loaded, other.hidden[position : position + 1], answer, wrong)[0])
    return Attribution(graph, scores.cpu(), own, theirs_m, forwards + len(chunks), len(chunks))


def _differences(graph: Graph, wires: list[Reads], mine: NodeOutputs, theirs: NodeOutputs) -> torch.Tensor:
    """out_s(other) − out_s(this) of every sender, in its order: (S, T, d_model), float32 or wider."""
    wide = torch.promote_types(mine.emb.dtype, torch.float32)
    parts = [(theirs.emb - mine.emb).to(wide)[None]]
    for layer, wire in enumerate(wires):
        dz = theirs.z[layer].to(wide) - mine.z[layer].to(wide)  # (T, H·hd)
        parts.append(head_writes(wire, dz, graph.n_heads))  # (H, T, d)
        parts.append(((theirs.mlp[layer].to(wide) - mine.mlp[layer].to(wide)) * wire.multiplier)[None])
    return torch.cat(parts)


def _channel_gradients(
    loaded: Loaded,
    graph: Graph,
    wires: list[Reads],
    ids: list[int],
    mine: NodeOutputs,
    theirs: NodeOutputs,
    alphas: list[float],
    answer: int,
    wrong: int | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """One forward and backward of len(alphas) interpolated inputs; yields (first receiver index, gradients
    (channels, T, d) summed over the rows) for runs of channels that read the same senders: each block's
    attention channels, its MLP, and last the logits."""
    adapter = loaded.adapter
    dtype = mine.emb.dtype
    wide = torch.promote_types(dtype, torch.float32)
    b = len(alphas)
    alpha = torch.tensor(alphas, dtype=wide, device=mine.emb.device)[:, None, None]
    e_this, e_other = mine.emb.clone().to(wide), theirs.emb.clone().to(wide)
    start = (e_this + alpha * (e_other - e_this)).to(dtype).requires_grad_()  # (B, T, d): the leaf
    inputs: dict[tuple[str, int], torch.Tensor] = {}
    proj_grads: dict[tuple[int, int], torch.Tensor] = {}
    mlp_grads: dict[int, torch.Tensor] = {}
    final: list[torch.Tensor] = []

    def keep_input(key: tuple[str, int], x: torch.Tensor) -> None:
        inputs[key] = x.detach()

    def keep_proj_grad(key: tuple[int, int], y: torch.Tensor) -> None:
        on_grad(y, lambda g: proj_grads.__setitem__(key, g))

    def mlp_view(layer: int) -> Edit:
        def edit(x: torch.Tensor) -> torch.Tensor:
            return _watched(x, lambda g: mlp_grads.__setitem__(layer, g))

        return edit

    layers = range(graph.n_layers)
    norms = {(kind, layer): getattr(wires[layer], f"{kind}_norm") for layer in layers for kind in ("attn", "mlp")}
    projections = {(layer, i): p for layer in layers for i, p in enumerate(wires[layer].projections)}
    with torch.enable_grad(), ExitStack() as stack:
        stack.enter_context(editing_block_inputs({0: adapter.layers[0]}, {0: lambda x: start}))
        stack.enter_context(watching_inputs(norms, keep_input))
        stack.enter_context(watching_outputs(projections, keep_proj_grad))
        stack.enter_context(
            editing_inputs({lay: wires[lay].mlp for lay in layers}, {lay: mlp_view(lay) for lay in layers})
        )
        stack.enter_context(editing_inputs({0: adapter.final_norm()}, {0: lambda x: _watched(x, final.append)}))
        ids_t = torch.tensor([ids], device=loaded.device).expand(b, -1)
        hidden = adapter.backbone()(input_ids=ids_t, use_cache=False).last_hidden_state[:, -1]  # (B, d)
        metric(loaded, hidden, answer, wrong).sum().backward()  # type: ignore[no-untyped-call]
    for layer, wire in enumerate(wires):
        cotangents = []  # per attention channel: the gradient at the norm's output through the channel's rows alone
        for c, (i, lo, hi) in enumerate(wire.slices):
            w, _ = projection_rows(wire, c)  # (hi − lo, d)
            cotangents.append(proj_grads[(layer, i)][..., lo:hi] @ w.to(dtype))  # (B, T, d)
        attn = _norm_backward(wire.attn_norm, inputs[("attn", layer)], torch.stack(cotangents))
        mlp = _norm_backward(wire.mlp_norm, inputs[("mlp", layer)], mlp_grads[layer][None])
        yield layer * graph.per_layer, attn.to(wide).sum(1)
        yield graph.mlp_receiver(layer), mlp.to(wide).sum(1)
    yield len(graph.receivers) - 1, final[0].to(wide).sum(0)[None]


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
