"""The circuit graph: its nodes, the channels receivers read through, which senders precede which receivers,
and every sender's output in one run.

Senders write into the residual stream: `emb` (the stream entering block 0), every query head `L{l}H{h}` (its
slice of the output-projection input times its columns of W_O, times the block's residual multiplier; no bias)
and every MLP `M{l}` (its output; an MoE block is one node). Receivers read the sum of the senders before them
through their own input norm: a query head's `q`, a KV head's `k` and `v` (`L{l}KV{g}`: with GQA one KV head
serves a group of query heads), an MLP's `in`, and `logits` (`in`, through the final norm). In a sequential block
the MLP reads its own layer's heads; in a parallel block (GPT-J, NeoX, Phi, Cohere) it does not.

Senders are numbered emb, L0H0..L0H{H-1}, M0, L1H0, …; receivers layer by layer, q of each query head, k of each
KV head, v of each KV head, then the MLP's in, and last `logits`. Receiver r reads exactly the first
`prefix[r]` senders, so an edge is a pair (sender < prefix[r], r).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import nn

from app.inspect.engine.hooks import recording_head_outputs, watching_outputs
from app.inspect.engine.memo import Key, nbytes
from app.inspect.engine.runs import Run
from app.inspect.model.adapters import Adapter
from app.inspect.model.blocks import block_plan, part
from app.inspect.model.discovery import in_out
from app.inspect.model.loaded import Loaded

Channel = Literal["q", "k", "v", "in"]
_NODE = re.compile(r"L(\d+)H(\d+)|L(\d+)KV(\d+)|M(\d+)|emb|logits")
NODE_OUTPUTS_CACHE_BYTES = 256 << 20  # keep a run's node outputs on it when they fit


class UnknownNode(ValueError):
    """A node id that is not in the model's graph."""


class NotAnEdge(ValueError):
    """A (source, target, channel) the graph has no edge for: it runs backwards, or the target has no such channel."""


class NotUnderstood(ValueError):
    """A block whose writes or reads the graph cannot describe exactly."""


@dataclass(frozen=True)
class Receiver:
    """One receiver channel: `target` reads the stream through `channel`; `layer` is n_layers for logits."""

    target: str
    channel: Channel
    layer: int


