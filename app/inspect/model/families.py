"""Model families: where each architecture keeps its blocks and attention projections, and a model's head layout."""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its decoder layers and attention output projection."""

    name: str
    layers: str  # dotted path from the CausalLM to the ModuleList of blocks
    attention: str  # attribute of a block holding the attention module
    out_proj: str  # attribute of the attention module: input is (B, T, n_heads * head_dim)
    final_norm: str  # dotted path from the CausalLM to the norm before the LM head
    attn_norm: str  # attribute of a block: the norm before attention
    mlp_norm: str  # attribute of a block: the norm before the MLP
    mlp_out: str  # dotted path from a block to the MLP's output projection (its bias goes to DLA's `other`)
    mlp: str = "mlp"  # attribute of a block holding the MLP (MPT: "ffn")
    mlp_residual: bool = False  # the MLP's forward takes the residual and adds it (BLOOM, MPT)
    block_returns_tuple: bool = False  # a block returns (hidden_states, attention weights), not hidden_states


_LLAMA = Family(
    name="llama",
    layers="model.layers",
    attention="self_attn",
    out_proj="o_proj",
    final_norm="model.norm",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    mlp_out="mlp.down_proj",
)
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": Family(
        name="gpt2",
        layers="transformer.h",
        attention="attn",
        out_proj="c_proj",
        final_norm="transformer.ln_f",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        mlp_out="mlp.c_proj",
    ),
    "gpt_neox": Family(
        name="gpt_neox",
        layers="gpt_neox.layers",
        attention="attention",
        out_proj="dense",
        final_norm="gpt_neox.final_layer_norm",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        mlp_out="mlp.dense_4h_to_h",
    ),
}

TUPLE_BLOCKS = frozenset({"bloom", "mpt", "falcon"})  # families whose blocks return (hidden_states, weights)

# attributes of the attention module holding the query, key and value projections: three, or one fused
# (its output features are q, then k, then v by size: GPT-2's c_attn columns, GPT-NeoX's per-head rows)
QKV: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}
QKV_FOUND = (QKV["llama"], ("qkv_proj",), ("Wqkv",), QKV["gpt2"], QKV["gpt_neox"])  # for discovered families


@dataclass(frozen=True)
class Layout:
    """The head layout of a model, as the API reports it."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_positions: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The KV head that query head `head` reads (transformers' repeat_kv order)."""
        return head // self.group_size

    def kv_groups(self) -> list[list[int]]:
        """Per KV head, the query heads that share it."""
        g = self.group_size
        return [list(range(k * g, (k + 1) * g)) for k in range(self.n_kv_heads)]

    def kv_cache_bytes_per_token(self, bytes_per_value: int, kv_heads: int | None = None) -> int:
        """K and V for every layer of one token; `kv_heads` overrides (n_heads = MHA, 1 = MQA)."""
        heads = self.n_kv_heads if kv_heads is None else kv_heads
        return 2 * self.n_layers * heads * self.head_dim * bytes_per_value
