"""Corpus jobs: start, watch, cancel and resume analyses over a dataset; read their statistics."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["jobs"])
