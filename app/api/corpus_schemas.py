"""Pydantic models of the corpus endpoints (datasets, then jobs); field descriptions become the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.api.schemas import Strict

# -- datasets ------------------------------------------------------------------------------------


class DatasetIn(Strict):
    """A dataset sent as JSON. (A file is sent as multipart/form-data instead: see POST /api/datasets.)"""

    name: str = Field(min_length=1, max_length=200, description="a name to show; need not be unique")
    texts: list[str] = Field(
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
