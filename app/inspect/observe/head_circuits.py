"""One head's QK and OV circuits from the weights: singular values, the OV copying score, the OV token map,
the positional QK term where positions are learned vectors, and the heads that compose into it most.

Everything uses the folded weights of app.inspect.observe.qkv (norm scales and centring folded in; σ, biases
and RoPE left out). The full OV circuit of a token t is e_t·W_OV·W_Uᵀ: its embedding through the head's OV
matrix read by the unembedding (final norm folded in: W_U ← W_U·diag(A_f)·P), i.e. how much the head, attending
to t, raises each output token's logit. Its embedding is what the token writes to the residual stream: through
the embedding norm where there is one (BLOOM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from app.inspect.model.blocks import block_plan, norm_form, part
from app.inspect.model.loaded import Loaded
from app.inspect.observe import composition, qkv
from app.inspect.observe.composition import KINDS, Kind
from app.inspect.observe.dla import weight_of

COPY_SAMPLE = 2048  # vocabulary sample of the copying score
COPY_SEED = 0
SAMPLE_WORDS = (" the", " cat", " Paris", " John", " 7", " blue", " run", " she")  # the token map's default rows
POSITIONS = 64  # query positions of the positional QK term
OFFSETS = 8  # offsets (0 = the query itself) the positional term reports
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")  # learned position tables on the base model
COPYING_DEFINITION = (
    "Σλ / Σ|λ| over the eigenvalues λ of the full OV circuit E·W_OV·W_Uᵀ restricted to a seeded sample of "
    f"{COPY_SAMPLE} vocabulary tokens (E, W_U: their embedding and unembedding rows, norms folded in): +1 when "
    "the head raises the logits of the tokens it attends to (copying), −1 when it lowers them"
)
ALIBI_REASON = (
    "ALiBi: position enters as a per-head bias proportional to the distance, added to the scores and not read "
    "through W_Q or W_K; QK attribution reports it beside the terms"
)
EFFECTIVE_RANK_SHARE = 0.9
EFFECTIVE_RANK_DEFINITION = (
    f"the fewest singular values σ whose Σσ² holds {EFFECTIVE_RANK_SHARE:.0%} of the matrix's squared Frobenius "
    "norm: how many directions the circuit really uses"
)
EMBEDDING_NORMS = ("word_embeddings_layernorm",)  # a norm between the embedding table and the first block (BLOOM)
ROTARY_REASON = (
    "rotary positions: position enters as a rotation of q and k by an angle set by the offset, not as a vector "
    "in the residual stream, so the weights alone give no positional QK term; QK attribution on a text shows it"
)


@dataclass(frozen=True)
class TokenRow:
    """Where the full OV circuit sends one source token: its top output tokens and its own rank among them."""

    token_id: int
    top_ids: list[int]
    top_values: list[float]
    self_rank: int  # 1-based rank of the source token itself among every output token


@dataclass(frozen=True)
class Positional:
    """The direct positional QK term: position embeddings read straight through this head's query and key."""

    defined: bool
    reason: str | None = None  # why not, when not defined
    offset_mass: list[float] = field(default_factory=list)  # mean attention at offset δ = 0..OFFSETS−1 from it alone
    previous_token: float | None = None  # offset_mass[1]


@dataclass(frozen=True)
class HeadCircuit:
    """One head's circuits from the weights."""

    qk_singular_values: list[float]  # of W_QK = W_Q·W_Kᵀ (no attention scale), descending
    ov_singular_values: list[float]  # of W_OV = W_V·W_O
    qk_effective_rank: int  # see effective_rank
    ov_effective_rank: int
    copying_score: float
    token_map: list[TokenRow]
    positional: Positional
    top_senders: dict[Kind, list[tuple[int, int, float]]]  # per kind, the earlier heads composing most: (l, h, s)
    baseline: dict[Kind, float]  # per kind, the composition scores' random-heads baseline
    qk_note: str | None  # how QK-norm entered, when the model has it


