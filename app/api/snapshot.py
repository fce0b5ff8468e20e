"""One self-contained HTML file of a text's views (grid, maps, similarity, ablation): the page's "Save as HTML"."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.api.deps import ServiceDep, check_map_budget, checked_heads, checked_ids
from app.api.encode import f16_base64
from app.api.grid import overview_out
from app.api.schemas import ERRORS, AblateOut, RoleInfo, SimilarityOut
from app.api.snapshot_schemas import SnapshotIn
from app.inspect.intervene.ablation import ablate as run_ablation
from app.inspect.model.variants import variants_of
from app.inspect.observe import registry
from app.inspect.observe.similarity import head_similarity
from app.service import Service
from app.snapshot.page import Snapshot, render

router = APIRouter(prefix="/api", tags=["snapshot"])
HTML: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "the file (Content-Disposition: attachment)"}
}


def _figures(body: SnapshotIn, svc: Service) -> Snapshot:
    """A file of figures a page drew: nothing to compute, so the text is not run."""
    return Snapshot(
        title=body.title or "HeadScope figures",
        model=svc.model.name,
        text=body.text,
        tokens=[],
        figures=[f.model_dump() for f in body.figures],
    )


def _file_name(title: str) -> str:
    return "headscope-" + (re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")[:40] or "view") + ".html"


@router.post("/snapshot", response_class=HTMLResponse, responses={**ERRORS, **HTML})
async def snapshot(body: SnapshotIn, svc: ServiceDep) -> HTMLResponse:
    """A self-contained HTML file: the text's maps of `heads`, the grid and a similarity matrix, offline."""
    layout = svc.model.adapter.layout
    heads = checked_heads(layout, body.heads, "heads")
    cmp = checked_heads(layout, [body.cmp], "cmp") if body.cmp else []
    off = checked_heads(layout, body.ablate, "ablate")
    ids = checked_ids(svc, body.text)
    check_map_budget(svc, len(heads), len(ids))

    def work() -> Snapshot:
        loaded = svc.model
        run = svc.run_for(body.text, ids)
        maps = []
        for layer, head in heads:
            weights = run.maps(layer, [head], layout.group_size)[0]  # (T, T)
            shape = list(weights.shape)
            maps.append({"layer": layer, "head": head, "shape": shape, "weights_f16": f16_base64(weights).decode()})
        sim = None
        if body.similarity is not None:
            every = [(ly, h) for ly in range(layout.n_layers) for h in range(layout.n_heads)]
            found = head_similarity(run, layout, every, body.similarity, "layer")
            sim = SimilarityOut.of(found, body.similarity, "layer").model_dump()
        ablation = None
        if off:  # as /api/ablate answers it, with what was switched off and how
            compared = run_ablation(loaded, run, off, body.mode, 10, [])
            ablation = AblateOut.of(compared, run, loaded.tokenizer).model_dump(exclude={"maps"})
            ablation.update(ablate=[{"layer": ly, "head": h} for ly, h in off], mode=body.mode)
        variants = variants_of(loaded.model, loaded.adapter)
        shown = [f"L{ly}H{h}" for ly, h in heads[:4]] + (["…"] if len(heads) > 4 else [])
        return Snapshot(
            title=body.title or (f"Attention of {', '.join(shown)}" if heads else "HeadScope view"),
            model=loaded.name,
            text=body.text,
            tokens=run.tokens,
            maps=maps,
            overview=overview_out(svc, run, 32, 10).model_dump() if body.thumbnails else None,
            similarity=sim,
            model_info={
                "kv_groups": layout.kv_groups(),
                "layer_variants": [{"layer": i, "label": v.label, "window": v.window} for i, v in enumerate(variants)],
            },
            roles=[RoleInfo.of(m).model_dump() for m in registry.METRICS],
            figures=[f.model_dump() for f in body.figures],
            show={
                "head": {"layer": heads[0][0], "head": heads[0][1]} if heads else None,
                "cmp": {"layer": cmp[0][0], "head": cmp[0][1]} if cmp else None,
                "scale": body.scale,
            },
            ablation=ablation,
        )

    figures_only = not heads and not body.thumbnails and body.similarity is None and not off
    snap = _figures(body, svc) if figures_only else await svc.call(work, n_tokens=len(ids))
    page = await asyncio.to_thread(render, snap)
    disposition = f'attachment; filename="{_file_name(snap.title)}"'
    return HTMLResponse(page, headers={"Content-Disposition": disposition})
