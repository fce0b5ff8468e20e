"""Pydantic models of every request and response; their field descriptions become the OpenAPI docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.api.encode import Encoding
from app.inspect.engine.runs import Prediction, Run
from app.inspect.intervene.ablation import Comparison
from app.inspect.observe import registry
from app.inspect.observe.registry import HeadMetric, SimilarityName
from app.inspect.observe.similarity import Similarity


class Strict(BaseModel):
    """Requests: unknown fields are an error, types are exact (no "1" or true for 1), numbers finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


BOUNDS = "outside that, negative or huge alike, is 422 invalid_input naming the model's bounds"


class HeadRef(Strict):
    """One query head, 0-based. Shown as L{layer}H{head} on screen."""

    layer: int = Field(description=f"0 ≤ layer < n_layers of the served model (GET /api/model); {BOUNDS}")
    head: int = Field(description=f"0 ≤ head < n_heads of the served model; {BOUNDS}")


class TextIn(Strict):
    text: str = Field(
        min_length=1,
        max_length=50_000,
        pattern=r"\S",
        description="the input text, tokenized as the model's tokenizer does; it must hold a non-whitespace "
        "character (empty or whitespace-only text is 422 invalid_request)",
    )


class Error(BaseModel):
    """The one error shape."""

    error: str = Field(description="machine-readable code, e.g. invalid_input, busy, out_of_memory")
    detail: object = Field(None, description="human-readable message or a list of field errors")


ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": Error, "description": "missing or wrong API key (only when HEADSCOPE_API_KEY is set)"},
    413: {"model": Error, "description": "request body too large"},
    422: {"model": Error, "description": "invalid or too long input"},
    503: {
        "model": Error,
        "description": "busy, out of memory, or not ready: retry after Retry-After seconds; "
        "load_failed: the model failed to load, so no retry will help",
    },
}
NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"model": Error, "description": "no dataset or job with that id"}}
CONFLICT: dict[int | str, dict[str, object]] = {409: {"model": Error, "description": "not in a state that allows it"}}


# -- model ---------------------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class KVCacheCost(BaseModel):
    """Bytes of K and V cache per token, for this model and for its MHA / MQA variants."""

    this_model: int
    mha: int
    mqa: int
    saving_vs_mha: float = Field(description="1 − this_model / mha")


class AttentionParams(BaseModel):
    """One layer's attention projections: parameters (weights and biases) counted from the state dict."""

    q: int
    k: int
    v: int
    o: int


class LayerVariantOut(BaseModel):
    layer: int
    label: str = Field(description='how the page names it: "local 4096", "global", plus ", soft-cap 50", ", sinks"')
    window: int | None = Field(description="sliding window in tokens (a local layer); null for a global layer")
    softcap: float | None = Field(description="attention logit soft-cap: scores ← tanh(scores / cap) · cap")
    sinks: bool = Field(description="learned sinks: each row gives part of its mass to a sink, so sums to < 1")


class ModelInfo(BaseModel):
    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_positions: int
    max_tokens: int
    device: str
    dtype: str
    n_params: int
    kv_groups: list[list[int]] = Field(description="per KV head, the query heads that share it")
    kv_cache_bytes_per_token: int
    kv_cache: KVCacheCost
    attention_params: list[AttentionParams] = Field(
        description="per layer, the q/k/v/o projections' parameters from the weights (a fused q/k/v split by output)"
    )
    layer_variants: list[LayerVariantOut] = Field(description="per layer, which attention variant it runs")


class Tokens(BaseModel):
    tokens: list[str] = Field(description="display string of each token: the token decoded alone")
    token_ids: list[int]


class TokenizeOut(Tokens):
    n_tokens: int


# -- attention -----------------------------------------------------------------------------------


def _encoding_field() -> Encoding:
    encoding: Encoding = Field(
        "json",
        description='"json": each map\'s `weights` as nested lists; "f16": `weights_f16` and `shape` instead '
        "(about a fifth of the bytes; the page uses it)",
    )
    return encoding


class AttentionIn(TextIn):
    heads: list[HeadRef] | None = Field(
        None,
        max_length=10_000,
        description="heads to return; with `layers` it must name at least one head (both absent or both empty "
        "is 422 invalid_input)",
    )
    layers: list[int] | None = Field(
        None, max_length=10_000, description=f"return every head of these layers; 0 ≤ layer < n_layers, {BOUNDS}"
    )
    encoding: Encoding = _encoding_field()