def _sv(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Singular values of a·bᵀ for a, b (d, k), from k×k factors: a = Q_a·R_a ⇒ svd(a·bᵀ) = svd(R_a·R_bᵀ)."""
    ra, rb = composition.root(a), composition.root(b)
    return [float(s) for s in torch.linalg.svdvals(ra @ rb.T)]


def effective_rank(singular_values: list[float], share: float = EFFECTIVE_RANK_SHARE) -> int:
    """The fewest leading singular values whose squares hold `share` of Σσ² (0 for a zero matrix)."""
    energy = torch.tensor(singular_values, dtype=torch.float64).pow(2)
    total = float(energy.sum())
    if total == 0:
        return 0
    return int((energy.cumsum(0) < share * total).sum()) + 1


def unembedding(loaded: Loaded, dtype: torch.dtype) -> torch.Tensor:
    """W_U (vocab, d) with the final norm's scale (and centring) folded in: logits = y·W_Uᵀ for the unnormed y/σ."""
    w, _ = weight_of(loaded.adapter.unembedding())
    form = norm_form(loaded.adapter.final_norm())
    return qkv.fold_output(form, w.detach().to(dtype))


def embedded(loaded: Loaded, token_ids: torch.Tensor | list[int], dtype: torch.dtype) -> torch.Tensor:
    """What tokens write to the residual stream: their embedding rows, through the embedding norm where the model
    has one (BLOOM's LayerNorm, a different scale and centring per token), on the CPU: (n, d)."""
    emb = loaded.model.get_input_embeddings()
    assert isinstance(emb, nn.Embedding)
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=emb.weight.device)
    base = loaded.adapter.backbone()
    norm = next((getattr(base, n) for n in EMBEDDING_NORMS if isinstance(getattr(base, n, None), nn.Module)), None)
    with torch.no_grad():
        rows: torch.Tensor = emb(ids)
        if norm is not None:
            rows = norm(rows)
    return rows.to(dtype).cpu()


def copying_score(e: torch.Tensor, v: torch.Tensor, o: torch.Tensor, u: torch.Tensor) -> float:
    """Σλ/Σ|λ| of M = e·v·o·uᵀ (n × n) for e, u (n, d), v (d, hd), o (hd, d): its nonzero eigenvalues are those
    of (o·uᵀ)·(e·v) (hd × hd), so no n×n matrix is formed."""
    lam = torch.linalg.eigvals((o @ u.T) @ (e @ v)).to(torch.complex128)
    total = float(lam.abs().sum())
    return float(lam.real.sum()) / total if total > 0 else 0.0


def sample_tokens(loaded: Loaded) -> list[int]:
    """The token map's default rows: SAMPLE_WORDS that are one token of the model, else the copying sample's first."""
    vocab = loaded.adapter.layout.vocab_size
    found = []
    for word in SAMPLE_WORDS:
        ids = loaded.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] < vocab:
            found.append(int(ids[0]))
    return found or copy_sample(vocab)[: len(SAMPLE_WORDS)].tolist()


def copy_sample(vocab: int) -> torch.Tensor:
    """The seeded vocabulary sample of the copying score (every token when the vocabulary is smaller)."""
    gen = torch.Generator().manual_seed(COPY_SEED)
    return torch.randperm(vocab, generator=gen)[:COPY_SAMPLE]


def positional(loaded: Loaded, layer: int, q: torch.Tensor, k: torch.Tensor) -> Positional:
    """The attention the head pays by offset from the position embeddings alone (each normalised as the block's
    input norm would, alone), for query positions 0..POSITIONS−1; not defined without a learned table."""
    base = loaded.adapter.backbone()
    table = next((getattr(base, n) for n in POSITION_TABLES if isinstance(getattr(base, n, None), nn.Embedding)), None)
    if table is None:
        reason = ROTARY_REASON if _rotary(loaded) else "the model has no learned position embeddings"
        return Positional(False, ALIBI_REASON if _alibi(loaded) else reason)
    n = min(POSITIONS, table.num_embeddings)
    p = table.weight[:n].detach().to(q)  # (n, d)
    form = norm_form(part(loaded.adapter, layer, block_plan(loaded.adapter, layer).attn_norm))
    c = p - p.mean(-1, keepdim=True) if form.centred else p
    p = p * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + form.eps)  # σ of each position embedding alone
    scale = float(getattr(loaded.adapter.attention(layer), "scaling", q.shape[-1] ** -0.5))
    scores = (p @ q) @ (p @ k).T * scale  # (n, n): query position × key position
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    mass = [float(probs.diagonal(-d).mean()) for d in range(min(OFFSETS, n))]
    return Positional(True, None, mass, mass[1] if len(mass) > 1 else None)


