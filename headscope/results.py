"""Typed answers: the API's JSON kept as `.raw`, with arrays and tables for the numbers.

Shapes: a head matrix is (n_layers, n_heads); maps are (n_maps, n_queries, n_keys) in the order asked;
a similarity matrix is (n, n) over `.heads`. `to_pandas()` needs pandas (`pip install pandas`).
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.figures import Exportable, matrix_figure
from headscope.heads import label

if TYPE_CHECKING:
    import pandas as pd

SIGNED = {"patch", "dla"}  # head matrices whose sign means something: drawn on a diverging scale
TITLES = {
    "gradient": "Head importance: |∂loss/∂gate|",
    "ablation": "Head importance: loss increase when switched off (nats)",
    "patch": "Activation patching: recovered fraction",
    "dla": "Direct logit attribution",
}


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # an optional dependency: only this method needs it
        raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
    return pandas


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


class Result:
    """An API answer. `raw` is the JSON as the server sent it; `result["field"]` reads it too."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __repr__(self) -> str:
        fields = ", ".join(k for k in self.raw if not k.startswith("_"))
        return f"<{type(self).__name__}: {fields}>"


class HeadMatrix(Result, Exportable):
    """One number per head (importance, patching, direct logit attribution): `to_numpy()` is (n_layers, n_heads);
    `save_svg` / `save_pdf` draw it as a layers × heads heatmap."""

    def __init__(self, raw: dict[str, Any], field: str, name: str) -> None:
        super().__init__(raw)
        self.field = field
        self.name = name

    def to_numpy(self) -> np.ndarray:
        """(n_layers, n_heads) float64."""
        return np.asarray(self.raw[self.field], dtype=np.float64)

    def to_torch(self) -> torch.Tensor:
        return _torch(self.to_numpy())

    def top(self, k: int = 10, by_abs: bool = False) -> list[tuple[str, float]]:
        """The k heads with the largest values (or largest |values|), as ("L3H5", value)."""
        m = self.to_numpy()
        order = np.argsort(-(np.abs(m) if by_abs else m), axis=None)[:k]
        return [(label(*map(int, np.unravel_index(i, m.shape))), float(m.flat[i])) for i in order]

    def to_pandas(self) -> pd.DataFrame:
        """One row per head: layer, head, and the value under this result's name."""
        m = self.to_numpy()
        layers, heads = np.indices(m.shape)
        return _pandas().DataFrame({"layer": layers.ravel(), "head": heads.ravel(), self.name: m.ravel()})

    def figure(self) -> dict[str, Any]:
        """Layers down, heads across; signed scores (patching, DLA, any negative) on a scale centred on 0."""
        m = self.to_numpy()
        x, y = [f"H{h}" for h in range(m.shape[1])], [f"L{ly}" for ly in range(m.shape[0])]
        title = TITLES.get(self.name, self.name)
        return matrix_figure(m, title, x, y, diverging=self.name in SIGNED or bool((m < 0).any()))


class HeadTable(Result):
    """Every head's metrics (POST /api/heads): `to_pandas()` has columns layer, head, kv_group and one per
    metric of the registry (GET /api/roles), in its order; `to_numpy(metric)` is (n_layers, n_heads)."""

    def __init__(self, raw: dict[str, Any], metrics: list[str]) -> None:
        super().__init__(raw)
        self.metrics = metrics

    def to_numpy(self, metric: str) -> np.ndarray:
        rows = self.raw["heads"]
        shape = (1 + max(r["layer"] for r in rows), 1 + max(r["head"] for r in rows))
        out = np.full(shape, np.nan)
        for r in rows:
            out[r["layer"], r["head"]] = np.nan if r.get(metric) is None else r[metric]
        return out

    def to_pandas(self) -> pd.DataFrame:
        columns = ["layer", "head", "kv_group", *self.metrics]
        return _pandas().DataFrame([{c: r.get(c) for c in columns} for r in self.raw["heads"]], columns=columns)


class Generation(Result):
    """POST /api/generate: `baseline` and (with heads) `ablated` continuations, each {text, tokens, …}."""

    @property
    def text(self) -> str:
        return str(self.raw["baseline"]["text"])

    @property
    def ablated_text(self) -> str | None:
        ablated = self.raw.get("ablated")
        return None if ablated is None else str(ablated["text"])

    def _repr_html_(self) -> str:
        parts = [f"<p><b>baseline</b>: <code>{html.escape(self.text)}</code></p>"]
        if self.ablated_text is not None:
            parts.append(f"<p><b>ablated</b>: <code>{html.escape(self.ablated_text)}</code></p>")
        return "<div>" + "".join(parts) + "</div>"


class LogitLens(Result):
    """POST /api/logit_lens: `to_numpy()` is the target's probability after each block, (n_layers,)."""

    def to_numpy(self) -> np.ndarray:
        return np.asarray([row["target_prob"] for row in self.raw["layers"]], dtype=np.float64)

    def to_pandas(self) -> pd.DataFrame:
        """One row per block: layer, target_prob, target_rank, top token and its probability."""
        return _pandas().DataFrame(
            [
                {
                    "layer": row["layer"],
                    "target_prob": row["target_prob"],
                    "target_rank": row["target_rank"],
                    "top_token": row["top_k"][0]["token"],
                    "top_prob": row["top_k"][0]["prob"],
                }
                for row in self.raw["layers"]
            ]
        )


class Dla(HeadMatrix):
    """POST /api/dla: `to_numpy()` is each head's term (n_layers, n_heads); `mlp` (n_layers,), `embed`, `other`
    and `logit` (the terms add up to it)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw, "heads", "dla")

    @property
    def mlp(self) -> np.ndarray:
        return np.asarray(self.raw["mlp"], dtype=np.float64)

    @property
    def logit(self) -> float:
        return float(self.raw["logit"])


def thumbnails(raw: dict[str, Any]) -> np.ndarray:
    """An /api/overview's thumbnails as (n_layers, n_heads, s, s) block means (uint8 scaled back by thumb_max)."""
    nl, nh, s = raw["n_layers"], raw["n_heads"], raw["thumb_size"]
    u8 = np.frombuffer(base64.b64decode(raw["thumbnails"]), dtype=np.uint8).reshape(nl, nh, s, s)
    peak = np.asarray(raw["thumb_max"], dtype=np.float32)[..., None, None]
    out: np.ndarray = u8.astype(np.float32) / 255 * peak
    return out
