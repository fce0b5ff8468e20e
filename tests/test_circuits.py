"""Circuits against their definitions, in float64: exact path patching vs a hand-written hook reference, EAP and
EAP-IG scores vs gradients of each channel's own copy of the stream times sender differences, node scores vs
attribution patching of each node's output; on GQA Llama, GPT-2, GPT-NeoX, a parallel-block and a MoE family."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from app.inspect.engine.nodes import Graph, NotAnEdge, UnknownNode
from app.inspect.engine.runs import Run, analyse
from app.inspect.intervene import circuits, path_patching
from app.inspect.model.loaded import Loaded
from tests.support import families
from tests.support.checks import hook_count
from tests.support.models import as_loaded, tiny_loaded

ANSWER, WRONG = 5, 9


@dataclass(frozen=True)
class Names:
    """Where the test finds each family's modules, written out by hand (not from the app's block plans)."""

    attn_norm: str
    mlp_norm: str
    qkv: tuple[str, ...]  # q, k, v projections, or one fused
    layout: str  # "separate", "fused" (q | k | v) or "per_head" (GPT-NeoX: [q, k, v] per head)
    out: str  # the output projection, under the attention module
    parallel: bool


LLAMA = Names(
    "input_layernorm", "post_attention_layernorm", ("q_proj", "k_proj", "v_proj"), "separate", "o_proj", False
)
NAMES = {
    "llama": LLAMA,
    "mixtral": LLAMA,
    "gpt2": Names("ln_1", "ln_2", ("c_attn",), "fused", "c_proj", False),
    "gpt_neox": Names("input_layernorm", "post_attention_layernorm", ("query_key_value",), "per_head", "dense", True),
    "phi": Names("input_layernorm", "input_layernorm", ("q_proj", "k_proj", "v_proj"), "separate", "dense", True),
}
FAMILIES = list(NAMES)


def loaded_of(model_type: str) -> Loaded:
    """float64: the tiny llama (GQA), GPT-2 and NeoX with large weights and biases; phi and mixtral from the
    family list (initializer_range 0.2)."""
    if model_type in ("llama", "gpt2", "gpt_neox"):
        loaded = tiny_loaded(model_type)
        gen = torch.Generator().manual_seed(1)
        for name, p in loaded.model.named_parameters():
            if p.dim() > 1:
                p.data = torch.randn(p.shape, generator=gen) * 0.2
            else:
                centre = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                p.data = centre + torch.randn(p.shape, generator=gen) * 0.3
    else:
        loaded = as_loaded(families.build(families.by_type(model_type)), f"tiny-{model_type}")
        loaded.model.config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    loaded.model.to(torch.float64)
    return loaded


@pytest.fixture(scope="module", params=FAMILIES)
def case(request: pytest.FixtureRequest) -> tuple[str, Loaded, Run, Run]:
    """(family, model, this run, other run): 12 tokens differing at positions 3 and 9."""
    loaded = loaded_of(request.param)
    a = families.ids(12, seed=3)
    b = list(a)
    b[3], b[9] = (a[3] + 11) % 120 + 3, (a[9] + 29) % 120 + 3
    return request.param, loaded, analyse(loaded, "", token_ids=a), analyse(loaded, "", token_ids=b)


# -- the reference: plain hooks on the full model ------------------------------------------------------------


def block(loaded: Loaded, layer: int) -> nn.Module:
    return loaded.adapter.layers[layer]


def attention(loaded: Loaded, layer: int) -> nn.Module:
    b = block(loaded, layer)
    return next(getattr(b, n) for n in ("self_attn", "attn", "attention") if hasattr(b, n))


def head_write(loaded: Loaded, names: Names, layer: int, z: torch.Tensor, head: int) -> torch.Tensor:
    """Head `head`'s write into the stream from the output-projection input z (T, H·hd)."""
    hd = loaded.adapter.layout.head_dim
    proj = getattr(attention(loaded, layer), names.out)
    w = proj.weight if isinstance(proj, nn.Linear) else proj.weight.T  # (d, H·hd)
    return z[:, head * hd : (head + 1) * hd] @ w[:, head * hd : (head + 1) * hd].T


def channel_slice(loaded: Loaded, names: Names, channel: str, index: int) -> tuple[int, slice]:
    """(projection index, its output features) of q of query head `index`, or k / v of KV head `index`."""
    lay = loaded.adapter.layout
    hd, h, k = lay.head_dim, lay.n_heads, lay.n_kv_heads
    which = "qkv".index(channel)
    if names.layout == "separate":
        return which, slice(index * hd, (index + 1) * hd)
    if names.layout == "per_head":
        return 0, slice((3 * index + which) * hd, (3 * index + which + 1) * hd)
    start = [0, h * hd, (h + k) * hd][which]
    return 0, slice(start + index * hd, start + (index + 1) * hd)


