"""Vector figures of results for papers: `save_svg(path)` and `save_pdf(path)`.

Plotly's own static export through kaleido 0.2.1, whose wheel carries a headless Chromium of its own: it runs
on the CPU and downloads nothing (kaleido 1.x drives a Chrome it must find or download, so it is not used).
plotly.js is the installed plotly package's, as everywhere in HeadScope, and MathJax is off: no request leaves
the machine. The figures are static pages of numbers (no hover), drawn with the page's colour scale; the
interactive views are the HTML snapshots.
"""

from __future__ import annotations

import math
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from app.snapshot.assets import PLOTLY_JS
from headscope.heads import label

# lib/util.js BLUES: the page's attention scale
BLUES = [(255, 255, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]
ATTN_SCALE = [[i / (len(BLUES) - 1), f"rgb{c}"] for i, c in enumerate(BLUES)]
DIVERGING = [[0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1, "#b2182b"]]
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 11, "color": "#1f2937"}
PANEL_PX = 380
MAX_TICKS = 48
FORMATS = ("svg", "pdf")


@cache
def _kaleido() -> Any:
    """One kaleido scope per process (its Chromium starts on the first export and is reused)."""
    try:
        from kaleido.scopes.plotly import PlotlyScope
    except ImportError as exc:  # an optional dependency: only the vector export needs it
        raise ImportError(
            "save_svg() and save_pdf() need kaleido 0.2.1, which carries its own Chromium: pip install kaleido==0.2.1"
        ) from exc
    return PlotlyScope(plotlyjs=str(PLOTLY_JS), mathjax=False)


def export(figure: dict[str, Any], fmt: str) -> bytes:
    """`figure` ({data, layout}) as SVG or PDF bytes, by Plotly's own static export."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    with warnings.catch_warnings():  # kaleido 0.2.1 starts its reader thread with the deprecated setDaemon()
        warnings.filterwarnings("ignore", "setDaemon", DeprecationWarning)
        out: bytes = _kaleido().transform(figure, format=fmt)
    return out


def _text(s: str) -> str:
    """A token as a label: spaces and line breaks visible (lib/util.js visible), markup-like text kept as text."""
    marks = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}
    shown = "".join(marks.get(c, c) for c in s) or "∅"
    shown = shown if len(shown) <= 14 else shown[:13] + "…"
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ticks(labels: list[str]) -> dict[str, Any]:
    step = math.ceil(len(labels) / MAX_TICKS)
    at = list(range(0, len(labels), step))
    return {"tickmode": "array", "tickvals": at, "ticktext": [labels[i] for i in at], "tickfont": {"size": 9}}


def maps_figure(tokens: list[str], heads: list[tuple[int, int]], maps: np.ndarray) -> dict[str, Any]:
    """Attention maps (n_maps, n_queries, n_keys) side by side, three to a row: queries down, keys across."""
    n, size = len(heads), len(tokens)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    labels = [_text(t) for t in tokens]
    width, height = cols * PANEL_PX + 90, rows * (PANEL_PX + 40) + 30
    layout: dict[str, Any] = {
        "width": width,
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "font": FONT,
        "plot_bgcolor": "#eef0f3",
        "coloraxis": {"colorscale": ATTN_SCALE, "cmin": 0, "cmax": float(maps.max()) if maps.size else 1},
        "annotations": [],
    }
    data = []
    above = np.triu(np.ones((size, size), dtype=bool), 1)
    for i, (head, weights) in enumerate(zip(heads, maps, strict=True)):
        r, c = divmod(i, cols)
        ax = "" if i == 0 else str(i + 1)
        z = np.where(above, np.nan, weights.astype(np.float64))  # above the diagonal: background, as on the page
        data.append({"type": "heatmap", "z": z, "xaxis": f"x{ax}", "yaxis": f"y{ax}", "coloraxis": "coloraxis"})
        x0, x1 = c / cols + 0.09 / cols, (c + 1) / cols - 0.02 / cols
        y1 = 1 - r / rows - 0.06 / rows
        y0 = 1 - (r + 1) / rows + 0.16 / rows
        bare = {"showgrid": False, "zeroline": False, **_ticks(labels)}
        layout[f"xaxis{ax}"] = {"domain": [x0, x1], "anchor": f"y{ax}", "tickangle": -90, **bare}
        layout[f"yaxis{ax}"] = {"domain": [y0, y1], "anchor": f"x{ax}", "autorange": "reversed", **bare}
        layout["annotations"].append(
            {
                "text": f"<b>{label(*head)}</b>",
                "x": (x0 + x1) / 2,
                "y": y1,
                "xref": "paper",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
            }
        )
    return {"data": data, "layout": layout}


def matrix_figure(
    matrix: np.ndarray, title: str, x: list[str], y: list[str], diverging: bool = False
) -> dict[str, Any]:
    """One matrix as a heatmap with labelled rows and columns (a head matrix, a similarity matrix)."""
    finite = matrix[np.isfinite(matrix)]
    peak = float(np.abs(finite).max()) if finite.size else 1.0
    scale = {"colorscale": DIVERGING, "zmin": -peak, "zmax": peak} if diverging else {"colorscale": ATTN_SCALE}
    side = max(360, min(900, 14 * max(len(x), len(y)) + 160))
    return {
        "data": [{"type": "heatmap", "z": matrix.astype(np.float64), "x": x, "y": y, **scale}],
        "layout": {
            "width": side + 80,
            "height": side,
            "title": {"text": title, "x": 0.02},
            "font": FONT,
            "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
            "xaxis": {"type": "category", "tickangle": -90},
            "yaxis": {"type": "category", "autorange": "reversed"},
        },
    }


class Exportable:
    """A result that exports a vector figure: subclasses say what `figure()` draws."""

    def figure(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_image(self, fmt: str = "svg") -> bytes:
        """The figure as SVG or PDF bytes (Plotly's static export through kaleido: offline, CPU only)."""
        return export(self.figure(), fmt)

    def save_svg(self, path: str | Path) -> Path:
        """Write the figure as an SVG file (vectors, text as text)."""
        out = Path(path)
        out.write_bytes(self.to_image("svg"))
        return out

    def save_pdf(self, path: str | Path) -> Path:
        """Write the figure as a one-page PDF (vectors, text as text)."""
        out = Path(path)
        out.write_bytes(self.to_image("pdf"))
        return out
