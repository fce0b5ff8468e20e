"""Exact edge (path) patching: run one prompt with chosen edges carrying the other prompt's values.

In receiver channel c (app.inspect.engine.nodes), the input becomes its own input plus
Σ over the listed senders s of (out_s(other) − out_s(now)), where out_s(now) is the sender's output in this very
forward; every other path keeps this run's values and everything downstream is recomputed. A patched channel is
recomputed from its own copy of the stream: its norm, then its rows of the projection (q, k, v), or the MLP's
norm (in), or the final norm (logits). Patching every edge so gives the other run's stream at every receiver,
hence its metric; patching none is this run.

Each set of edges is a row of the engine (app.inspect.engine.rows): rows start at the first block they change,
from this run's cached stream; senders before it keep this run's outputs, later ones are read as the forward
reaches them. Only positions up to the one read can matter, so runs stop there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Literal
from weakref import WeakKeyDictionary

import torch

from app.inspect.engine import runs
from app.inspect.engine.hooks import editing_inputs, editing_outputs, watching_inputs, watching_outputs
from app.inspect.engine.nodes import (
    Graph,
    NodeOutputs,
    NotUnderstood,
    Reads,
    head_writes,
    node_outputs,
    projection_rows,
    reads,
)
from app.inspect.engine.rows import TOKEN_BUDGET, Base, Batch, run_rows
from app.inspect.engine.runs import Run
from app.inspect.engine.steps import drain
from app.inspect.model.adapters import Adapter
from app.inspect.model.loaded import Loaded

Direction = Literal["denoise", "noise"]
Edge = tuple[int, int]  # (sender, receiver channel) indices of a Graph
Row = tuple[Edge, ...]  # the edges patched together in one run
DELTA_BYTES = 256 << 20  # the most one forward's patched-channel inputs may hold
PROBE_TOKENS = 8
_gaps: WeakKeyDictionary[Adapter, str | None] = WeakKeyDictionary()  # check(), found once per model


def metric(loaded: Loaded, hidden: torch.Tensor, answer: int, wrong: int | None) -> torch.Tensor:
    """logit[answer] − logit[wrong] (logit[answer] without `wrong`) of final-normed hidden states (B, d_model):
    (B,), float32 or wider, the model's readout (logit scale, soft-cap) applied. Differentiable."""
    adapter = loaded.adapter
    lm_head = adapter.unembedding()
    weight: torch.Tensor = getattr(lm_head, "weight")  # noqa: B009
    bias = getattr(lm_head, "bias", None)
    ids = [answer] if wrong is None else [answer, wrong]
    wide = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(wide) @ weight[ids].to(wide).T  # (B, 1 or 2)
    if isinstance(bias, torch.Tensor):
        logits = logits + bias[ids].to(wide)
    logits = adapter.readout(logits)
    return logits[:, 0] if wrong is None else logits[:, 0] - logits[:, 1]


def pair(direction: Direction, clean: Run, corrupted: Run) -> tuple[Run, Run]:
    """(the run patched into, the run its values come from): denoise = (corrupted, clean), noise the reverse."""
    return (corrupted, clean) if direction == "denoise" else (clean, corrupted)


def wiring(loaded: Loaded) -> list[Reads]:
    """Every block's Reads; raises NotUnderstood for a family circuits cannot describe."""
    return [reads(loaded.adapter, layer) for layer in range(loaded.adapter.layout.n_layers)]