@contextmanager
def hooked(pairs: list[tuple[nn.Module, str, Callable[..., Any]]]) -> Iterator[None]:
    handles = []
    for module, kind, fn in pairs:
        if kind == "pre":
            handles.append(module.register_forward_pre_hook(fn))
        else:
            handles.append(module.register_forward_hook(fn))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sender_outputs(loaded: Loaded, names: Names, ids: list[int]) -> dict[str, torch.Tensor]:
    """Every sender's write into the stream, (T, d) each, from one plain forward."""
    z: dict[int, torch.Tensor] = {}
    m: dict[int, torch.Tensor] = {}
    emb: list[torch.Tensor] = []
    pairs: list[tuple[nn.Module, str, Callable[..., Any]]] = [
        (block(loaded, 0), "pre", lambda mod, args: emb.append(args[0][0]))
    ]
    for layer in range(loaded.adapter.layout.n_layers):
        out = getattr(attention(loaded, layer), names.out)
        pairs.append((out, "pre", lambda mod, args, layer=layer: z.__setitem__(layer, args[0][0])))
        mlp = block(loaded, layer).mlp
        pairs.append((mlp, "fwd", lambda mod, args, y, layer=layer: m.__setitem__(layer, y[0])))
    with torch.no_grad(), hooked(pairs):
        loaded.model(torch.tensor([ids]))
    return outputs_of(loaded, names, emb[0], z, m)


def outputs_of(
    loaded: Loaded, names: Names, emb: torch.Tensor, z: dict[int, torch.Tensor], m: dict[int, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {"emb": emb}
    for layer in z:  # as far as the forward has got
        for head in range(loaded.adapter.layout.n_heads):
            out[f"L{layer}H{head}"] = head_write(loaded, names, layer, z[layer], head)
    for layer in m:
        out[f"M{layer}"] = m[layer]
    return out


def reference_patch(
    loaded: Loaded, names: Names, this: Run, other: Run, edges: list[tuple[str, str, str]], pos: int
) -> float:
    """The metric of this run with `edges` patched: each receiver channel's input plus Σ (other − now) over its
    senders, computed edge by edge in hooks on one full forward of the CausalLM."""
    theirs = sender_outputs(loaded, names, other.token_ids)
    lay = loaded.adapter.layout
    z: dict[int, torch.Tensor] = {}
    m: dict[int, torch.Tensor] = {}
    emb: list[torch.Tensor] = []
    xs: dict[tuple[str, int], torch.Tensor] = {}

    def delta(target: str, channel: str) -> torch.Tensor:
        now = outputs_of(loaded, names, emb[0], z, m)
        total = torch.zeros_like(emb[0])
        for s, t, c in edges:
            if (t, c) == (target, channel):
                total = total + theirs[s] - now[s]
        return total

    def has(target: str, channel: str) -> bool:
        return any((t, c) == (target, channel) for _, t, c in edges)

    pairs: list[tuple[nn.Module, str, Callable[..., Any]]] = [
        (block(loaded, 0), "pre", lambda mod, args: emb.append(args[0][0]))
    ]
    for layer in range(lay.n_layers):
        att, blk = attention(loaded, layer), block(loaded, layer)
        attn_norm, mlp_norm = getattr(blk, names.attn_norm), getattr(blk, names.mlp_norm)
        pairs.append((attn_norm, "pre", lambda mod, args, layer=layer: xs.__setitem__(("a", layer), args[0][0])))
        if names.mlp_norm != names.attn_norm:
            pairs.append((mlp_norm, "pre", lambda mod, args, layer=layer: xs.__setitem__(("m", layer), args[0][0])))
        pairs.append((getattr(att, names.out), "pre", lambda mod, args, layer=layer: z.__setitem__(layer, args[0][0])))
        for i, proj_name in enumerate(names.qkv):
            proj = getattr(att, proj_name)

            def edit(mod: nn.Module, args: Any, y: torch.Tensor, layer: int = layer, i: int = i) -> torch.Tensor:
                y = y.clone()
                channels = [(f"L{layer}H{h}", "q", h) for h in range(lay.n_heads)]
                channels += [(f"L{layer}KV{g}", c, g) for c in "kv" for g in range(lay.n_kv_heads)]
                for target, channel, index in channels:
                    which, cols = channel_slice(loaded, names, channel, index)
                    if which == i and has(target, channel):
                        x = xs[("a", layer)] + delta(target, channel)
                        norm = getattr(block(loaded, layer), names.attn_norm)
                        y[0, :, cols] = mod.forward(norm.forward(x[None]))[0, :, cols]
                return y

            pairs.append((proj, "fwd", edit))

        def mlp_in(mod: nn.Module, args: Any, layer: int = layer) -> Any:
            if not has(f"M{layer}", "in"):
                return None
            key = ("a", layer) if names.mlp_norm == names.attn_norm else ("m", layer)
            norm = getattr(block(loaded, layer), names.mlp_norm)
            return (norm.forward((xs[key] + delta(f"M{layer}", "in"))[None]),)

        pairs.append((blk.mlp, "pre", mlp_in))
        pairs.append((blk.mlp, "fwd", lambda mod, args, y, layer=layer: m.__setitem__(layer, y[0])))

    def final_in(mod: nn.Module, args: Any) -> Any:
        return (args[0] + delta("logits", "in")[None],) if has("logits", "in") else None

    pairs.append((loaded.adapter.final_norm(), "pre", final_in))
    with torch.no_grad(), hooked(pairs):
        logits = loaded.model(torch.tensor([this.token_ids])).logits[0, pos]
    return float(logits[ANSWER] - logits[WRONG])


def metric_of(loaded: Loaded, run: Run, pos: int) -> float:
    return float(path_patching.metric(loaded, run.hidden[pos : pos + 1], ANSWER, WRONG)[0])


def some_edges(graph: Graph, k: int, seed: int) -> list[tuple[str, str, str]]:
    """k edges drawn at random from the graph, as (source, target, channel)."""
    every = path_patching.all_edges(graph)
    picked = torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))[:k].tolist()
    return [(graph.senders[every[i][0]], graph.receivers[every[i][1]].target, graph.receivers[every[i][1]].channel)
            for i in picked]  # fmt: skip