def _alibi(loaded: Loaded) -> bool:
    """Whether the model adds ALiBi biases (BLOOM; MPT's and Falcon's configs say so)."""
    config = loaded.model.config
    attn_config = getattr(config, "attn_config", None)
    alibi = getattr(config, "alibi", False) or getattr(attn_config, "alibi", False)
    return loaded.adapter.layout.architecture == "bloom" or bool(alibi)


def _rotary(loaded: Loaded) -> bool:
    """Whether the model rotates q and k by position (a rotary module, or a RoPE setting in its config)."""
    config = loaded.model.config
    if any(getattr(config, name, None) for name in ("rope_parameters", "rope_theta", "rotary_dim", "rotary_pct")):
        return True
    return any("rotary" in name.lower() for name, _ in loaded.adapter.backbone().named_modules())


def head_circuit(
    loaded: Loaded, layer: int, head: int, token_ids: list[int] | None = None, top_k: int = 5
) -> HeadCircuit:
    """Head (layer, head)'s circuits from the weights.

    Args:
        loaded: the model.
        layer, head: the head (query head; its K and V are its KV head's).
        token_ids: the token map's source tokens (default: `sample_tokens`).
        top_k: output tokens per token-map row, and senders per composition kind.

    Raises:
        qkv.NotLinear: a norm the weights cannot be folded with.
    """
    adapter = loaded.adapter
    lay = adapter.layout
    dtype = torch.promote_types(loaded.dtype, torch.float32)
    w = qkv.folded(adapter, layer, dtype)
    g = lay.kv_head(head)
    q, k, v, o = w.q[head].cpu(), w.k[g].cpu(), w.v[g].cpu(), w.o[head].cpu()
    u = unembedding(loaded, dtype).cpu()
    sample = copy_sample(lay.vocab_size)
    sources = token_ids if token_ids is not None else sample_tokens(loaded)
    rows = []
    for t, e_t in zip(sources, embedded(loaded, sources, dtype), strict=True):
        logits = ((e_t @ v) @ o) @ u.T  # (vocab,)
        top = torch.topk(logits, min(top_k, logits.numel()))
        rank = int((logits > logits[t]).sum()) + 1
        rows.append(TokenRow(t, top.indices.tolist(), top.values.tolist(), rank))
    senders: dict[Kind, list[tuple[int, int, float]]] = {}
    for kind in KINDS:
        col = composition.column(adapter, kind, layer, head, dtype)
        order = torch.argsort(torch.nan_to_num(col, nan=-1.0), descending=True)[: min(top_k, layer * lay.n_heads)]
        senders[kind] = [(int(i) // lay.n_heads, int(i) % lay.n_heads, float(col[i])) for i in order]
    norms = qkv.qk_norms(adapter, layer)
    qk_sv, ov_sv = _sv(q, k), _sv(v, o.T)
    return HeadCircuit(
        qk_singular_values=qk_sv,
        ov_singular_values=ov_sv,
        qk_effective_rank=effective_rank(qk_sv),
        ov_effective_rank=effective_rank(ov_sv),
        copying_score=copying_score(embedded(loaded, sample, dtype), v, o, u[sample]),
        token_map=rows,
        positional=positional(loaded, layer, q, k),
        top_senders=senders,
        baseline={kind: composition.baseline(kind, lay.d_model, lay.head_dim)[0] for kind in KINDS},
        qk_note=qkv.QK_NORM_NOTE if norms is not None else None,
    )
