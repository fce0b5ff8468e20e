"""QK attribution against its definition: on every served family the terms add up to the captured score; each
term equals one recomputed from hooked node outputs through the model's own norms and RoPE."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import torch
from torch import nn

from app.inspect.engine.runs import analyse
from app.inspect.model.blocks import norm_form
from app.inspect.model.loaded import Loaded
from app.inspect.observe import head_circuits, qk_attribution
from tests.support import families
from tests.support.families import WINDOW
from tests.support.models import as_loaded, tiny_loaded
from tests.test_weights import scrambled

N = 3 * WINDOW  # 12 tokens: the last query's window (4) starts at key 8
CELLS = [(N - 1, 0), (N - 1, N - WINDOW), (N - 1, N - WINDOW - 1), (N - 1, N - 1), (5, 2), (0, 0)]


@pytest.mark.parametrize("model_type", families.SERVED)
def test_terms_sum_to_the_captured_score(model_type: str) -> None:
    loaded = families.served(model_type)
    lay = loaded.adapter.layout
    run = analyse(loaded, "", token_ids=families.ids(N))
    for layer in range(lay.n_layers):
        for head in (0, lay.n_heads - 1):
            for q, k in CELLS:
                cell = qk_attribution.cell(loaded, run, layer, head, q, k)
                assert cell.total == pytest.approx(cell.score, abs=1e-4 * (1 + abs(cell.score)))
                assert len(cell.nodes) == 2 + layer * (lay.n_heads + 1) and cell.terms.shape == (len(cell.nodes),) * 2
                assert cell.masked == (cell.weight == 0.0)  # a masked key is attributed all the same
        row = qk_attribution.query_row(loaded, run, layer, lay.n_heads - 1, N - 1)
        torch.testing.assert_close(row.key_sums.sum(0), row.scores.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(row.query_sums.sum(0), row.scores.float(), atol=1e-4, rtol=1e-4)
        window = getattr(run.qk[layer], "sliding_window", None)
        if window is not None:  # the sliding-window edge: the first key inside is kept, the one before is masked
            assert row.masked.tolist() == [j <= N - 1 - window for j in range(N)]


def test_soft_capped_head_explains_the_score_before_its_cap() -> None:
    loaded = families.served("gemma2")
    run = analyse(loaded, "", token_ids=families.ids(N))
    row = qk_attribution.query_row(loaded, run, 1, 2, N - 1)  # layer 1: global
    assert row.softcap == 2.0
    capped = torch.tanh(row.scores / row.softcap) * row.softcap
    torch.testing.assert_close(torch.softmax(capped, -1).float(), row.weights, atol=1e-5, rtol=1e-4)
    assert row.scores.abs().max() > row.softcap  # the cap matters here, and the terms explain what is under it


def test_keys_rank_as_the_map_ranks_them() -> None:
    loaded = families.served("llama")
    run = analyse(loaded, "", token_ids=families.ids(N))
    row = qk_attribution.query_row(loaded, run, 1, 1, N - 1, top=4)
    assert torch.equal(torch.argsort(row.key_sums.sum(0), descending=True), torch.argsort(row.weights, descending=True))
    for j, top in enumerate(row.top):  # each key's top terms are its largest, and real entries of its term matrix
        cell = qk_attribution.cell(loaded, run, 1, 1, N - 1, j)
        largest = cell.terms.abs().flatten().topk(4).values
        torch.testing.assert_close(torch.tensor([abs(v) for _, _, v in top]), largest, atol=1e-5, rtol=1e-5)
        assert all(cell.terms[a, b] == pytest.approx(v, abs=1e-5) for a, b, v in top)


# -- each term from hooked node outputs -----------------------------------------------------------------------------


def hooked_nodes(loaded: Loaded, ids: list[int]) -> dict[str, torch.Tensor]:
    """Reference node writes (T, d) at layer 1's input: the block-0 input, each head's slice of the output
    projection's input times its columns, the MLP's output (bias removed); `bias` holds what is left."""
    adapter, lay = loaded.adapter, loaded.adapter.layout
    seen: dict[str, torch.Tensor] = {}
    mlp = adapter.block_part(0, "mlp")

    def block_in(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[name] = (args[0] if args else kwargs["hidden_states"])[0].detach().clone()

        return hook

    handles = [
        adapter.layers[0].register_forward_pre_hook(block_in("in0"), with_kwargs=True),
        adapter.layers[1].register_forward_pre_hook(block_in("in1"), with_kwargs=True),
        adapter.out_proj(0).register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0][0].detach().clone())),
        mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out[0].detach().clone())),
    ]
    with torch.no_grad():
        loaded.model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    hd = lay.head_dim
    w_o = adapter.out_proj(0).weight.detach()  # (d, H*hd) for nn.Linear
    if not isinstance(adapter.out_proj(0), nn.Linear):
        w_o = w_o.T  # GPT-2's Conv1D
    nodes = {"emb": seen["in0"]}
    for h in range(lay.n_heads):
        nodes[f"L0H{h}"] = seen["z"][:, h * hd : (h + 1) * hd] @ w_o[:, h * hd : (h + 1) * hd].T
    out_bias = getattr(adapter.block_part(0, loaded.adapter.family.mlp_out), "bias", None)
    nodes["M0"] = seen["mlp"] - (0 if out_bias is None else out_bias.detach())
    nodes["bias"] = seen["in1"] - sum(nodes.values())
    return nodes


def reference_vectors(
    loaded: Loaded, nodes: dict[str, torch.Tensor], x: torch.Tensor, pos: int, side: str
) -> torch.Tensor:
    """Each node's part (n_nodes, hd) of layer 1 head 1's query (or its KV head's key) at `pos`: the input norm
    frozen at x[pos], the projection, the QK-norm frozen at the real pre-norm vector, then the model's own RoPE."""
    adapter, lay = loaded.adapter, loaded.adapter.layout
    block, attn = adapter.layers[1], adapter.attention(1)
    hd = lay.head_dim
    head = 1 if side == "q" else lay.kv_head(1)
    norm = getattr(block, adapter.family.attn_norm)
    form = norm_form(norm)
    c = x[pos] - x[pos].mean() if form.centred else x[pos]
    sigma = torch.rsqrt(c.pow(2).mean() + form.eps)
    if lay.architecture == "gpt2":
        d = lay.d_model
        w_all = attn.c_attn.weight.detach()  # (d, 3d)
        offset = {"q": 0, "k": d}[side]
        w = w_all[:, offset + head * hd : offset + (head + 1) * hd]
        b = attn.c_attn.bias.detach()[offset + head * hd : offset + (head + 1) * hd]
    elif lay.architecture == "gpt_neox":  # rows per head: [q, k, v]
        i = {"q": 0, "k": 1}[side]
        w = attn.query_key_value.weight.detach().view(lay.n_heads, 3, hd, -1)[head, i].T
        b = attn.query_key_value.bias.detach().view(lay.n_heads, 3, hd)[head, i]
    else:
        lin = getattr(attn, f"{side}_proj")
        w, b = lin.weight.detach()[head * hd : (head + 1) * hd].T, lin.bias
        b = torch.zeros(hd) if b is None else b.detach()[head * hd : (head + 1) * hd]
    parts = []
    for name, node in nodes.items():
        v = node[pos] - node[pos].mean() if form.centred else node[pos]
        v = form.scale * v * sigma @ w
        if name == "bias":
            v = v + (0 if form.bias is None else form.bias @ w) + b
        parts.append(v)
    out = torch.stack(parts)  # (N, hd) before any QK-norm
    qk_norm = getattr(attn, f"{side}_norm", None)
    if qk_norm is not None:  # Qwen3: RMSNorm over head_dim with weight; frozen at the real pre-norm vector
        real = out.sum(0)
        out = out * torch.rsqrt(real.pow(2).mean() + qk_norm.variance_epsilon) * qk_norm.weight.detach()
    rotary = getattr(adapter.backbone(), "rotary_emb", None)
    if rotary is not None:
        cos, sin = rotary(out[None], position_ids=torch.tensor([[pos]]))
        apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        out = apply(out[None, :, None], out[None, :, None], cos, sin)[0][0, :, 0]
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen3"])
def test_each_term_equals_one_from_hooked_node_outputs(arch: str) -> None:
    if arch == "qwen3":
        loaded = scrambled(as_loaded(families.build(families.by_type("qwen3")), "tiny-qwen3"))
    else:
        loaded = scrambled(tiny_loaded(arch))
    loaded.model.double()
    ids = [t % loaded.adapter.layout.vocab_size for t in (464, 3797, 3332, 319, 262, 2603, 13, 383, 3797, 3332)]
    run = analyse(loaded, "", token_ids=ids)
    nodes = hooked_nodes(loaded, ids)
    x = run.layer_inputs[1][0]
    scale = run.qk[1].scaling
    for q_pos, k_pos in [(9, 0), (9, 8), (4, 4), (7, 1)]:
        cell = qk_attribution.cell(loaded, run, 1, 1, q_pos, k_pos)
        assert cell.nodes == list(nodes)
        if arch == "gpt_neox":  # the reference applies the model's own RoPE, partial rotary included
            assert cell.rope.startswith("rotary, halves")
        q = reference_vectors(loaded, nodes, x, q_pos, "q")
        k = reference_vectors(loaded, nodes, x, k_pos, "k")
        want = q @ k.T * scale
        # float64, but the norms inside the model round to float32 (RMSNorm upcasts to float32 and back), which the
        # rotation fitted to the captured q and k carries: agreement to float32 rounding, not float64's
        torch.testing.assert_close(cell.terms, want, atol=1e-6 * (1 + want.abs().max()), rtol=1e-6)
        assert cell.total == pytest.approx(cell.score, rel=1e-6, abs=1e-6)
        assert not math.isnan(cell.weight)


def test_alibi_bias_is_reported_beside_the_terms() -> None:
    loaded = families.served("bloom")
    run = analyse(loaded, "", token_ids=families.ids(N))
    row = qk_attribution.query_row(loaded, run, 1, 2, N - 1)
    assert row.position_bias is not None and row.position_bias.abs().max() > 0
    torch.testing.assert_close(
        torch.softmax(row.scores + row.position_bias, -1).float(), row.weights, atol=1e-5, rtol=1e-4
    )
    cell = qk_attribution.cell(loaded, run, 1, 2, N - 1, 3)
    assert cell.position_bias == pytest.approx(float(row.position_bias[3]))
    assert cell.total == pytest.approx(cell.score, abs=1e-4)  # the terms explain q·k·scale; the bias sits beside
    positional = head_circuits.head_circuit(loaded, 1, 2).positional
    assert not positional.defined and positional.reason is not None and positional.reason.startswith("ALiBi")
