"""Pydantic models of "why a head attends": composition scores, one head's circuits, QK attribution on a text."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas import Head, TextIn, Tokens
from app.api.tracing_schemas import TokenRef

NODES = (
    "nodes: `emb` (token and learned position embeddings), `L{l}H{h}` (an earlier head's write), `M{l}` (an "
    "earlier MLP's write), `bias` (every bias and norm offset)"
)


class HeadScore(BaseModel):
    layer: int
    head: int
    score: float


class CompositionOut(BaseModel):
    kind: str = Field(description="q, k or v: what of the receiver reads the sender's output")
    senders: list[Head] = Field(description="the rows of `scores`")
    receivers: list[Head] = Field(description="the columns of `scores`")
    scores: list[list[float | None]] = Field(
        description="senders × receivers: ‖W_OV^A·M_B‖_F / (‖W_OV^A‖_F·‖M_B‖_F), M_B = W_QK^B (q), (W_QK^B)ᵀ (k) "
        "or W_OV^B (v), norms folded in; null where the receiver's layer is not after the sender's"
    )
    baseline: float = Field(description="mean score of random Gaussian heads of the same shapes (seeded)")
    baseline_std: float = Field(description="standard deviation of those random scores")
    note: str | None = Field(description="how QK-norm entered the q and k kinds, when the model has it")


class OutputToken(BaseModel):
    token: str
    id: int
    value: float = Field(description="the logit change per unit attention, up to the norms' σ")


class TokenMapRow(BaseModel):
    token: TokenRef = Field(description="the source token (attended to)")
    top: list[OutputToken] = Field(description="the output tokens whose logits the full OV circuit raises most")
    self_rank: int = Field(description="1-based rank of the source token itself among all output tokens")


class PositionalOut(BaseModel):
    defined: bool
    reason: str | None = Field(description="why there is no positional QK term (rotary or no positions)")
    offset_mass: list[float] = Field(
        description="mean attention at offset 0, 1, 2, … (0 = the query itself) from the position embeddings "
        "alone, read straight through this head's query and key"
    )
    previous_token: float | None = Field(description="offset_mass[1]: the previous-token evidence of the weights")


class HeadCircuitOut(BaseModel):
    layer: int
    head: int
    kv_head: int
    qk_singular_values: list[float] = Field(description="of W_QK = W_Q·W_Kᵀ (no attention scale), descending")
    ov_singular_values: list[float] = Field(description="of W_OV = W_V·W_O, descending")
    qk_effective_rank: int = Field(description="effective rank of W_QK (see effective_rank_definition)")
    ov_effective_rank: int = Field(description="effective rank of W_OV")
    effective_rank_definition: str
    copying_score: float
    copying_definition: str
    token_map: list[TokenMapRow]
    positional: PositionalOut
    top_senders: dict[str, list[HeadScore]] = Field(
        description="per kind (q, k, v), the earlier heads with the highest composition scores into this head"
    )
    baseline: dict[str, float] = Field(description="per kind, the random-heads baseline of the composition scores")
    qk_note: str | None = Field(description="how QK-norm entered the QK circuit, when the model has it")


class QkAttributionIn(TextIn):
    layer: int = Field(ge=-1_000_000, le=1_000_000)
    head: int = Field(ge=-1_000_000, le=1_000_000)
    query_pos: int = Field(-1, ge=-1_000_000, le=1_000_000, description="negative counts from the end")
    key_pos: int | None = Field(
        None, ge=-1_000_000, le=1_000_000, description="≤ query_pos; default: the key the head attends to most"
    )
    top: int = Field(20, ge=1, le=1000, description="terms to return, largest |value| first")
    row: bool = Field(False, description="also every key position of the query row")
    row_top: int = Field(3, ge=1, le=20, description="terms and nodes per key position in `row`")


class Term(BaseModel):
    query_node: str
    key_node: str
    value: float


class NodeValue(BaseModel):
    node: str
    value: float


class RowKey(BaseModel):
    key_pos: int
    score: float = Field(description="pre-softmax q·k·scale as captured, before any soft-cap")
    weight: float = Field(description="the attention weight in the model's map")
    masked: bool
    position_bias: float | None = Field(description="the ALiBi bias added to the score at this key, if any")
    terms: list[Term] = Field(description="its largest terms")
    query_nodes: list[NodeValue] = Field(description="its largest query-side sums")
    key_nodes: list[NodeValue] = Field(description="its largest key-side sums")


class QkAttributionOut(Tokens):
    layer: int
    head: int
    kv_head: int
    query_pos: int
    key_pos: int
    score: float = Field(description="pre-softmax q·k·scale from the captured q and k, before any soft-cap")
    total: float = Field(description="the sum of every term; equals `score` up to float rounding")
    terms: list[Term] = Field(description=f"the largest query-node × key-node terms by |value|; {NODES}")
    query_sums: list[NodeValue] = Field(description="every query node's terms summed over the key nodes, node order")
    key_sums: list[NodeValue] = Field(description="every key node's terms summed over the query nodes, node order")
    weight: float = Field(description="the cell's attention weight in the model's map")
    masked: bool = Field(description="the mask removes the key (a sliding window); the score is still attributed")
    softcap: float | None = Field(description="the head's logit soft-cap: the terms explain the score before it")
    capped_score: float = Field(description="softcap·tanh(score/softcap), or score without a soft-cap")
    position_bias: float | None = Field(
        description="ALiBi (BLOOM, MPT): the bias the model adds to the (capped) score at this key, not attributed"
    )
    rope: str = Field(description="the rotation found between the recomputed and the captured q and k")
    row: list[RowKey] | None = Field(description="with `row`: every key position 0..query_pos")
