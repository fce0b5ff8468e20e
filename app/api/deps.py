"""What routers are given: every dependency provider (the service, the dataset store, the jobs), and the
request-side checks shared by routers, which run before anything is queued for the model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request

from app.api.schemas import HeadRef
from app.corpus.datasets import DatasetStore
from app.corpus.jobs import Jobs
from app.errors import InvalidInput
from app.inspect import checks
from app.inspect.engine.runs import encode
from app.inspect.model.families import Layout
from app.service import Service


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def dataset_store(request: Request) -> DatasetStore:
    store: DatasetStore = request.app.state.datasets
    return store


def corpus_jobs(request: Request) -> Jobs:
    jobs: Jobs = request.app.state.jobs
    return jobs


ServiceDep = Annotated[Service, Depends(service)]
StoreDep = Annotated[DatasetStore, Depends(dataset_store)]
JobsDep = Annotated[Jobs, Depends(corpus_jobs)]


def checked_ids(svc: Service, text: str) -> list[int]:
    """Tokenize and enforce max_tokens (422 naming both numbers)."""
    ids = encode(svc.model.tokenizer, text)
    if not ids:
        raise InvalidInput("text gives no tokens")
    limit = svc.max_tokens
    if len(ids) > limit:
        raise InvalidInput(
            f"text is {len(ids)} tokens; this server accepts at most {limit} "
            "(HEADSCOPE_MAX_TOKENS, capped by the model's max positions)"
        )
    return ids


def checked_index(field: str, what: str, value: int, count: int) -> int:
    """`value` when 0 ≤ value < count. Else 422 invalid_input naming the model's bounds: the one rule for every
    layer, head and KV head a request names, negative or huge alike."""
    if not 0 <= value < count:
        raise InvalidInput(f"{field}: {what} {value} out of range; the model has {what}s 0..{count - 1}")
    return value


def checked_heads(layout: Layout, heads: Iterable[HeadRef], field: str) -> list[tuple[int, int]]:
    """(layer, head) pairs, each in range, duplicates removed, order kept."""
    out: dict[tuple[int, int], None] = {}
    for ref in heads:
        layer = checked_index(field, "layer", ref.layer, layout.n_layers)
        out[(layer, checked_index(field, "head", ref.head, layout.n_heads))] = None
    return list(out)


def checked_layers(layout: Layout, layers: Iterable[int], field: str = "layers") -> list[int]:
    """Layer indices, each in range, duplicates removed, order kept."""
    return list(dict.fromkeys(checked_index(field, "layer", layer, layout.n_layers) for layer in layers))


def checked_token(svc: Service, text: str | None, token_id: int | None, field: str) -> int | None:
    """The id of a token argument given as a one-token string or as `{field}_id`; None when neither is given."""
    if text is not None and token_id is not None:
        raise InvalidInput(f"give `{field}` or `{field}_id`, not both")
    vocab = svc.model.adapter.layout.vocab_size
    if token_id is not None:
        if token_id >= vocab:
            raise InvalidInput(f"{field}_id: {token_id} is out of range; the vocabulary has ids 0..{vocab - 1}")
        return token_id
    if text is None:
        return None
    tokenizer = svc.model.tokenizer
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise InvalidInput(
            f"{field}: {text!r} is {len(ids)} tokens {pieces}, not one; give a single token or `{field}_id`"
        )
    if ids[0] >= vocab:
        raise InvalidInput(f"{field}: {text!r} has id {ids[0]}, outside the model's {vocab} logits")
    return ids[0]


def check_traceable(svc: Service, dla: bool = False) -> None:
    """422 when patching, the logit lens (or, with `dla`, DLA) would not be exact on the served model."""
    gap = checks.tracing_gaps(svc.model.adapter, dla)
    if gap is not None:
        raise InvalidInput(gap)


def checked_position(position: int, n_tokens: int, field: str = "position") -> int:
    """A query position (negative counts from the end) as 0..n_tokens−1; 422 when out of range."""
    if not -n_tokens <= position < n_tokens:
        raise InvalidInput(
            f"{field}: {position} is out of range for {n_tokens} tokens (use {-n_tokens}..{n_tokens - 1})"
        )
    return position % n_tokens


def check_map_budget(svc: Service, n_maps: int, n_tokens: int) -> None:
    cells = n_maps * n_tokens * n_tokens
    if cells > svc.settings.max_map_cells:
        raise InvalidInput(
            f"{n_maps} maps of {n_tokens}×{n_tokens} is {cells} weights; one response carries at most "
            f"{svc.settings.max_map_cells}: ask for fewer heads per request"
        )
