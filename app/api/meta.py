"""Liveness, readiness, the model card and tokenization."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import (
    ERRORS,
    AttentionParams,
    Error,
    Health,
    KVCacheCost,
    LayerVariantOut,
    ModelInfo,
    RoleInfo,
    RolesOut,
    SimilarityInfo,
    TextIn,
    TokenizeOut,
)
from app.errors import NotReady
from app.inspect.engine.runs import token_strings
from app.inspect.model.variants import variants_of
from app.inspect.observe import registry
from app.inspect.observe.tradeoff import attention_params

router = APIRouter(prefix="/api", tags=["model"])
LOAD_FAILED: dict[int | str, dict[str, object]] = {
    503: {"model": Error, "description": "load_failed: the model failed to load; this process never will"}
}


@router.get("/health", response_model=Health, responses=LOAD_FAILED)
def health(svc: ServiceDep) -> Health:
    """Liveness (the Docker healthcheck): 200 while the process can serve, 503 `load_failed` once the model
    failed to load. Never touches the model."""
    if svc.load_error is not None:
        raise svc.unavailable()
    return Health(status="ok")


@router.get("/ready", response_model=Health, responses=ERRORS)
def ready(svc: ServiceDep) -> Health:
    """Readiness: 200 once the model is loaded and warmed; 503 before that, while shutting down, and after a
    failed load."""
    if svc.load_error is not None:
        raise svc.unavailable()
    if svc.stopping:
        raise NotReady("shutting down")
    if not svc.ready:
        raise NotReady("loading the model")
    return Health(status="ready")


@router.get("/model", response_model=ModelInfo, responses=ERRORS)
def model_info(svc: ServiceDep) -> ModelInfo:
    """The served model: head layout, KV groups and what its KV cache costs per token."""
    loaded = svc.model
    layout = loaded.adapter.layout
    width = loaded.dtype.itemsize
    this = layout.kv_cache_bytes_per_token(width)
    mha = layout.kv_cache_bytes_per_token(width, layout.n_heads)
    return ModelInfo(
        name=loaded.name,
        architecture=layout.architecture,
        n_layers=layout.n_layers,
        n_heads=layout.n_heads,
        n_kv_heads=layout.n_kv_heads,
        head_dim=layout.head_dim,
        d_model=layout.d_model,
        vocab_size=layout.vocab_size,
        max_positions=layout.max_positions,
        max_tokens=svc.max_tokens,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        n_params=sum(p.numel() for p in loaded.model.parameters()),
        kv_groups=layout.kv_groups(),
        kv_cache_bytes_per_token=this,
        kv_cache=KVCacheCost(
            this_model=this,
            mha=mha,
            mqa=layout.kv_cache_bytes_per_token(width, 1),
            saving_vs_mha=1 - this / mha,
        ),
        attention_params=[AttentionParams(q=p.q, k=p.k, v=p.v, o=p.o) for p in attention_params(loaded.adapter)],
        layer_variants=[
            LayerVariantOut(layer=i, label=v.label, window=v.window, softcap=v.softcap, sinks=v.sinks)
            for i, v in enumerate(variants_of(loaded.model, loaded.adapter))
        ],
    )


@router.get("/roles", response_model=RolesOut)
def roles() -> RolesOut:
    """The registry of head metrics (the fields of /api/heads, /api/overview and corpus jobs) and of
    head-similarity measures: name, label on screen, definition, range, direction."""
    return RolesOut(
        roles=[RoleInfo.of(m) for m in registry.METRICS],
        similarity=[
            SimilarityInfo(
                name=s.name,
                label=s.label,
                description=s.definition,
                low=s.low,
                high=s.high,
                higher_is_alike=s.higher_is_alike,
            )
            for s in registry.SIMILARITY
        ],
    )


@router.post("/tokenize", response_model=TokenizeOut, responses=ERRORS)
def tokenize(body: TextIn, svc: ServiceDep) -> TokenizeOut:
    """Token ids and display strings of a text, exactly as the model sees it."""
    ids = checked_ids(svc, body.text)
    return TokenizeOut(tokens=token_strings(svc.model.tokenizer, ids), token_ids=ids, n_tokens=len(ids))
