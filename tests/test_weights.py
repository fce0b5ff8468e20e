"""Weight-based circuits against their definitions: composition scores vs a float64 computation from the state
dict, the QK-norm linearisation, planted copying and previous-token heads."""

from __future__ import annotations

import pytest
import torch

from app.inspect.engine.runs import analyse
from app.inspect.model.loaded import Loaded
from app.inspect.observe import composition, head_circuits, qk_attribution, qkv
from tests.support import families
from tests.support.models import as_loaded, tiny_loaded

F64 = torch.float64


def scrambled(loaded: Loaded, seed: int = 3) -> Loaded:
    """Norm gains far from 1 (so folding them matters) and non-zero biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in loaded.model.named_parameters():
        if p.dim() == 1:
            centre = 1.0 if "norm" in name or "ln" in name else 0.0
            p.data = centre + torch.randn(p.shape, generator=gen) * 0.5
    return loaded


def model(kind: str) -> Loaded:
    if kind == "qwen3":
        return scrambled(as_loaded(families.build(families.by_type("qwen3")), "tiny-qwen3"))
    return scrambled(tiny_loaded(kind))


def state_dict_heads(loaded: Loaded, layer: int) -> tuple[torch.Tensor, ...]:
    """Reference: (W_Q, W_K, W_V per query head (H, d, hd), W_O (H, hd, d)) in float64 from the state dict by
    each family's parameter names, input norm (and QK-norm) folded in by hand."""
    sd = {k: v.to(F64) for k, v in loaded.model.state_dict().items()}
    lay = loaded.adapter.layout
    h, kv, hd, d = lay.n_heads, lay.n_kv_heads, lay.head_dim, lay.d_model
    arch = lay.architecture
    centre = torch.eye(d, dtype=F64) - 1.0 / d
    if arch == "gpt2":
        p = f"transformer.h.{layer}."
        wq, wk, wv = sd[p + "attn.c_attn.weight"].split(d, dim=1)  # Conv1D: x @ W, columns [q | k | v]
        wo = sd[p + "attn.c_proj.weight"]  # (H*hd, d)
        fold = centre @ torch.diag(sd[p + "ln_1.weight"])
    elif arch == "gpt_neox":
        p = f"gpt_neox.layers.{layer}."
        rows = sd[p + "attention.query_key_value.weight"].view(h, 3, hd, d)  # per head [q, k, v]
        wq, wk, wv = (rows[:, i].reshape(h * hd, d).T for i in range(3))
        wo = sd[p + "attention.dense.weight"].T
        fold = centre @ torch.diag(sd[p + "input_layernorm.weight"])
    else:
        p = f"model.layers.{layer}."
        wq, wk, wv, wo = (sd[p + f"self_attn.{n}_proj.weight"].T for n in "qkvo")
        fold = torch.diag(sd[p + "input_layernorm.weight"])
    q = (fold @ wq).view(d, h, hd).permute(1, 0, 2)
    k = (fold @ wk).view(d, kv, hd).permute(1, 0, 2)
    v = (fold @ wv).view(d, kv, hd).permute(1, 0, 2)
    if arch == "qwen3":  # q_norm / k_norm: RMSNorm over head_dim, weight folded after the projection
        q = q * sd[p + "self_attn.q_norm.weight"]
        k = k * sd[p + "self_attn.k_norm.weight"]
    group = torch.arange(h) // lay.group_size
    return q, k[group], v[group], wo.reshape(h, hd, d)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen3"])