class HeadMap(BaseModel):
    layer: int
    head: int
    weights: list[list[float]] | None = Field(
        None, description='rows = query positions, columns = key positions (encoding "json", the default)'
    )
    weights_f16: str | None = Field(
        None, description='encoding "f16": base64 of the little-endian float16 weights, row-major, of `shape`'
    )
    shape: list[int] | None = Field(None, description='encoding "f16": [n_queries, n_keys]')


class AttentionOut(Tokens):
    maps: list[HeadMap]


# -- ablation ------------------------------------------------------------------------------------


class TopToken(BaseModel):
    token: str
    id: int
    prob: float


class PredictionOut(BaseModel):
    loss: float | None = Field(description="mean next-token cross-entropy over the text, nats (None for one token)")
    token_logprobs: list[float] = Field(description="log p(token i+1 | tokens ≤ i), length n_tokens − 1")
    top_k: list[TopToken] = Field(description="most likely next tokens after the text")

    @classmethod
    def of(cls, pred: Prediction, tokenizer: object) -> PredictionOut:
        """The response form of a run's prediction, tokens decoded by the model's tokenizer."""
        decode = tokenizer.decode  # type: ignore[attr-defined]
        return cls(
            loss=pred.loss,
            token_logprobs=pred.token_logprobs,
            top_k=[TopToken(token=decode([i]), id=i, prob=p) for i, p in pred.top_k],
        )


class AblateIn(TextIn):
    ablate: list[HeadRef] = Field(default_factory=list, max_length=100_000, description="heads to switch off")
    mode: Literal["zero", "mean"] = Field(
        "zero", description="zero the head's output, or replace it by its mean over positions"
    )
    top_k: int = Field(10, ge=1, le=100)
    maps: list[HeadRef] = Field(
        default_factory=list, max_length=64, description="heads whose maps under the ablation to return"
    )
    encoding: Encoding = _encoding_field()


class AblateOut(Tokens):
    baseline: PredictionOut
    ablated: PredictionOut
    kl_last: float = Field(
        description="KL(baseline ‖ ablated) of the next-token distribution after the last token, nats"
    )
    kl_per_position: list[float]
    delta_loss: float | None = Field(description="ablated.loss − baseline.loss")
    maps: list[HeadMap] = Field(default_factory=list, description="requested heads' maps under the ablation")

    @classmethod
    def of(cls, cmp: Comparison, run: Run, tokenizer: object) -> AblateOut:
        """The response form of an ablation on `run` (its maps, if any, travel separately)."""
        return cls(
            tokens=run.tokens,
            token_ids=run.token_ids,
            baseline=PredictionOut.of(cmp.baseline, tokenizer),
            ablated=PredictionOut.of(cmp.ablated, tokenizer),
            kl_last=cmp.kl_last,
            kl_per_position=cmp.kl_per_position,
            delta_loss=cmp.delta_loss,
        )


# -- similarity ----------------------------------------------------------------------------------


class SimilarityIn(TextIn):
    metric: SimilarityName = "js"
    order: Literal["layer", "cluster"] = "layer"
    layer: int | None = Field(None, description=f"restrict to the heads of one layer; {BOUNDS}")
    kv_head: int | None = Field(
        None, description=f"with `layer`: restrict to the query heads sharing this KV head; {BOUNDS}"
    )


class LayerCollapse(BaseModel):
    layer: int
    mean_similarity: float = Field(description="mean over pairs of this layer's heads: JS divergence (js) or cosine")


class Head(BaseModel):
    layer: int
    head: int


class SimilarityOut(BaseModel):
    metric: str
    order: str
    heads: list[Head] = Field(description="the heads, in the order used for both axes")
    matrix: list[list[float]]
    collapse: list[LayerCollapse] = Field(description="per layer, mean pairwise value within the layer")
    query_rows: int = Field(description="query positions averaged over (all of them unless the text is long)")

    @classmethod
    def of(cls, sim: Similarity, metric: str, order: str) -> SimilarityOut:
        """The response form of a similarity computation."""
        return cls(
            metric=metric,
            order=order,
            heads=[Head(layer=ly, head=h) for ly, h in sim.heads],
            matrix=sim.matrix.tolist(),
            collapse=[LayerCollapse(layer=ly, mean_similarity=v) for ly, v in sim.collapse.items()],
            query_rows=sim.query_rows,
        )


