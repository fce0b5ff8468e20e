"""Corpus datasets: upload, list, show and delete stored texts (built-in sets are read-only)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["datasets"])