def test_composition_equals_direct_float64(arch: str) -> None:
    loaded = model(arch)
    lay = loaded.adapter.layout
    heads = [state_dict_heads(loaded, layer) for layer in range(lay.n_layers)]
    for kind in composition.KINDS:
        got = composition.composition(loaded.adapter, kind)
        want = torch.full_like(got.scores, float("nan"), dtype=F64)
        for i, (a, ha) in enumerate(got.heads):
            for j, (b, hb) in enumerate(got.heads):
                if b <= a:
                    continue
                q, k, v, o = (t[hb] for t in heads[b])
                ov = heads[a][2][ha] @ heads[a][3][ha]  # (d, d)
                m = {"q": q @ k.T, "k": (q @ k.T).T, "v": v @ o}[kind]
                want[i, j] = (ov @ m).norm() / (ov.norm() * m.norm())
        assert torch.equal(got.scores.isnan(), want.isnan())
        torch.testing.assert_close(got.scores.nan_to_num().double(), want.nan_to_num(), atol=2e-6, rtol=1e-5)
        for b, hb in [(1, 0), (lay.n_layers - 1, lay.n_heads - 1)]:  # the pairwise path gives the same column
            col = composition.column(loaded.adapter, kind, b, hb)
            torch.testing.assert_close(col, got.scores[:, b * lay.n_heads + hb], atol=2e-6, rtol=1e-5, equal_nan=True)
        assert (got.note is not None) == (arch == "qwen3" and kind != "v")


def test_baseline_is_seeded_and_below_the_planted_scores() -> None:
    mean, std = composition.baseline("k", 64, 16)
    assert (mean, std) == composition.baseline.__wrapped__("k", 64, 16)
    assert 0 < mean < 0.5 and 0 < std < mean
    gen = torch.Generator().manual_seed(9)  # a receiver reading exactly what the sender writes scores 1
    v, o = torch.randn(1, 64, 16, generator=gen), torch.randn(1, 16, 64, generator=gen)
    f = composition.sender(v, o)
    x = composition.receiver("v", o.transpose(1, 2), v, o.transpose(1, 2), v.transpose(1, 2))
    assert float(composition.pair_scores(f / f.norm(), x / x.norm())) > 0.3 > mean


@pytest.mark.parametrize("arch", ["qwen3", "olmo2"])
def test_qk_norm_is_a_positive_multiple_of_the_folded_map(arch: str) -> None:
    """The linearisation the circuits use: the model's query (input norm, q_proj, q_norm) of any x is a positive
    multiple of x·W_Q with the norms' scales folded in, head by head (σ's are the only non-linear part)."""
    loaded = scrambled(as_loaded(families.build(families.by_type(arch)), f"tiny-{arch}"))
    adapter, lay = loaded.adapter, loaded.adapter.layout
    attn, w = adapter.attention(0), qkv.folded(adapter, 0)
    x = torch.randn(5, lay.d_model, generator=torch.Generator().manual_seed(0)) * 3 + 1
    norm = getattr(adapter.layers[0], "input_layernorm", None) if arch != "olmo2" else None
    normed = norm(x) if norm is not None else x
    with torch.no_grad():
        pre = attn.q_proj(normed)  # (5, H * hd)
        actual = (attn.q_norm(pre.view(5, lay.n_heads, -1)) if arch == "qwen3" else attn.q_norm(pre)).view(
            5, lay.n_heads, -1
        )
    linear = torch.einsum("pd,hde->phe", x, w.q)
    cos = torch.nn.functional.cosine_similarity(actual, linear, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-5, rtol=0)


def planted_copier(sign: float) -> Loaded:
    """Tiny llama, unembedding tied to the embedding, every norm gain 1, and head (1, 2)'s W_OV = sign·B·Bᵀ for an
    orthonormal B (d × head_dim): its full OV circuit E·W_OV·Eᵀ is ± a Gram matrix."""
    loaded = tiny_loaded("llama")
    m, lay = loaded.model, loaded.adapter.layout
    m.lm_head.weight.data = m.model.embed_tokens.weight.data.clone()
    hd, g = lay.head_dim, lay.kv_head(2)
    basis = torch.linalg.qr(torch.randn(lay.d_model, hd, generator=torch.Generator().manual_seed(4)))[0]
    attn = m.model.layers[1].self_attn
    attn.v_proj.weight.data[g * hd : (g + 1) * hd] = sign * basis.T  # x·W_V = x·B
    attn.o_proj.weight.data[:, 2 * hd : 3 * hd] = basis  # z·W_O = z·Bᵀ
    return loaded


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_copying_head_scores_plus_or_minus_one(sign: float) -> None:
    loaded = planted_copier(sign)
    got = head_circuits.head_circuit(loaded, 1, 2)
    assert got.copying_score == pytest.approx(sign, abs=1e-5)
    assert len(got.ov_singular_values) == loaded.adapter.layout.head_dim
    torch.testing.assert_close(torch.tensor(got.ov_singular_values), torch.ones(8), atol=1e-5, rtol=0)
    other = head_circuits.head_circuit(loaded, 1, 0).copying_score  # untouched random head: neither
    assert -0.99 < other < 0.99
    if sign > 0:  # a token ranks itself near the top (an 8-dim projection of 50257 tokens), a random head does not
        ids = list(range(100, 120))
        ranks = [r.self_rank for r in head_circuits.head_circuit(loaded, 1, 2, token_ids=ids).token_map]
        random = [r.self_rank for r in head_circuits.head_circuit(loaded, 1, 0, token_ids=ids).token_map]
        assert sorted(ranks)[10] < 500 < sorted(random)[10]


