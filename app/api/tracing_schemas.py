"""Pydantic models of the causal-tracing endpoints: patching, direct logit attribution, logit lens, token view."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import HeadRef, Strict, TextIn, Tokens, TopToken

TOKEN = Field(None, min_length=1, max_length=200, description="a token string that encodes to exactly one token")
TOKEN_ID = Field(None, ge=0, le=10_000_000, description="the token's id (instead of the string)")
POSITION = Field(-1, ge=-1_000_000, le=1_000_000, description="query position; negative counts from the end")


class TokenRef(BaseModel):
    token: str
    id: int


class PositionIn(TextIn):
    position: int = POSITION


# -- patching ------------------------------------------------------------------------------------


class PairIn(Strict):
    """A prompt pair and what to measure on it: what /api/patch, /api/circuit and /api/path_patch all read."""

    clean: str = Field(min_length=1, max_length=50_000, description="the prompt whose answer is right")
    corrupted: str = Field(min_length=1, max_length=50_000, description="same number of tokens, answer changed")
    answer: str | None = TOKEN
    answer_id: int | None = TOKEN_ID
    wrong: str | None = TOKEN
    wrong_id: int | None = TOKEN_ID
    position: int = POSITION
    direction: Literal["denoise", "noise"] = Field(
        "denoise", description="denoise: clean values into the corrupted run; noise: corrupted into the clean run"
    )


class PatchIn(PairIn):
    by_position: list[HeadRef] = Field(
        default_factory=list, max_length=64, description="heads to also patch one position at a time"
    )
    residual: bool = Field(False, description="also patch the residual stream entering each block, per position")


class PositionScores(BaseModel):
    layer: int
    head: int
    scores: list[float] = Field(description="per position of the prompt")


class PatchOut(BaseModel):
    tokens_clean: list[str]
    tokens_corrupted: list[str]
    token_ids_clean: list[int]
    token_ids_corrupted: list[int]
    position: int = Field(description="the resolved, non-negative position")
    direction: str
    answer: TokenRef
    wrong: TokenRef
    clean_logit_diff: float = Field(description="logit[answer] − logit[wrong] at position, clean prompt")
    corrupted_logit_diff: float
    scores: list[list[float]] = Field(
        description="n_layers × n_heads: (patched − corrupted) / (clean − corrupted), the head's output "
        "patched at every position"
    )
    position_scores: list[PositionScores] = Field(description="the by_position heads, one score per position")
    residual_scores: list[list[float]] | None = Field(
        description="n_layers × n_tokens: the residual stream entering each block patched at one position"
    )


# -- direct logit attribution --------------------------------------------------------------------


class DlaIn(PositionIn):
    target: str | None = TOKEN
    target_id: int | None = TOKEN_ID
    contrast: str | None = TOKEN
    contrast_id: int | None = TOKEN_ID


class DlaOut(Tokens):
    position: int
    target: TokenRef
    contrast: TokenRef | None
    logit: float = Field(
        description="logit[target], or logit[target] − logit[contrast], before any final soft-cap: the parts sum to it"
    )
    heads: list[list[float]] = Field(description="n_layers × n_heads: each head's direct contribution")
    mlp: list[float] = Field(description="per layer, the MLP's direct contribution (bias excluded)")
    embed: float = Field(description="token (and learned position) embeddings")
    other: float = Field(description="every bias: output projections, MLP outputs, norms, LM head")
    model_logit: float = Field(description="the model's own logit (difference): `logit` after the final soft-cap")
    final_softcap: float | None = Field(
        description="the final logit soft-cap (Gemma 2: cap·tanh(z/cap)), which is not linear, so the parts "
        "explain the pre-cap `logit`; null when the model has none"
    )


# -- logit lens ----------------------------------------------------------------------------------


class LensIn(PositionIn):
    target: str | None = TOKEN
    target_id: int | None = TOKEN_ID
    top_k: int = Field(5, ge=1, le=50)
    grid: bool = Field(False, description="also the layers × positions top-1 grid for the whole text")


class LensReadingOut(BaseModel):
    top_k: list[TopToken]
    target_prob: float
    target_rank: int = Field(description="1-based rank of the target among all tokens")
    target_logit: float = Field(description="the target's raw logit read from this stream (nats scale, not normalised)")


class LensLayerOut(LensReadingOut):
    layer: int


class LensGridOut(BaseModel):
    top_ids: list[list[int]] = Field(description="n_layers × n_tokens")
    top_tokens: list[list[str]]
    top_probs: list[list[float]]


class LensOut(Tokens):
    position: int
    target: TokenRef
    layers: list[LensLayerOut] = Field(description="one per block; the last is the model's own distribution")
    embed: LensReadingOut = Field(
        description="the stream before block 0 (the embeddings) read the same way: with `layers`, the n_layers + 1 "
        "readings of TransformerLens's accumulated residual"
    )
    grid: LensGridOut | None


# -- token view ----------------------------------------------------------------------------------


class AttentionFromIn(TextIn):
    query_pos: int = POSITION


class AttentionFromOut(Tokens):
    query_pos: int
    weights: list[list[list[float]]] = Field(
        description="n_layers × n_heads × n_tokens: each head's attention row from query_pos"
    )
