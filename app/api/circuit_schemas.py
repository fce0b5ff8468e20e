"""Pydantic models of the circuit endpoints: edge attribution on a pair (/api/circuit) and over a set of pairs
(/api/circuit_pairs, /api/pair_sets), exact path patching (/api/path_patch)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.api.schemas import Strict
from app.api.tracing_schemas import POSITION, TOKEN, PairIn, TokenRef
from app.corpus.pairs import IOI_PAIRS, MAX_PAIRS

NODE = Field(min_length=1, max_length=32, description="a node id: emb, L{l}H{h}, L{l}KV{g}, M{l} or logits")


Method = Annotated[
    Literal["eap", "eap-ig"],
    Field(description="eap: gradients on the run patched into; eap-ig: averaged over `steps` interpolations"),
]
STEPS = Field(5, ge=1, le=64, description="EAP-IG: interpolation steps of the input embeddings")


class CircuitIn(PairIn):
    method: Method = "eap-ig"
    steps: int = STEPS
    top_n: int = Field(300, ge=0, le=10_000_000, description="edges returned, largest |score| first; 0 = every edge")
    faithfulness: bool = Field(
        False, description="also patch the top-n edges exactly, n on a log grid (or `faithfulness_n`)"
    )
    faithfulness_n: list[int] | None = Field(
        None, max_length=32, description="the edge counts of the faithfulness curve (default 1, 2, 5, 10, … all)"
    )
    node: str | None = Field(
        None, min_length=1, max_length=32, description="a node id: also every edge into or out of it, per position"
    )


class EdgeIn(Strict):
    source: str = NODE
    target: str = NODE
    channel: str = Field(min_length=1, max_length=8, description="q, k, v or in")


class PathPatchIn(PairIn):
    edges: list[EdgeIn] | Literal["all"] = Field(
        max_length=1_000_000, description="the edges that carry the other run's values, or 'all'"
    )


class MetricPair(BaseModel):
    clean: float
    corrupted: float


class NodeScore(BaseModel):
    id: str
    score: float = Field(description="the sum of the node's outgoing edges: attribution patching of its output")


class EdgeOut(BaseModel):
    source: str
    target: str
    channel: str
    score: float


class PositionEdge(EdgeOut):
    scores: list[float] = Field(description="per position of the prompt (0 after `position`); they sum to `score`")


class FaithPoint(BaseModel):
    n_edges: int = Field(description="the top n edges by |score|, patched together exactly")
    metric: float
    recovered: float | None = Field(
        description="(metric − the patched-into run's) / (the other run's − the patched-into run's); null when equal"
    )


class Cost(BaseModel):
    forwards: int = Field(description="model forwards run for the scores (cached runs' are not counted)")
    backwards: int
    patched_runs: int = Field(description="exact patched forwards (rows) for the faithfulness curve")


class PairOut(BaseModel):
    tokens_clean: list[str]
    tokens_corrupted: list[str]
    token_ids_clean: list[int]
    token_ids_corrupted: list[int]
    position: int = Field(description="the resolved, non-negative position")
    direction: str
    answer: TokenRef
    wrong: TokenRef | None


class CircuitOut(PairOut):
    method: str
    steps: int = Field(description="gradient steps averaged (1 for eap)")
    metric: MetricPair = Field(description="logit(answer) − logit(wrong) at position (logit(answer) without wrong)")
    node_scores: list[NodeScore] = Field(description="every sender: emb, each head, each MLP")
    edges: list[EdgeOut] = Field(description="the top_n edges by |score|, largest first")
    n_edges: int = Field(description="edges in the model's graph")
    parallel_blocks: bool = Field(description="attention and MLP read the same block input (GPT-J, NeoX, Phi, …)")
    wiring: str = Field(description="which senders precede which receivers, in words")
    cost: Cost
    faithfulness: list[FaithPoint] | None = Field(description="when asked: the exact effect of the top n edges")
    node_edges: list[PositionEdge] | None = Field(
        description="with `node`: every edge out of and into it, largest |score| first, with its score per position"
    )


class PathPatchOut(PairOut):
    metric: float = Field(description="the metric with those edges patched")
    metric_clean: float
    metric_corrupted: float
    recovered: float | None = Field(
        description="(metric − the patched-into run's) / (the other run's − the patched-into run's); null when equal"
    )
    n_edges: int = Field(description="distinct edges patched")


# -- over a set of prompt pairs --------------------------------------------------------------------


class PromptPairIn(Strict):
    """One pair of a set, as a line of an uploaded .jsonl: {clean, corrupted, answer, wrong}."""

    clean: str = Field(min_length=1, max_length=50_000)
    corrupted: str = Field(min_length=1, max_length=50_000, description="same number of tokens as clean")
    answer: str = Field(min_length=1, max_length=200, description="one token")
    wrong: str | None = TOKEN


class CircuitPairsIn(Strict):
    pair_set: str | None = Field(
        None, min_length=1, max_length=200, description=f"a built-in set ({IOI_PAIRS!r}, …), or give `pairs`"
    )
    pairs: list[PromptPairIn] | None = Field(
        None, description=f"the pairs themselves, at most {MAX_PAIRS} (e.g. the lines of a .jsonl)"
    )
    position: int = POSITION
    direction: Literal["denoise", "noise"] = Field("denoise", description="as /api/circuit, on every pair")
    method: Method = "eap-ig"
    steps: int = STEPS
    top_n: int = Field(300, ge=1, le=5000, description="edges returned, largest |mean score| first")
    seed: int = Field(0, ge=0, le=2**31, description="seeds the bootstrap resamples of the pairs")


class SetStat(BaseModel):
    score: float = Field(description="the mean over pairs")
    ci_low: float = Field(description="95% percentile-bootstrap CI of the mean over pairs (seeded)")
    ci_high: float
    n: int = Field(description="pairs the mean is over")
    scores: list[float] = Field(description="per pair, in the order of `pairs`")


class SetEdgeOut(SetStat):
    source: str
    target: str
    channel: str


class SetNodeScore(SetStat):
    id: str


class SetPairOut(BaseModel):
    clean: str
    corrupted: str
    answer: TokenRef
    wrong: TokenRef | None
    n_tokens: int
    position: int = Field(description="the resolved, non-negative position")
    metric: MetricPair


class SetMetric(BaseModel):
    clean: SetStat
    corrupted: SetStat


class CircuitPairsOut(BaseModel):
    pair_set: str | None = Field(description="the built-in set's id, or null for pairs sent in the request")
    n_pairs: int
    pairs: list[SetPairOut]
    method: str
    steps: int
    direction: str
    seed: int
    n_boot: int = Field(description="bootstrap resamples of the pairs")
    metric: SetMetric = Field(description="logit(answer) − logit(wrong) on each prompt, over pairs")
    node_scores: list[SetNodeScore] = Field(description="every sender: its node score over pairs")
    edges: list[SetEdgeOut] = Field(description="the top_n edges by |mean score|, largest first")
    n_edges: int = Field(description="edges in the model's graph")
    parallel_blocks: bool
    wiring: str
    cost: Cost


class PairSetOut(BaseModel):
    id: str
    description: str
    n_pairs: int
    pairs: list[PromptPairIn] = Field(description="the set's pairs under the served tokenizer")


class PairSetsOut(BaseModel):
    max_pairs: int = Field(description="the most pairs one /api/circuit_pairs request measures")
    sets: list[PairSetOut] = Field(description="the built-in sets")