# -- importance and roles ------------------------------------------------------------------------


class ImportanceIn(TextIn):
    method: Literal["gradient", "ablation"] = "gradient"


class ImportanceOut(BaseModel):
    method: str
    scores: list[list[float]] = Field(
        description="n_layers × n_heads: |∂loss/∂gate| (gradient), "
        "or the loss increase when the head alone is zeroed (ablation)"
    )
    normalized: list[list[float]] | None = Field(None, description="gradient: scores / per-layer L2 norm")
    kl_last: list[list[float]] | None = Field(None, description="ablation: KL(baseline ‖ ablated) after the last token")


def per_metric(value: Any, metrics: list[HeadMetric]) -> dict[str, Any]:
    """Pydantic fields, one per registry metric, each described by its definition; optional ones nullable."""
    return {
        m.name: (value | None, Field(None, description=m.definition))
        if m.optional
        else (value, Field(description=m.definition))
        for m in metrics
    }


# a metric added to the registry after start-up still goes out (as an extra field)
_SCORES = ConfigDict(extra="allow")
_HeadScores = create_model("_HeadScores", __config__=_SCORES, **per_metric(float, registry.METRICS))


class HeadRoles(_HeadScores):  # type: ignore[misc,valid-type]
    """One head: a field per registry metric (GET /api/roles)."""

    layer: int
    head: int
    kv_group: int = Field(description="the KV head this query head reads")


class HeadsOut(Tokens):
    heads: list[HeadRoles]


class RoleInfo(BaseModel):
    name: str = Field(description="the score's field in /api/heads, in /api/overview `stats` and in corpus jobs")
    label: str = Field(description="how the page names it")
    description: str = Field(description="its definition")
    low: float = Field(description="the least value it can take")
    high: float | None = Field(description="the most it can take (null: it grows with the text)")
    higher_is_more: bool = Field(description="a higher value means more of what the name says")
    measured_on: Literal["text", "probe"] = Field(
        description="text: on the request's text (and per text in corpus jobs); probe: on the model's own probe"
    )
    summary: bool = Field(description="the page shows it in a head's one-line summary")
    has_where: bool = Field(description="a text has a cell where the head does it most (corpus examples mark it)")

    @classmethod
    def of(cls, m: HeadMetric) -> RoleInfo:
        return cls(
            name=m.name,
            label=m.label,
            description=m.definition,
            low=m.low,
            high=m.high,
            higher_is_more=m.higher_is_more,
            measured_on=m.on,
            summary=m.summary,
            has_where=m.has_where,
        )


class SimilarityInfo(BaseModel):
    name: str = Field(description="the `metric` value of /api/similarity and corpus job similarity")
    label: str
    description: str
    low: float
    high: float
    higher_is_alike: bool


class RolesOut(BaseModel):
    roles: list[RoleInfo]
    similarity: list[SimilarityInfo] = Field(description="the head-similarity measures")


# -- overview ------------------------------------------------------------------------------------


class OverviewIn(TextIn):
    thumb: int = Field(32, ge=4, le=64, description="thumbnail side in pixels (block means of each map)")
    top_k: int = Field(10, ge=1, le=100)


RoleGrid = create_model(
    "RoleGrid",
    __config__=_SCORES,
    __doc__="Per-head scores as n_layers × n_heads grids, a field per registry metric (as in /api/heads).",
    **per_metric(list[list[float]], registry.METRICS),
)


class OverviewOut(Tokens):
    n_layers: int
    n_heads: int
    thumb_size: int = Field(description="side s of each thumbnail (min of `thumb` and the token count)")
    thumbnails: str = Field(
        description="base64 of n_layers·n_heads·s·s uint8, layer-major then head then row then column; each "
        "thumbnail is its map's block means scaled so its largest value is 255"
    )
    thumb_max: list[list[float]] = Field(description="per head, the block mean that 255 stands for")
    stats: RoleGrid  # type: ignore[valid-type]
    prediction: PredictionOut
