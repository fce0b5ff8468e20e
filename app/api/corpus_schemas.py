"""Pydantic models of the corpus endpoints (datasets, then jobs); field descriptions become the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.api.schemas import Strict
from app.inspect.observe import registry

# -- datasets ------------------------------------------------------------------------------------


class DatasetIn(Strict):
    """A dataset sent as JSON. (A file is sent as multipart/form-data instead: see POST /api/datasets.)"""

    name: str = Field(min_length=1, max_length=200, description="a name to show; need not be unique")
    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="the texts, each non-empty; at most HEADSCOPE_MAX_DATASET_TEXTS of them"
    )


class DatasetOut(BaseModel):
    id: str = Field(description='"ds_" + 12 hex characters, or "builtin:..." for a built-in set')
    name: str
    n_texts: int
    n_tokens: int | None = Field(
        description="tokens over all texts under the served model's tokenizer (null: a built-in not yet counted)"
    )
    builtin: bool = Field(description="built-in sets are generated at run time and cannot be deleted")
    created: str = Field(description="ISO 8601, UTC")


class DatasetDetail(DatasetOut):
    sample: list[str] = Field(description="the first texts (at most 5)")


class DatasetList(BaseModel):
    datasets: list[DatasetOut] = Field(description="built-in sets first, then uploads, oldest first")


class IndexedText(BaseModel):
    index: int = Field(description="the text's position in the dataset, 0-based")
    text: str


class TextsPage(BaseModel):
    total: int = Field(description="texts in the dataset")
    texts: list[IndexedText]


def upload_body() -> dict[str, Any]:
    """The OpenAPI request body of POST /api/datasets: JSON, or a multipart file (the route reads either)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": DatasetIn.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": '.jsonl (an object with a "text" field per line) or .txt '
                                "(documents separated by blank lines), UTF-8",
                            },
                            "name": {"type": "string", "maxLength": 200, "description": "default: the file name"},
                        },
                    }
                },
            },
        }
    }


# -- jobs ----------------------------------------------------------------------------------------

Analysis = Literal["roles", "importance", "similarity"]
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobIn(Strict):
    dataset: str = Field(min_length=1, max_length=200, description="a dataset id from GET /api/datasets")
    analyses: list[Analysis] = Field(
        ["roles"], description="what to measure on every text: roles (the /api/heads scores), importance, similarity"
    )
    importance: Literal["gradient", "ablation"] = Field("gradient", description="how importance is measured")
    max_tokens: int = Field(
        128, ge=1, le=1_000_000, description="each text is cut to this many tokens (≤ the server's)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the bootstrap and the split halves")


class JobProgress(BaseModel):
    done: int = Field(description="texts finished")
    total: int = Field(description="texts in the dataset (0 until the job has started)")
    tokens: int = Field(description="tokens of the finished texts")
    tokens_per_s: float | None = Field(description="tokens per second of the job's running time")
    eta_s: float | None = Field(description="seconds left at that rate, while the job is active")


class JobOut(BaseModel):
    id: str = Field(description='"job_" + 12 hex characters')
    dataset: str
    analyses: list[str]
    importance: str
    max_tokens: int
    seed: int
    state: JobState
    error: str | None = Field(description="why the job failed")
    progress: JobProgress
    created: str = Field(description="ISO 8601, UTC")
    started: str | None
    finished: str | None


class JobBackend(BaseModel):
    """Where corpus jobs run: the server's model worker, or the actors of a Ray cluster."""

    backend: Literal["in-process", "ray"]
    address: str | None = Field(None, description="HEADSCOPE_RAY_ADDRESS")
    workers: int = Field(description="actors holding the model (1: the model worker)")
    state: Literal["ready", "starting", "failed"]
    error: str | None = None


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="newest first")
    backend: JobBackend


class StatOut(BaseModel):
    """One head's statistic over texts: mean, std, texts that count (n), 95% percentile bootstrap interval."""

    mean: float | None
    std: float | None
    n: int
    ci_low: float | None
    ci_high: float | None


_STATS: dict[str, Any] = {
    m.name: (StatOut | None, Field(None, description=m.definition)) for m in registry.text_metrics()
}
_MetricStats = create_model(
    "_MetricStats",
    __config__=ConfigDict(extra="allow"),  # a metric added to the registry after start-up still goes out
    **_STATS,
)


class HeadStatsOut(_MetricStats):  # type: ignore[misc,valid-type]
    """One head; a field per metric the job computed (others are left out): the registry's text metrics
    (GET /api/roles) and `importance`."""

    layer: int
    head: int
    kv_group: int
    importance: StatOut | None = None
    induction: StatOut | None = Field(
        None,
        description="the same as text_induction: the name the corpus contract first gave prefix matching on the "
        "texts (kept for its clients; /api/heads `induction` is the probe's)",
    )


class JobHeadsOut(BaseModel):
    n_texts: int = Field(description="texts finished and counted")
    partial: bool = Field(description="true until the job is done")
    metrics: list[str]
    reliability: dict[str, float | None] = Field(
        description="per metric: Spearman correlation of the head means over two random halves of the texts"
    )
    heads: list[HeadStatsOut]


class ExampleOut(BaseModel):
    text_index: int
    score: float
    text: str
    tokens: list[str] = Field(description="the text's tokens (cut to the job's max_tokens)")
    query_pos: int | None = Field(description="where in the text the head does it most (null: no such cell)")
    key_pos: int | None
    decile: int | None = Field(
        None, description='with sample="deciles": the decile (0–9, 9 = highest) of the text\'s score among the texts'
    )


class ExamplesOut(BaseModel):
    metric: str
    sample: Literal["top", "deciles"] = "top"
    examples: list[ExampleOut]
    bounds: list[float | None] | None = Field(
        None,
        description='with sample="deciles": the 11 edges of the deciles of the head\'s per-text scores '
        "(np.quantile at 0, 0.1, …, 1; decile d holds bounds[d] ≤ score ≤ bounds[d+1])",
    )
    seed: int | None = Field(None, description='with sample="deciles": the seed of the draw')


class HeadName(BaseModel):
    layer: int
    head: int


class JobSimilarityOut(BaseModel):
    n_texts: int = Field(description="texts averaged")
    heads: list[HeadName] = Field(description="layer order")
    matrix: list[list[float]] = Field(description="n × n, as /api/similarity, averaged over texts")


class QKPoint(BaseModel):
    x: float
    y: float
    kind: Literal["query", "key"]
    text_index: int = Field(description="the text's index in the dataset")
    position: int = Field(description="the token's position in the text (cut to the job's max_tokens)")
    token: str
    before: str = Field(description="the few tokens before it, for context")


class QKEmbeddingOut(BaseModel):
    layer: int
    head: int
    kv_head: int = Field(description="the KV head whose keys these are (GQA: shared by its query heads)")
    method: Literal["pca"] = "pca"
    color: Literal["kind", "position", "token"]
    n_texts: int = Field(description="the job's finished texts the positions were sampled from")
    positions_seen: int = Field(description="positions in those texts")
    n_positions: int = Field(description="positions sampled (seeded reservoir, at most max_positions)")
    max_positions: int
    seed: int
    scale: float = Field(description="queries are multiplied and keys divided by it: equal mean lengths")
    key_shift: list[float] = Field(
        description="added to every (scaled) key so that the key centroid is the query centroid; softmax is "
        "unchanged, since a query's scores all gain the same a·q·key_shift"
    )
    explained: list[float] = Field(description="share of the variance along x and y")
    points: list[QKPoint] = Field(description="each sampled position's query, then every key, in text order")
