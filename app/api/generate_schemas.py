"""Pydantic models of POST /api/generate: continuations with and without switched-off heads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas import HeadRef, TextIn, Tokens

MAX_NEW_TOKENS = 256


class GenerateIn(TextIn):
    max_new_tokens: int = Field(
        32,
        ge=1,
        le=MAX_NEW_TOKENS,
        description="the most tokens each continuation adds; prompt + max_new_tokens must fit the server's "
        "max_tokens (GET /api/model), else 422",
    )
    ablate: list[HeadRef] = Field(
        default_factory=list, max_length=100_000, description="heads switched off in the `ablated` continuation"
    )
    mode: Literal["zero", "mean"] = Field(
        "zero",
        description="zero the heads' outputs, or replace each by its mean output over the PROMPT's positions "
        "(the same vector at every generated step)",
    )
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 = greedy (the default); else sampling")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="nucleus sampling: keep the most probable tokens up to this mass"
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="seed of the sampler (random when omitted; the one used is returned)"
    )


class ContinuationOut(BaseModel):
    """What one model generated after the prompt."""

    token_ids: list[int] = Field(description="the generated ids, the end-of-text token included when it stopped there")
    tokens: list[str] = Field(description="display string of each generated token")
    text: str = Field(description="the text the continuation adds to the prompt (without a final end-of-text token)")
    logprobs: list[float] = Field(
        description="log p (nats) of each generated token under that model's own distribution, before temperature "
        "and top-p"
    )
    stop: Literal["eos", "length"] = Field(description="why it stopped: the end-of-text token, or max_new_tokens")


class GenerateOut(Tokens):
    """`tokens` / `token_ids` are the prompt's."""

    baseline: ContinuationOut = Field(description="the unchanged model")
    ablated: ContinuationOut | None = Field(None, description="with the `ablate` heads switched off; null without them")
    first_difference: int | None = Field(
        None, description="index of the first generated token where the two continuations part; null if they do not"
    )
    seed: int | None = Field(None, description="the sampler's seed (null when greedy)")


class TokenOut(BaseModel):
    id: int
    token: str
    logprob: float


class StepEvent(BaseModel):
    """The data of one `token` event of the stream: each row's new token, null once that row has stopped."""

    index: int
    baseline: TokenOut | None
    ablated: TokenOut | None = None
