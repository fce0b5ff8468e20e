"""What the all-heads grid shows for one text, as /api/overview answers it and a snapshot carries it:
thumbnails, role scores and the prediction, built from the text's run (model thread)."""

from __future__ import annotations

import base64

import torch

from app.api.schemas import OverviewOut, PredictionOut, RoleGrid
from app.inspect.engine.runs import Run, predict
from app.inspect.observe.roles import every_score, head_stats
from app.service import Service


def _grid(t: torch.Tensor) -> list[list[float]]:
    out: list[list[float]] = t.tolist()
    return out


def overview_out(svc: Service, run: Run, thumb: int, top_k: int) -> OverviewOut:
    """Every head's thumbnail (uint8, scaled to its own peak), role scores and the prediction after the text."""
    loaded = svc.model
    layout = loaded.adapter.layout
    s = head_stats(run, layout, thumb)
    assert s.thumbnails is not None
    peak = s.thumbnails.amax(dim=(-1, -2)).clamp_min(1e-12)  # (L, H)
    scaled = (s.thumbnails / peak[..., None, None] * 255).round().clamp(0, 255).to(torch.uint8)
    scores = every_score(s, svc.probe_scores())
    pred = predict(loaded.adapter.lm_head(), run, top_k)
    return OverviewOut(
        tokens=run.tokens,
        token_ids=run.token_ids,
        n_layers=layout.n_layers,
        n_heads=layout.n_heads,
        thumb_size=int(s.thumbnails.shape[-1]),
        thumbnails=base64.b64encode(scaled.numpy().tobytes()).decode("ascii"),
        thumb_max=_grid(peak),
        stats=RoleGrid(**{name: None if g is None else _grid(g) for name, g in scores.items()}),
        prediction=PredictionOut.of(pred, loaded.tokenizer),
    )