@dataclass(frozen=True)
class Graph:
    """The nodes and edges of one model: n_layers × (n_heads + 1) + 1 senders, n_layers × (n_heads + 2·n_kv_heads
    + 1) + 1 receiver channels."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: tuple[bool, ...]  # per layer: the MLP reads the block input, not the stream after attention

    @staticmethod
    def of(adapter: Adapter) -> Graph:
        lay = adapter.layout
        parallel = tuple(block_plan(adapter, layer).parallel for layer in range(lay.n_layers))
        return Graph(lay.n_layers, lay.n_heads, lay.n_kv_heads, parallel)

    @property
    def per_layer(self) -> int:
        """Receiver channels in one block: q per query head, k and v per KV head, the MLP's in."""
        return self.n_heads + 2 * self.n_kv_heads + 1

    @cached_property
    def senders(self) -> list[str]:
        out = ["emb"]
        for layer in range(self.n_layers):
            out += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"M{layer}"]
        return out

    def head_sender(self, layer: int, head: int = 0) -> int:
        """The index of sender L{layer}H{head} (the layer's heads are consecutive, its MLP right after them)."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return self.head_sender(layer, self.n_heads)

    @cached_property
    def receivers(self) -> list[Receiver]:
        out: list[Receiver] = []
        for layer in range(self.n_layers):
            out += [Receiver(f"L{layer}H{h}", "q", layer) for h in range(self.n_heads)]
            out += [Receiver(f"L{layer}KV{g}", "k", layer) for g in range(self.n_kv_heads)]
            out += [Receiver(f"L{layer}KV{g}", "v", layer) for g in range(self.n_kv_heads)]
            out.append(Receiver(f"M{layer}", "in", layer))
        return [*out, Receiver("logits", "in", self.n_layers)]

    def mlp_receiver(self, layer: int) -> int:
        return (layer + 1) * self.per_layer - 1

    @cached_property
    def prefix(self) -> list[int]:
        """Per receiver channel, how many senders (the first ones) it reads."""
        out = []
        for r in self.receivers:
            before = self.head_sender(r.layer)  # emb and every block before the receiver's
            if r.channel == "in" and r.target != "logits" and not self.parallel[r.layer]:
                before += self.n_heads  # a sequential MLP reads its own layer's heads too
            out.append(before)
        return out

    @property
    def n_edges(self) -> int:
        return sum(self.prefix)

    def sender_index(self, node: str) -> int:
        """Index of a sender id; raises UnknownNode (or NotAnEdge for a node that only receives)."""
        m = self._parse(node)
        if node == "emb":
            return 0
        if m.group(1) is not None:
            return self.head_sender(int(m.group(1)), int(m.group(2)))
        if m.group(5) is not None:
            return self.mlp_sender(int(m.group(5)))
        raise NotAnEdge(f"{node} sends nothing (a KV head and the logits only receive); senders are emb, L*H*, M*")

    def receiver_index(self, node: str, channel: str) -> int:
        """Index of (target, channel); raises UnknownNode, or NotAnEdge when the target has no such channel."""
        m = self._parse(node)
        allowed: dict[str, int] = {}
        if node == "logits":
            allowed = {"in": len(self.receivers) - 1}
        elif m.group(1) is not None:
            allowed = {"q": int(m.group(1)) * self.per_layer + int(m.group(2))}
        elif m.group(3) is not None:
            base = int(m.group(3)) * self.per_layer + self.n_heads + int(m.group(4))
            allowed = {"k": base, "v": base + self.n_kv_heads}
        elif m.group(5) is not None:
            allowed = {"in": self.mlp_receiver(int(m.group(5)))}
        if channel not in allowed:
            hint = f"its channels are {', '.join(allowed)}" if allowed else "emb only sends"
            raise NotAnEdge(f"{node} has no channel {channel!r}: {hint}")
        return allowed[channel]

    def roles(self, node: str) -> tuple[int | None, list[int]]:
        """(its sender index or None, its receiver channels' indices) of a node id; raises UnknownNode."""
        m = self._parse(node)
        if node == "emb":
            return 0, []
        if node == "logits":
            return None, [len(self.receivers) - 1]
        if m.group(3) is not None:  # a KV head
            return None, [self.receiver_index(node, "k"), self.receiver_index(node, "v")]
        return self.sender_index(node), [self.receiver_index(node, "in" if m.group(5) is not None else "q")]

    def edge(self, source: str, target: str, channel: str) -> tuple[int, int]:
        """(sender, receiver) indices of one edge; raises UnknownNode or NotAnEdge (backwards, or no such channel)."""
        s, r = self.sender_index(source), self.receiver_index(target, channel)
        if s >= self.prefix[r]:
            raise NotAnEdge(
                f"{source} → {target} ({channel}) runs backwards: {target} does not read {source}'s output"
                + (" (parallel blocks: an MLP does not read its own layer's heads)" if self._same_layer(s, r) else "")
            )
        return s, r

    def _same_layer(self, s: int, r: int) -> bool:
        rec = self.receivers[r]
        return rec.channel == "in" and s >= self.head_sender(rec.layer) and rec.layer < self.n_layers

    def _parse(self, node: str) -> re.Match[str]:
        m = _NODE.fullmatch(node)
        if m is None:
            raise UnknownNode(f"unknown node {node!r}: nodes are emb, L{{l}}H{{h}}, L{{l}}KV{{g}}, M{{l}}, logits")
        bounds = {1: (self.n_layers, "layer"), 2: (self.n_heads, "head"), 3: (self.n_layers, "layer")}
        bounds |= {4: (self.n_kv_heads, "KV head"), 5: (self.n_layers, "layer")}
        for group, (bound, what) in bounds.items():
            value = m.group(group)
            if value is not None and int(value) >= bound:
                raise UnknownNode(f"unknown node {node!r}: the model has {what}s 0..{bound - 1}")
        return m


@dataclass(frozen=True)
class Reads:
    """How block l's receivers read the stream, and how its heads write into it.

    `slices[c]`: for attention channel c (q per query head, then k, then v per KV head), the projection that
    computes it and its output features [lo, hi)."""

    attn_norm: nn.Module
    mlp_norm: nn.Module
    mlp: nn.Module
    out_proj: nn.Module
    projections: tuple[nn.Module, ...]
    slices: tuple[tuple[int, int, int], ...]
    multiplier: float  # the block's residual multiplier (Granite), on both writes


def reads(adapter: Adapter, layer: int) -> Reads:
    """Block `layer`'s wiring for circuits.

    Raises:
        NotUnderstood: a norm on the attention or MLP output (Gemma 2/3, OLMo 2: a head's write is then not its
            own), no input norm found, or query/key/value projections of an unknown layout.
    """
    lay, plan, name = adapter.layout, block_plan(adapter, layer), adapter.layout.architecture
    if plan.attn_out_norm or plan.mlp_out_norm:
        raise NotUnderstood(
            f"{name} normalises the attention and MLP outputs before adding them to the residual stream "
            f"({plan.attn_out_norm or plan.mlp_out_norm}), so a head's write depends on every other head's: "
            "circuit edges are not defined for it"
        )
    if not plan.attn_norm or not plan.mlp_norm:
        raise NotUnderstood(f"{name}: circuits cannot find the input norms of block {layer}")
    if getattr(adapter.family, "mlp_residual", False):
        raise NotUnderstood(
            f"{name}'s MLP adds the residual stream to its own output, so circuits cannot read its write"
        )
    projections = tuple(adapter.qkv_projections(layer))
    h, k, hd = lay.n_heads, lay.n_kv_heads, lay.head_dim
    widths = [in_out(p) for p in projections]
    if any(w is None or w[0] != lay.d_model for w in widths):
        raise NotUnderstood(f"{name}: circuits cannot read the query/key/value projections of block {layer}")
    outs = [w[1] for w in widths if w is not None]
    q = [(0, i * hd, (i + 1) * hd) for i in range(h)]
    if len(projections) == 3 and outs == [h * hd, k * hd, k * hd]:
        kv = [(1, g * hd, (g + 1) * hd) for g in range(k)] + [(2, g * hd, (g + 1) * hd) for g in range(k)]
    elif hasattr(adapter.attention(layer), "query_key_value") and outs == [3 * h * hd] and h == k:
        # GPT-NeoX: per head, q, k and v of head_dim features each
        q = [(0, 3 * i * hd, (3 * i + 1) * hd) for i in range(h)]
        kv = [(0, (3 * g + 1) * hd, (3 * g + 2) * hd) for g in range(k)]
        kv += [(0, (3 * g + 2) * hd, (3 * g + 3) * hd) for g in range(k)]
    elif len(projections) == 1 and outs == [(h + 2 * k) * hd]:  # q, k, v side by side (GPT-2, Phi-3)
        kv = [(0, (h + g) * hd, (h + g + 1) * hd) for g in range(2 * k)]
    else:
        raise NotUnderstood(f"{name}: the query/key/value projections of block {layer} have an unknown layout {outs}")
    return Reads(
        attn_norm=part(adapter, layer, plan.attn_norm),
        mlp_norm=part(adapter, layer, plan.mlp_norm),
        mlp=adapter.block_part(layer, mlp_path(adapter)),
        out_proj=adapter.out_proj(layer),
        projections=projections,
        slices=tuple(q + kv),
        multiplier=plan.residual_multiplier,
    )


def mlp_path(adapter: Adapter) -> str:
    """Where a block keeps its MLP (or MoE block)."""
    return str(getattr(adapter.family, "mlp", "mlp"))


@dataclass
class NodeOutputs:
    """Every sender's output in one run, per position; heads compact as their output-projection input."""

    emb: torch.Tensor  # (T, d_model): the stream entering block 0
    z: dict[int, torch.Tensor]  # per layer (T, n_heads * head_dim); a head writes multiplier · z_h W_O[:, h]ᵀ
    mlp: dict[int, torch.Tensor]  # per layer (T, d_model), before the residual multiplier


NODE_OUTPUTS = Key[NodeOutputs]("node_outputs")


def node_outputs(loaded: Loaded, run: Run) -> NodeOutputs:
    """Every sender's output for the run's text: one forward, kept on the run when it fits."""
    cached = run.memo.get(NODE_OUTPUTS)
    if cached is not None:
        return cached
    adapter = loaded.adapter
    z: dict[int, torch.Tensor] = {}
    mlp: dict[int, torch.Tensor] = {}

    def keep(layer: int, y: torch.Tensor) -> None:
        mlp[layer] = y[0].detach()

    mlps = {layer: adapter.block_part(layer, mlp_path(adapter)) for layer in range(adapter.layout.n_layers)}
    with (
        torch.inference_mode(),
        recording_head_outputs(adapter, z, keep=lambda x: x[0].detach()),
        watching_outputs(mlps, keep),
    ):
        adapter.backbone()(input_ids=torch.tensor([run.token_ids], device=loaded.device), use_cache=False)
    out = NodeOutputs(emb=run.layer_inputs[0][0], z=z, mlp=mlp)
    if nbytes(out) <= NODE_OUTPUTS_CACHE_BYTES:
        run.memo.put(NODE_OUTPUTS, out)
    return out


def head_writes(reads: Reads, dz: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Each head's write into the stream: (…, T, n_heads * head_dim) → (…, n_heads, T, d_model), bias excluded."""
    weight = _weight(reads.out_proj).to(dz.dtype)  # (d, n_heads * head_dim)
    w = weight.view(weight.shape[0], n_heads, -1)  # (d, n_heads, head_dim)
    split = dz.view(*dz.shape[:-1], n_heads, w.shape[-1])  # (…, T, n_heads, head_dim)
    return torch.einsum("...the,dhe->...htd", split, w) * reads.multiplier


def _weight(module: nn.Module) -> torch.Tensor:
    """W (out, in) of a Linear or GPT-2's Conv1D (whose weight is (in, out))."""
    weight = getattr(module, "weight")  # noqa: B009
    assert isinstance(weight, torch.Tensor)
    return weight if isinstance(module, nn.Linear) or not isinstance(getattr(module, "nf", None), int) else weight.T


def projection_rows(reads: Reads, c: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention channel c's rows of its projection: W (hi − lo, d_model) and its bias, or None."""
    i, lo, hi = reads.slices[c]
    proj = reads.projections[i]
    bias = getattr(proj, "bias", None)
    return _weight(proj)[lo:hi], bias[lo:hi] if isinstance(bias, torch.Tensor) else None