def as_row(graph: Graph, edges: list[tuple[str, str, str]]) -> path_patching.Row:
    return tuple(graph.edge(*e) for e in edges)


# -- exact path patching -------------------------------------------------------------------------------------


def test_path_patching_equals_the_hook_reference(case: tuple[str, Loaded, Run, Run]) -> None:
    family, loaded, this, other = case
    names, graph = NAMES[family], Graph.of(loaded.adapter)
    assert graph.parallel == (names.parallel,) * graph.n_layers
    pos = this.n_tokens - 1
    sets = [some_edges(graph, k, seed) for k, seed in ((1, 0), (3, 1), (8, 2), (25, 3))]
    sets.append([("emb", "L1KV0", "k"), ("L0H1", "L1KV0", "k"), ("L0H2", "L1H3", "q"), ("M0", "logits", "in")])
    sets.append([("emb", "M0", "in"), ("L0H0", "M0", "in")] if not names.parallel else [("emb", "M0", "in")])
    sets.append([("L1H2", "logits", "in"), ("M1", "logits", "in"), ("emb", "L0KV1", "v")])
    got = path_patching.metrics(loaded, this, other, [as_row(graph, e) for e in sets], pos, ANSWER, WRONG)
    for edges, value in zip(sets, got.tolist(), strict=True):
        assert value == pytest.approx(reference_patch(loaded, names, this, other, edges, pos), abs=1e-9), edges
    # and the effects are real: some set moves the metric by far more than the tolerance
    assert float((got - metric_of(loaded, this, pos)).abs().max()) > 1e-2
    assert hook_count(loaded.model) == 0


def test_patching_every_edge_gives_the_other_run_and_none_this_run(case: tuple[str, Loaded, Run, Run]) -> None:
    _, loaded, this, other = case
    graph = Graph.of(loaded.adapter)
    for pos in (this.n_tokens - 1, 6):
        rows = [path_patching.all_edges(graph), ()]
        got = path_patching.metrics(loaded, this, other, rows, pos, ANSWER, WRONG)
        assert float(got[0]) == pytest.approx(metric_of(loaded, other, pos), abs=1e-9)
        assert float(got[1]) == metric_of(loaded, this, pos)  # bit for bit
    assert path_patching.check(loaded) is None