class _Patch:
    """The hook state of one chunk of rows: per receiver channel the rows patch, the sum of
    (out_s(other) − out_s(now)) over each row's senders, built up as the forward reaches each sender."""

    def __init__(
        self, loaded: Loaded, graph: Graph, wires: list[Reads], this: NodeOutputs, other: NodeOutputs, batch: Batch[Row]
    ) -> None:
        self.loaded, self.graph, self.wires, self.other = loaded, graph, wires, other
        n = this.emb.shape[0]
        dtype, device = this.emb.dtype, this.emb.device
        self.wide = torch.promote_types(dtype, torch.float32)
        self.active = sorted({r for row in batch.rows for _, r in row})
        self.slot = {r: i for i, r in enumerate(self.active)}
        b, c = len(batch.rows), len(self.active)
        self.mask = torch.zeros(b, c, len(graph.senders), dtype=self.wide, device=device)  # (B, C, S)
        where = [(i, self.slot[r], s) for i, row in enumerate(batch.rows) for s, r in row]
        self.mask[tuple(torch.tensor(where, device=device).T)] = 1
        self.patched = self.mask.amax(-1) > 0  # (B, C): which rows patch each channel
        self.delta = torch.zeros(c, b, n, loaded.adapter.layout.d_model, dtype=self.wide, device=device)
        self.delta += torch.einsum("bc,td->cbtd", self.mask[:, :, 0], (other.emb - this.emb).to(self.wide))
        for layer in range(batch.start):  # unchanged before the first block the rows change: this run's outputs
            self.heads(layer, this.z[layer][None])
            self.mlp(layer, this.mlp[layer][None])
        self.inputs: dict[tuple[str, int], torch.Tensor] = {}  # ("attn" | "mlp", layer) → the norm's input now

    def heads(self, layer: int, z: torch.Tensor) -> None:
        """Add the layer's heads' (out(other) − out(now)) to the channels that read them; z (B or 1, T, H·hd)."""
        first = self.graph.head_sender(layer)
        m = self.mask[:, :, first : first + self.graph.n_heads]  # (B, C, H)
        if not bool(m.any()):
            return
        dz = self.other.z[layer][: z.shape[1]].to(self.wide) - z.to(self.wide)  # (B or 1, T, H·hd)
        writes = head_writes(self.wires[layer], dz, self.graph.n_heads)  # (B or 1, H, T, d)
        self.delta += torch.einsum("bch,bhtd->cbtd", m, writes.expand(m.shape[0], -1, -1, -1))

    def mlp(self, layer: int, y: torch.Tensor) -> None:
        """Add M{layer}'s (out(other) − out(now)) to the channels that read it; y (B or 1, T, d)."""
        m = self.mask[:, :, self.graph.mlp_sender(layer)]  # (B, C)
        if not bool(m.any()):
            return
        dy = (self.other.mlp[layer][: y.shape[1]].to(self.wide) - y.to(self.wide)) * self.wires[layer].multiplier
        self.delta += torch.einsum("bc,btd->cbtd", m, dy.expand(m.shape[0], -1, -1))

    def own_input(self, c: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows that patch receiver c, their copy of the stream x (B, T, d) plus the channel's sum)."""
        i = self.slot[c]
        rows = self.patched[:, i].nonzero()[:, 0]
        return rows, (x[rows].to(self.wide) + self.delta[i, rows]).to(x.dtype)

    def _channels(self, layer: int) -> list[int]:
        """The layer's attention channels (indices into its Reads.slices) that some row patches."""
        first = layer * self.graph.per_layer
        return [c for c in range(len(self.wires[layer].slices)) if first + c in self.slot]

    def projection_edit(self, layer: int, proj: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Recompute the projection's patched channels, each from its own copy of the stream through the norm."""
        wire, first = self.wires[layer], layer * self.graph.per_layer
        channels = [c for c in self._channels(layer) if wire.slices[c][0] == proj]
        slots = [self.slot[first + c] for c in channels]
        rows = [projection_rows(wire, c) for c in channels]
        w = torch.stack([r[0] for r in rows])  # (C, head_dim, d)
        bias = None if rows[0][1] is None else torch.stack([r[1] for r in rows if r[1] is not None])  # (C, head_dim)

        def edit(y: torch.Tensor) -> torch.Tensor:  # (B, T, out features)
            x = self.inputs[("attn", layer)]  # (B, T, d)
            own = (x.to(self.wide)[None] + self.delta[slots]).to(x.dtype)  # (C, B, T, d)
            out = torch.einsum("cbtd,ced->cbte", wire.attn_norm.forward(own), w)  # (C, B, T, head_dim)
            if bias is not None:
                out = out + bias[:, None, None, :]
            y = y.clone()
            for j, c in enumerate(channels):
                _, lo, hi = wire.slices[c]
                y[..., lo:hi] = torch.where(self.patched[:, slots[j], None, None], out[j], y[..., lo:hi])
            return y

        return edit

    def mlp_edit(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        c = self.graph.mlp_receiver(layer)

        def edit(normed: torch.Tensor) -> torch.Tensor:  # (B, T, d): the MLP's input
            rows, x = self.own_input(c, self.inputs[("mlp", layer)])
            out = normed.clone()
            out[rows] = self.wires[layer].mlp_norm.forward(x)
            return out

        return edit

    def final_edit(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d): the final norm's input
        rows, patched = self.own_input(len(self.graph.receivers) - 1, x)
        out = x.clone()
        out[rows] = patched
        return out

    def install(self, start: int) -> ExitStack:
        """The hook contexts, for blocks start..L−1 (and the final norm)."""
        adapter, graph = self.loaded.adapter, self.graph
        layers = range(start, graph.n_layers)
        used = {graph.receivers[r].layer for r in self.active}

        def watch(key: tuple[str, int], x: torch.Tensor) -> None:
            self.inputs[key] = x

        norms = {(kind, layer): getattr(self.wires[layer], f"{kind}_norm") for layer in used & set(layers)
                 for kind in ("attn", "mlp")}  # fmt: skip
        stack = ExitStack()
        stack.enter_context(watching_inputs(norms, watch))
        stack.enter_context(watching_inputs({layer: self.wires[layer].out_proj for layer in layers}, self.heads))
        stack.enter_context(watching_outputs({layer: self.wires[layer].mlp for layer in layers}, self.mlp))
        edits = {
            (layer, i): self.projection_edit(layer, i)
            for layer in used & set(layers)
            for i in {self.wires[layer].slices[c][0] for c in self._channels(layer)}
        }
        stack.enter_context(editing_outputs({k: self.wires[k[0]].projections[k[1]] for k in edits}, edits))
        mlps = [layer for layer in used & set(layers) if graph.mlp_receiver(layer) in self.slot]
        stack.enter_context(
            editing_inputs({layer: self.wires[layer].mlp for layer in mlps}, {lay: self.mlp_edit(lay) for lay in mlps})
        )
        if len(graph.receivers) - 1 in self.slot:
            stack.enter_context(editing_inputs({0: adapter.final_norm()}, {0: self.final_edit}))
        return stack


def patched_forwards(
    loaded: Loaded,
    this: Run,
    other: Run,
    rows: Sequence[Row],
    position: int,
    read: Callable[[torch.Tensor], list[torch.Tensor]],
) -> list[torch.Tensor | None]:
    """`read(final hidden states at position (B, d))` of this run with each row's edges patched from the other run;
    None for an empty row (it is this run)."""
    graph, wires = Graph.of(loaded.adapter), wiring(loaded)
    n = position + 1
    mine, theirs = cut(node_outputs(loaded, this), n), cut(node_outputs(loaded, other), n)
    todo = [i for i, row in enumerate(rows) if row]
    out: list[torch.Tensor | None] = [None] * len(rows)
    if not todo:
        return out
    widest = max(len({r for _, r in rows[i]}) for i in todo)
    per_row = widest * n * loaded.adapter.layout.d_model * 4
    budget = max(n, min(TOKEN_BUDGET, DELTA_BYTES // per_row * n))

    current: list[tuple[Batch[Row], _Patch]] = []  # a forward run in several steps installs its hooks again

    def install(batch: Batch[Row]) -> ExitStack:
        if not current or current[0][0] is not batch:
            current[:] = [(batch, _Patch(loaded, graph, wires, mine, theirs, batch))]
        return current[0][1].install(batch.start)

    found = drain(
        run_rows(
            loaded,
            Base.of_ids(loaded, this.token_ids[:n], runs.layer_inputs(loaded, this)),
            [rows[i] for i in todo],
            start=lambda row: min(min(graph.receivers[r].layer for _, r in row), graph.n_layers - 1),
            install=install,
            read=lambda hidden, batch: read(hidden[:, -1]),
            token_budget=budget,
        )
    )
    for i, value in zip(todo, found, strict=True):
        out[i] = value
    return out


def metrics(
    loaded: Loaded, this: Run, other: Run, rows: Sequence[Row], position: int, answer: int, wrong: int | None
) -> torch.Tensor:
    """The metric at `position` of this run with each row's edges patched from the other: (len(rows),) float64.

    An empty row is this run's own metric, bit for bit."""
    own = float(metric(loaded, this.hidden[position : position + 1], answer, wrong)[0])
    found = patched_forwards(
        loaded, this, other, rows, position, lambda h: list(metric(loaded, h, answer, wrong).double().cpu())
    )
    return torch.tensor([own if v is None else float(v) for v in found], dtype=torch.float64)


def recovered(value: float, this: float, other: float) -> float | None:
    """(value − this) / (other − this); None when the two runs' metrics are (almost) equal."""
    return None if abs(other - this) < 1e-6 else (value - this) / (other - this)


def all_edges(graph: Graph) -> Row:
    return tuple((s, r) for r in range(len(graph.receivers)) for s in range(graph.prefix[r]))


def check(loaded: Loaded) -> str | None:
    """Why exact path patching would not hold on this model (None: it does), found once per model.

    The blocks must be understood (nodes.reads), and on a probe, patching every edge from one text into another
    must give the other's final hidden state.
    """
    adapter = loaded.adapter
    if adapter in _gaps:
        return _gaps[adapter]
    gap: str | None = None
    try:
        wiring(loaded)
    except NotUnderstood as exc:
        gap = str(exc)
    if gap is None:
        vocab = adapter.layout.vocab_size
        a = runs.analyse(loaded, "", token_ids=[(7 * i + 3) % vocab for i in range(PROBE_TOKENS)])
        b = runs.analyse(loaded, "", token_ids=[(11 * i + 5) % vocab for i in range(PROBE_TOKENS)])
        p = PROBE_TOKENS - 1
        [got] = patched_forwards(loaded, a, b, [all_edges(Graph.of(adapter))], p, lambda h: list(h))
        want = b.hidden[p]
        tol = 1e-3 if want.dtype.itemsize >= 4 else 5e-2
        assert got is not None
        if float((got - want).abs().max()) > tol * (1 + float(want.abs().max())):
            name = adapter.layout.architecture
            gap = f"{name}'s blocks do not add their heads and MLPs into the residual stream as circuits expect"
    _gaps[adapter] = gap
    return gap


def cut(out: NodeOutputs, n: int) -> NodeOutputs:
    """The first n positions of every sender's output."""
    return NodeOutputs(
        emb=out.emb[:n],
        z={layer: z[:n] for layer, z in out.z.items()},
        mlp={layer: y[:n] for layer, y in out.mlp.items()},
    )
