"""Pydantic models of the lecture's experiments: the pruning curve and the head-count trade-off."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import AttentionParams, Head, Strict
from app.inspect.intervene.pruning import RISE

MAX_DATASET_TEXTS = 64  # a dataset curve measures at most this many texts (the first ones): it stays a request


class PruneCurveIn(Strict):
    text: str | None = Field(
        None, min_length=1, max_length=50_000, pattern=r"\S", description="the text (or give `dataset`)"
    )
    dataset: str | None = Field(
        None, min_length=1, max_length=200, description="a dataset id (GET /api/datasets) instead of a text"
    )
    order: Literal["importance", "random"] = Field(
        "importance",
        description="importance: least to most important by gradient importance on the same text or dataset; "
        "random: seeded random permutations of every head",
    )
    steps: int = Field(10, ge=2, le=64, description="points on the curve, from 0 heads off to every head off")
    seeds: int = Field(5, ge=1, le=20, description="random orders averaged (order 'random')")
    seed: int = Field(0, ge=0, le=2**31, description="the first random order's seed; the others follow (seed+1, …)")
    rise: float = Field(
        RISE, gt=0, le=10, description="loss increase (nats) over the first point that marks the threshold"
    )
    refine: bool = Field(False, description="text only: bisect each threshold to one head (about log2(step) forwards)")
    max_texts: int = Field(
        16, ge=1, le=MAX_DATASET_TEXTS, description="dataset only: the first this many texts are measured"
    )
    max_tokens: int = Field(128, ge=2, le=100_000, description="dataset only: each text is cut to this many tokens")


class CurvePoint(BaseModel):
    n_pruned: int = Field(description="heads switched off: the first n_pruned of each order")
    loss: float = Field(description="mean next-token loss (nats); for random orders the mean over seeds")
    loss_low: float | None = Field(None, description="random: the lowest loss over the seeds")
    loss_high: float | None = Field(None, description="random: the highest loss over the seeds")
    losses: list[float] = Field(description="per order (importance: one; random: one per seed)")


class ThresholdOut(BaseModel):
    n_pruned: int = Field(description="the largest n_pruned before the loss first rises by `rise` over the first point")
    loss: float
    exact: bool = Field(description="true: one head more already crosses; false: the crossing is before the next point")


class PruneCurveOut(BaseModel):
    order: str
    n_heads: int = Field(description="heads in the model (n_layers × n_heads)")
    points: list[CurvePoint]
    band: str | None = Field(None, description="what loss_low / loss_high are")
    rise: float
    thresholds: list[ThresholdOut] = Field(description="per order")
    threshold_n_pruned: float = Field(description="heads that can go before the rise, averaged over the orders")
    pruned_order: list[list[Head]] = Field(
        description="per order, every head, first switched off first: point k switches off the first n_pruned"
    )
    seeds: list[int] = Field(description="random: each order's seed")
    dataset: str | None = None
    n_texts: int = Field(description="texts measured (1 for a text)")
    n_tokens: int = Field(description="tokens measured over all texts")
    forwards: float = Field(description="cost: decoder blocks run over every row / n_layers (forward equivalents)")


class HeadConfigOut(BaseModel):
    n_heads: int
    n_kv_heads: int
    kind: str = Field(description="MHA, GQA or MQA")
    head_dim: int
    params: AttentionParams = Field(description="per layer, q/k/v/o projections (closed form)")
    params_per_layer: int
    kv_cache_bytes_per_token: int = Field(description="K and V of every layer for one token")
    real: bool = Field(description="the served model's own numbers of heads and head dimension")


class RealConfigOut(BaseModel):
    n_heads: int
    n_kv_heads: int
    kind: str
    head_dim: int
    params: AttentionParams = Field(description="layer 0's projections, counted from the weights")
    params_all_layers: int = Field(description="q/k/v/o of every layer, counted from the weights")
    kv_cache_bytes_per_token: int
    closed_form: bool = Field(description="whether every layer's counts equal the closed form")


class HeadTradeoffOut(BaseModel):
    d_model: int
    n_layers: int
    dtype: str
    bytes_per_value: int
    min_head_dim: int
    biases: list[str] = Field(description="projections that carry a bias in this model (q, k, v, o)")
    real: RealConfigOut
    configs: list[HeadConfigOut] = Field(
        description="every n_heads dividing d_model (head_dim ≥ min_head_dim), each with every n_kv_heads dividing it"
    )