def test_patching_a_run_into_itself_changes_nothing() -> None:
    loaded = loaded_of("llama")
    loaded.model.to(torch.float32)
    run = analyse(loaded, "", token_ids=families.ids(10, seed=4))
    graph = Graph.of(loaded.adapter)
    rows = [path_patching.all_edges(graph), *(as_row(graph, some_edges(graph, 5, s)) for s in range(4))]
    got = path_patching.metrics(loaded, run, run, rows, 9, ANSWER, WRONG)
    assert torch.allclose(got, torch.full_like(got, metric_of(loaded, run, 9)), atol=1e-5)


# -- EAP and EAP-IG ------------------------------------------------------------------------------------------


def channel_gradients(
    loaded: Loaded, names: Names, this: Run, other: Run, pos: int, alpha: float
) -> dict[tuple[str, str], torch.Tensor]:
    """∂metric/∂(a zero added to each receiver channel's own copy of its input), (T, d) each, on this run with
    its block-0 input moved `alpha` of the way to the other's; one forward and backward with plain hooks."""
    lay = loaded.adapter.layout
    n = pos + 1
    d = lay.d_model
    eps: dict[tuple[str, str], torch.Tensor] = {}
    for layer in range(lay.n_layers):
        for h in range(lay.n_heads):
            eps[(f"L{layer}H{h}", "q")] = torch.zeros(n, d, dtype=torch.float64, requires_grad=True)
        for c in "kv":
            for g in range(lay.n_kv_heads):
                eps[(f"L{layer}KV{g}", c)] = torch.zeros(n, d, dtype=torch.float64, requires_grad=True)
        eps[(f"M{layer}", "in")] = torch.zeros(n, d, dtype=torch.float64, requires_grad=True)
    eps[("logits", "in")] = torch.zeros(n, d, dtype=torch.float64, requires_grad=True)
    e_this, e_other = this.layer_inputs[0][0, :n].clone(), other.layer_inputs[0][0, :n].clone()
    xs: dict[tuple[str, int], torch.Tensor] = {}
    pairs: list[tuple[nn.Module, str, Callable[..., Any]]] = [
        (block(loaded, 0), "pre", lambda mod, args: (e_this + alpha * (e_other - e_this))[None])
    ]
    for layer in range(lay.n_layers):
        att, blk = attention(loaded, layer), block(loaded, layer)
        norm, mlp_norm = getattr(blk, names.attn_norm), getattr(blk, names.mlp_norm)
        pairs.append((norm, "pre", lambda mod, args, layer=layer: xs.__setitem__(("a", layer), args[0][0])))
        for i, proj_name in enumerate(names.qkv):

            def edit(mod: nn.Module, args: Any, y: torch.Tensor, layer: int = layer, i: int = i) -> torch.Tensor:
                norm = getattr(block(loaded, layer), names.attn_norm)
                parts = list(y[0].unbind(-1))
                channels = [(f"L{layer}H{h}", "q", h) for h in range(lay.n_heads)]
                channels += [(f"L{layer}KV{g}", c, g) for c in "kv" for g in range(lay.n_kv_heads)]
                for target, channel, index in channels:
                    which, cols = channel_slice(loaded, names, channel, index)
                    if which == i:
                        own = mod.forward(norm.forward((xs[("a", layer)] + eps[(target, channel)])[None]))[0]
                        for col in range(cols.start, cols.stop):
                            parts[col] = own[:, col]
                return torch.stack(parts, -1)[None]

            pairs.append((getattr(att, proj_name), "fwd", edit))

        def mlp_in(mod: nn.Module, args: Any, layer: int = layer, mlp_norm: nn.Module = mlp_norm) -> Any:
            return (mlp_norm.forward(xs[("m", layer)] + eps[(f"M{layer}", "in")][None]),)

        pairs.append((mlp_norm, "pre", lambda mod, args, layer=layer: xs.__setitem__(("m", layer), args[0])))
        pairs.append((blk.mlp, "pre", mlp_in))
    pairs.append((loaded.adapter.final_norm(), "pre", lambda mod, args: (args[0] + eps[("logits", "in")][None],)))
    with torch.enable_grad(), hooked(pairs):
        logits = loaded.model(torch.tensor([this.token_ids[:n]])).logits[0, -1]
        (logits[ANSWER] - logits[WRONG]).backward()
    return {key: e.grad for key, e in eps.items() if e.grad is not None}