def planted_previous_token_head() -> Loaded:
    """Tiny GPT-2 whose head (1, 2) attends to the previous token through the position embeddings alone: positions
    0..15 are one-hot (×8) in dims 0..15, which tokens do not use; W_Q maps dim t to u_(t mod 8) and W_K maps dim t
    to u_((t+1) mod 8) (u: the head's 8 dims), so q_i·k_j is large when j = i − 1 (mod 8)."""
    loaded = tiny_loaded("gpt2")
    m, lay = loaded.model, loaded.adapter.layout
    d, hd = lay.d_model, lay.head_dim
    m.transformer.wte.weight.data[:, :16] = 0
    m.transformer.wpe.weight.data.zero_()
    m.transformer.wpe.weight.data[torch.arange(16), torch.arange(16)] = 8.0
    attn = m.transformer.h[1].attn
    w = attn.c_attn.weight.data  # (d, 3d): x @ W, columns [q | k | v]
    w[:, 2 * hd : 3 * hd] = 0
    w[:, d + 2 * hd : d + 3 * hd] = 0
    for t in range(16):
        w[t, 2 * hd + t % hd] = 2.0
        w[t, d + 2 * hd + (t + 1) % hd] = 2.0
    attn.c_attn.bias.data.zero_()
    m.transformer.h[1].ln_1.bias.data.zero_()
    return loaded


def test_planted_previous_token_head() -> None:
    loaded = planted_previous_token_head()
    got = head_circuits.head_circuit(loaded, 1, 2).positional
    assert got.defined and got.previous_token == got.offset_mass[1]
    assert got.offset_mass[1] > 5 * max(got.offset_mass[:1] + got.offset_mass[2:])  # positions ≥ 16 see uniform
    rotary = head_circuits.head_circuit(tiny_loaded("llama"), 1, 2).positional
    assert not rotary.defined and rotary.reason is not None and "rotary" in rotary.reason

    ids = [464, 3797, 3332, 319, 262, 2603, 13, 383, 3797]  # 9 tokens: j = i − 1 is the only match mod 8
    run = analyse(loaded, "", token_ids=ids)
    weights = run.maps(1, [2], loaded.adapter.layout.group_size)[0]  # (T, T)
    assert all(int(weights[i].argmax()) == i - 1 for i in range(1, len(ids)))
    for i in (3, 8):
        cell = qk_attribution.cell(loaded, run, 1, 2, i, i - 1)
        emb = cell.nodes.index("emb")
        top = divmod(int(cell.terms.abs().argmax()), len(cell.nodes))
        assert top == (emb, emb) and cell.terms[emb, emb] > 0.8 * cell.score
        row = qk_attribution.query_row(loaded, run, 1, 2, i)
        # one node dominates, so ranking keys by its key-side sum is the map's ranking of the winner
        assert int(row.key_sums[emb].argmax()) == int(row.weights.argmax()) == i - 1
        order = torch.argsort(row.key_sums.sum(0), descending=True)
        assert torch.equal(order, torch.argsort(row.weights, descending=True))


