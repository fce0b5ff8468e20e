"""Causal tracing on one prompt: activation patching, direct logit attribution, logit lens."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["tracing"])