def reference_scores(
    loaded: Loaded, names: Names, this: Run, other: Run, pos: int, steps: int
) -> dict[tuple[str, str, str], float]:
    """Every edge's score: the sender's difference times the channel's gradient averaged over the steps."""
    n = pos + 1
    mine, theirs = sender_outputs(loaded, names, this.token_ids), sender_outputs(loaded, names, other.token_ids)
    grads = [channel_gradients(loaded, names, this, other, pos, k / steps) for k in range(steps)]
    graph = Graph.of(loaded.adapter)
    out = {}
    for s, r in path_patching.all_edges(graph):
        sender, rec = graph.senders[s], graph.receivers[r]
        g = sum(gr[(rec.target, rec.channel)] for gr in grads) / steps
        out[(sender, rec.target, rec.channel)] = float(((theirs[sender] - mine[sender])[:n] * g).sum())
    return out


@pytest.mark.parametrize("steps", [1, 3])
def test_eap_scores_are_gradient_times_difference(case: tuple[str, Loaded, Run, Run], steps: int) -> None:
    family, loaded, this, other = case
    pos = this.n_tokens - 1
    got = circuits.attribute(loaded, this, other, pos, ANSWER, WRONG, steps=steps)
    want = reference_scores(loaded, NAMES[family], this, other, pos, steps)
    graph = got.graph
    assert got.scores.shape == (len(graph.receivers), len(graph.senders))
    biggest = max(abs(v) for v in want.values())
    assert biggest > 1e-3
    # Llama-family RMSNorms compute in float32 even in a float64 model, and their backward rounds the gradient
    # there: 1e-6 of the largest score is that rounding, far below any score that matters
    for (s, t, c), value in want.items():
        i, j = graph.sender_index(s), graph.receiver_index(t, c)
        assert float(got.scores[j, i]) == pytest.approx(value, abs=1e-6 * biggest), (s, t, c)
    valid = torch.arange(len(graph.senders))[None, :] < torch.tensor(graph.prefix)[:, None]
    assert torch.all(got.scores[~valid] == 0)
    assert len(got.ranked()) == graph.n_edges == int(valid.sum())
    assert got.metric_this == metric_of(loaded, this, pos) and got.metric_other == metric_of(loaded, other, pos)


def test_node_scores_are_attribution_patching_of_each_output(case: tuple[str, Loaded, Run, Run]) -> None:
    """Σ of a node's outgoing edges = (out(other) − out(this)) · ∂metric/∂out, TransformerLens's attribution
    patching (for a head: its output-projection input slice times the gradient there)."""
    family, loaded, this, other = case
    names = NAMES[family]
    pos = 8
    got = circuits.attribute(loaded, this, other, pos, ANSWER, WRONG)
    lay = loaded.adapter.layout
    z: dict[int, torch.Tensor] = {}
    m: dict[int, torch.Tensor] = {}
    emb: list[torch.Tensor] = []

    def keep(into: dict[int, torch.Tensor], layer: int, x: torch.Tensor) -> None:
        x.retain_grad()
        into[layer] = x

    leaf = this.layer_inputs[0][:, : pos + 1].clone().requires_grad_()
    pairs: list[tuple[nn.Module, str, Callable[..., Any]]] = [(block(loaded, 0), "pre", lambda mod, args: leaf)]
    pairs.append((block(loaded, 0), "pre", lambda mod, args: emb.append(args[0])))
    for layer in range(lay.n_layers):
        out = getattr(attention(loaded, layer), names.out)
        pairs.append((out, "pre", lambda mod, args, layer=layer: keep(z, layer, args[0])))
        pairs.append((block(loaded, layer).mlp, "fwd", lambda mod, args, y, layer=layer: keep(m, layer, y)))
    with torch.enable_grad(), hooked(pairs):
        logits = loaded.model(torch.tensor([this.token_ids[: pos + 1]])).logits[0, -1]
        (logits[ANSWER] - logits[WRONG]).backward()
    theirs_z: dict[int, torch.Tensor] = {}
    theirs_m: dict[int, torch.Tensor] = {}
    with torch.no_grad(), hooked(
        [(getattr(attention(loaded, la), names.out), "pre", lambda mod, a, la=la: theirs_z.__setitem__(la, a[0]))
         for la in range(lay.n_layers)]
        + [(block(loaded, la).mlp, "fwd", lambda mod, a, y, la=la: theirs_m.__setitem__(la, y))
           for la in range(lay.n_layers)]
    ):  # fmt: skip
        loaded.model(torch.tensor([other.token_ids[: pos + 1]]))
    graph, hd = got.graph, lay.head_dim
    scores = got.node_scores
    assert leaf.grad is not None
    emb_score = float(((other.layer_inputs[0][:, : pos + 1] - leaf.detach()) * leaf.grad).sum())
    tol = 1e-6 * float(scores.abs().max())  # float32 RMSNorm backward (see above)
    assert float(scores[0]) == pytest.approx(emb_score, abs=tol)
    for layer in range(lay.n_layers):
        gz = z[layer].grad
        assert gz is not None
        for head in range(lay.n_heads):
            cols = slice(head * hd, (head + 1) * hd)
            want = float(((theirs_z[layer][..., cols] - z[layer].detach()[..., cols]) * gz[..., cols]).sum())
            assert float(scores[graph.head_sender(layer, head)]) == pytest.approx(want, abs=tol)
        gm = m[layer].grad
        assert gm is not None
        want = float(((theirs_m[layer] - m[layer].detach()) * gm).sum())
        assert float(scores[graph.mlp_sender(layer)]) == pytest.approx(want, abs=tol)