def test_an_unknown_qk_norm_is_refused_by_name() -> None:
    """StableLM's per-head LayerNorms on q and k (a ModuleList): neither folded nor frozen, refused with a reason."""
    spec = families.by_type("stablelm")
    loaded = as_loaded(families.models.build("stablelm", {**families.config_kwargs(spec), "qk_layernorm": True}))
    with pytest.raises(qkv.NotLinear, match=r"q_layernorm"):
        composition.composition(loaded.adapter, "q")
    with pytest.raises(qkv.NotLinear, match=r"q_layernorm"):
        qk_attribution.cell(loaded, analyse(loaded, "", token_ids=families.ids(6)), 1, 0, 5, 2)
    assert composition.composition(loaded.adapter, "v").note is None  # values do not pass through it


def test_effective_rank_counts_the_singular_values_that_hold_90_percent() -> None:
    assert head_circuits.effective_rank([3.0, 0.0, 0.0]) == 1
    assert head_circuits.effective_rank([1.0, 1.0, 1.0, 1.0]) == 4  # 3 of 4 hold only 75%
    assert head_circuits.effective_rank([3.0, 1.0, 0.1]) == 2  # 9 / 10.01 falls just short of 90%
    assert head_circuits.effective_rank([4.0, 1.0, 0.1]) == 1  # 16 / 17.01 ≥ 90%
    assert head_circuits.effective_rank([2.0, 1.0, 0.5]) == 2  # 4 / 5.25 < 90% ≤ 5 / 5.25
    assert head_circuits.effective_rank([0.0, 0.0]) == 0
    loaded = planted_copier(1.0)  # W_OV = B·Bᵀ: head_dim equal singular values, every one needed
    got = head_circuits.head_circuit(loaded, 1, 2)
    assert got.ov_effective_rank == loaded.adapter.layout.head_dim
    assert 1 <= got.qk_effective_rank <= loaded.adapter.layout.head_dim
    assert got.qk_effective_rank == head_circuits.effective_rank(got.qk_singular_values)


def test_bloom_copying_score_reads_the_embeddings_through_their_layernorm() -> None:
    """BLOOM normalises the embeddings before the first block: the full OV circuit starts from LN_emb(W_E[t]), a
    different scale and centring per token. Reference: every eigenvalue of the n × n matrix in float64."""
    loaded = as_loaded(families.build(families.by_type("bloom")), "tiny-bloom")
    base = loaded.model.transformer
    gen = torch.Generator().manual_seed(5)
    base.word_embeddings_layernorm.weight.data = 1 + torch.randn(base.word_embeddings.embedding_dim, generator=gen)
    base.word_embeddings_layernorm.bias.data = torch.randn(base.word_embeddings.embedding_dim, generator=gen)
    layer, head = 1, 2
    got = head_circuits.head_circuit(loaded, layer, head, token_ids=[5, 17])

    w = qkv.folded(loaded.adapter, layer, F64)
    g = loaded.adapter.layout.kv_head(head)
    ov = w.v[g] @ w.o[head]  # (d, d)
    u = head_circuits.unembedding(loaded, F64)
    sample = head_circuits.copy_sample(loaded.adapter.layout.vocab_size)
    ln = base.word_embeddings_layernorm
    raw = base.word_embeddings.weight.detach().to(F64)
    normed = torch.nn.functional.layer_norm(raw, raw.shape[-1:], ln.weight.to(F64), ln.bias.to(F64), ln.eps)

    def score(e: torch.Tensor) -> float:
        lam = torch.linalg.eigvals(e[sample] @ ov @ u[sample].T)
        return float(lam.real.sum() / lam.abs().sum())

    assert got.copying_score == pytest.approx(score(normed), abs=1e-4)
    assert abs(score(normed) - score(raw)) > 1e-2  # without the norm the score would differ: the fold matters
    for row in got.token_map:
        logits = normed[row.token_id] @ ov @ u.T
        assert row.top_ids == torch.topk(logits, 5).indices.tolist()
        assert row.self_rank == int((logits > logits[row.token_id]).sum()) + 1
