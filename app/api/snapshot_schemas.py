"""The request of POST /api/snapshot: which views of one text the saved file holds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from app.api.schemas import HeadRef, Strict, TextIn
from app.inspect.observe.registry import SimilarityName

MAX_SNAPSHOT_MAPS = 64
MAX_FIGURES = 16


class FigureIn(Strict):
    """A figure a page has drawn, as Plotly holds it (`div.data`, `div.layout`): the file redraws it as it is."""

    title: str = Field(max_length=200)
    data: list[dict[str, Any]] = Field(max_length=64, description="Plotly traces")
    layout: dict[str, Any] = Field(default_factory=dict, description="Plotly layout")


class SnapshotIn(TextIn):
    heads: list[HeadRef] = Field(
        default_factory=list, max_length=MAX_SNAPSHOT_MAPS, description="heads whose full maps the file holds"
    )
    thumbnails: bool = Field(True, description="hold the all-heads grid (every head's thumbnail and role scores)")
    similarity: SimilarityName | None = Field(None, description="hold the heads × heads matrix of this measure")
    title: str | None = Field(None, max_length=200, description="the file's title (default: what it shows)")
    figures: list[FigureIn] = Field(
        default_factory=list, max_length=MAX_FIGURES, description="figures a page drew (the trace views), kept as drawn"
    )
    cmp: HeadRef | None = Field(None, description="shown beside the first of `heads` when the file opens")
    scale: Literal["linear", "log"] = "linear"
    ablate: list[HeadRef] = Field(
        default_factory=list,
        max_length=100_000,
        description="heads switched off: the file holds the next-token predictions with and without them",
    )
    mode: Literal["zero", "mean"] = Field("zero", description="how `ablate` switches a head off, as /api/ablate")