# -- the graph -----------------------------------------------------------------------------------------------


def test_graph_ids_channels_and_direction() -> None:
    seq = Graph(n_layers=3, n_heads=4, n_kv_heads=2, parallel=(False,) * 3)
    par = Graph(n_layers=3, n_heads=4, n_kv_heads=2, parallel=(True,) * 3)
    assert len(seq.senders) == 1 + 3 * 5 and len(seq.receivers) == 3 * 9 + 1
    assert seq.senders[seq.sender_index("L2H3")] == "L2H3" and seq.sender_index("M1") == seq.mlp_sender(1)
    r = seq.receiver_index("L1KV1", "v")
    assert (seq.receivers[r].target, seq.receivers[r].channel) == ("L1KV1", "v")
    assert seq.edge("L0H1", "L1KV0", "k") == (seq.sender_index("L0H1"), seq.receiver_index("L1KV0", "k"))
    assert seq.edge("L1H2", "M1", "in")  # a sequential MLP reads its own layer's heads
    with pytest.raises(NotAnEdge, match="parallel"):
        par.edge("L1H2", "M1", "in")
    assert par.n_edges == seq.n_edges - 3 * 4
    with pytest.raises(NotAnEdge, match="backwards"):
        seq.edge("L2H0", "L1H0", "q")
    with pytest.raises(NotAnEdge, match="backwards"):
        seq.edge("L1H0", "L1H1", "q")
    with pytest.raises(NotAnEdge, match="channels are k, v"):
        seq.edge("L0H0", "L1KV0", "q")
    with pytest.raises(NotAnEdge, match="only receive"):
        seq.edge("L0KV0", "L1H0", "q")
    for bad in ("L3H0", "L0H4", "L0KV2", "M9", "H1", "L0H", "logit"):
        with pytest.raises(UnknownNode):
            seq.edge(bad, "logits", "in")
    assert seq.edge("M2", "logits", "in")[1] == len(seq.receivers) - 1


def test_families_with_norms_on_the_outputs_are_refused() -> None:
    for model_type in ("gemma2", "olmo2"):
        loaded = as_loaded(families.build(families.by_type(model_type)), model_type)
        gap = path_patching.check(loaded)
        assert gap is not None and model_type in gap and "normalises" in gap


@pytest.mark.parametrize("node", ["emb", "L0H1", "M0", "L1KV0", "L1H2", "logits"])
def test_a_node_s_edges_per_position_sum_to_their_scores(node: str) -> None:
    loaded = loaded_of("llama")
    a = families.ids(12, seed=3)
    b = list(a)
    b[3], b[9] = (a[3] + 11) % 120 + 3, (a[9] + 29) % 120 + 3
    this, other = analyse(loaded, "", token_ids=a), analyse(loaded, "", token_ids=b)
    att = circuits.attribute(loaded, this, other, 10, ANSWER, WRONG, steps=2, node=node)
    assert att.focus is not None
    edges = att.focus.edges(att.graph)
    graph = att.graph
    want = {(s, r) for s, r in path_patching.all_edges(graph) if node in (graph.senders[s], graph.receivers[r].target)}
    assert {(s, r) for s, r, _ in edges} == want and want
    for s, r, per in edges:
        assert per.shape == (11,)
        assert float(per.sum()) == pytest.approx(float(att.scores[r, s]), abs=1e-9)
    assert any(float(per.abs().max()) > 1e-3 for _, _, per in edges) or node == "logits"
    with pytest.raises(UnknownNode):
        circuits.attribute(loaded, this, other, 10, ANSWER, WRONG, node="L9H0")
