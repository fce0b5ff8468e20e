"""One snapshot as HTML: a whole file (`document=True`) or a fragment for a notebook output.

Maps travel as the lower triangles of their float16 values (a causal map is 0 above the diagonal), gzipped
and base64-encoded; the thumbnails and tables as the API gives them.
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app import __version__
from app.errors import InvalidInput
from app.snapshot.assets import ROOT, plotly_gz_base64, snapshot_css
from app.snapshot.bundle import bundle

_templates = Environment(loader=FileSystemLoader(ROOT / "templates"), autoescape=select_autoescape(default=True))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Snapshot:
    """What a snapshot shows. `maps` are /api/attention maps (either encoding), all n_tokens × n_tokens;
    `overview` an /api/overview response (the grid), `similarity` an /api/similarity response,
    `model_info` GET /api/model (KV groups for the grid), `roles` GET /api/roles' `roles`; `figures` Plotly
    figures as a page drew them ({title, data, layout}: the trace views);
    `show` the first view: {"head": {layer, head}, "cmp": {...} or None, "scale": "linear" or "log"};
    `ablation` an /api/ablate response with `ablate` (the heads switched off) and `mode`: the next-token
    predictions with and without them, drawn as the Heads page's panel draws them."""

    title: str
    model: str
    text: str
    tokens: list[str]
    maps: list[dict[str, Any]] = field(default_factory=list)
    overview: dict[str, Any] | None = None
    similarity: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None
    roles: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    show: dict[str, Any] | None = None
    ablation: dict[str, Any] | None = None
    date: str = field(default_factory=_now)
    version: str = __version__


def _weights(m: dict[str, Any]) -> np.ndarray:
    """One API map as an (n_queries, n_keys) float16 array."""
    if m.get("weights_f16") is not None:
        raw = np.frombuffer(base64.b64decode(m["weights_f16"]), dtype="<f2")
        return raw.reshape(m["shape"])
    return np.asarray(m["weights"], dtype="<f2")


def pack_maps(maps: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """{heads, n, f16_gz}: every map's lower triangle (row q: keys 0..q), float16, one gzip stream, base64."""
    if not maps:
        return None
    rows, cols = np.tril_indices(n)
    parts = []
    for m in maps:
        w = _weights(m)
        if w.shape != (n, n):
            raise ValueError(f"map L{m['layer']}H{m['head']} is {w.shape}, not ({n}, {n}): one text per snapshot")
        parts.append(w[rows, cols])
    packed = gzip.compress(np.concatenate(parts).astype("<f2").tobytes(), compresslevel=6, mtime=0)
    return {
        "heads": [{"layer": m["layer"], "head": m["head"]} for m in maps],
        "n": n,
        "f16_gz": base64.b64encode(packed).decode("ascii"),
    }


def _json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives unescaped."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN or ±Infinity, which a page's figure may hold: JSON cannot
        raise InvalidInput("a snapshot holds numbers only JSON can carry: no NaN or Infinity") from exc
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(snap: Snapshot, *, document: bool = True, plotly: bool = True) -> str:
    """The snapshot as HTML.

    Args:
        snap: what to show.
        document: a whole file (True) or a fragment to embed (a notebook output).
        plotly: carry plotly.js (gzipped, ≈ 2 MB). A fragment may leave it out when an earlier output on
            the same page carried it.
    """
    data = asdict(snap)
    data["maps"] = pack_maps(snap.maps, len(snap.tokens))
    css = snapshot_css()
    if "</style" in css.lower():
        raise ValueError("the stylesheet holds '</style'")
    return _templates.get_template("snapshot.html").render(
        document=document,
        id=f"hs-{secrets.token_hex(6)}",
        title=snap.title,
        model=snap.model,
        date=snap.date,
        version=snap.version,
        css=css,
        data=_json(data),
        plotly=plotly_gz_base64() if plotly else None,
        bundle=bundle(),
    )
