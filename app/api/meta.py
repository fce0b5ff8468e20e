"""Liveness, readiness, the model card and tokenization."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep, checked_ids
from app.api.schemas import ERRORS, Health, KVCacheCost, ModelInfo, RoleInfo, RolesOut, TextIn, TokenizeOut
from app.inspect.roles import ROLES
from app.inspect.runs import token_strings

router = APIRouter(prefix="/api", tags=["model"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: the process is up. Never touches the model."""
    return Health(status="ok")


@router.get("/ready", response_model=Health, responses=ERRORS)
def ready(svc: ServiceDep) -> Health | JSONResponse:
    """Readiness: 200 once the model is loaded and warmed, 503 before that and while shutting down."""
    if svc.ready and not svc.stopping:
        return Health(status="ready")
    state = "shutting down" if svc.stopping else "loading the model"
    return JSONResponse({"error": "not_ready", "detail": state}, status_code=503, headers={"Retry-After": "2"})


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
    )


@router.get("/roles", response_model=RolesOut)
def roles() -> RolesOut:
    """The per-head role scores of /api/heads: field name, label on screen, what it measures."""
    return RolesOut(roles=[RoleInfo(name=r.name, label=r.label, description=r.description) for r in ROLES])


@router.post("/tokenize", response_model=TokenizeOut, responses=ERRORS)
def tokenize(body: TextIn, svc: ServiceDep) -> TokenizeOut:
    """Token ids and display strings of a text, exactly as the model sees it."""
    ids = checked_ids(svc, body.text)
    return TokenizeOut(tokens=token_strings(svc.model.tokenizer, ids), token_ids=ids, n_tokens=len(ids))
