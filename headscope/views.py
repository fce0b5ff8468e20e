"""Results that draw themselves: attention maps, the all-heads grid, the similarity matrix, and views that
combine them. Each has `_repr_html_` (a notebook output) and `save_html(path)` (one self-contained file),
both written by app.snapshot with the page's own view code; plotly.js comes from the installed package."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.snapshot.page import Snapshot, render
from headscope.figures import Exportable, maps_figure, matrix_figure
from headscope.heads import Head, label, parse
from headscope.results import Result, _pandas, _torch, thumbnails

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Context:
    """What a view shows beside its data: the model's name, GET /api/model, GET /api/roles' roles."""

    model: str
    model_info: dict[str, Any] | None = None
    roles: list[dict[str, Any]] = field(default_factory=list)


class Notebook:
    """plotly.js goes into the first output of a process (≈ 2 MB) and later outputs use it from the page."""

    plotly_sent = False

    @classmethod
    def html(cls, snap: Snapshot) -> str:
        out = render(snap, document=False, plotly=not cls.plotly_sent)
        cls.plotly_sent = True
        return out


class View(Result):
    """A result that is drawn: subclasses say what the snapshot holds."""

    def __init__(self, raw: dict[str, Any], text: str, context: Context) -> None:
        super().__init__(raw)
        self.text = text
        self.context = context

    def snapshot(self, title: str | None = None) -> Snapshot:
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return Notebook.html(self.snapshot())

    def to_html(self, title: str | None = None) -> str:
        """The whole self-contained file as a string (what save_html writes)."""
        return render(self.snapshot(title), document=True, plotly=True)

    def save_html(self, path: str | Path, title: str | None = None) -> Path:
        """Write one self-contained HTML file (data, view code and plotly.js): it opens from disk, offline."""
        out = Path(path)
        out.write_text(self.to_html(title), encoding="utf-8")
        return out

    def _snap(self, title: str, **parts: Any) -> Snapshot:
        c = self.context
        tokens = list(self.raw.get("tokens", []))
        return Snapshot(
            title=title, model=c.model, text=self.text, tokens=tokens, model_info=c.model_info, roles=c.roles, **parts
        )


class Attention(View, Exportable):
    """POST /api/attention: `to_numpy()` is (n_maps, n_queries, n_keys) float32 in the order asked (`heads`);
    `map("L3H5")` one (n_queries, n_keys) map; causal entries above the diagonal are 0. `save_svg` / `save_pdf`:
    the maps side by side, token labels on both axes."""

    @property
    def tokens(self) -> list[str]:
        return list(self.raw["tokens"])

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [(m["layer"], m["head"]) for m in self.raw["maps"]]

    def to_numpy(self) -> np.ndarray:
        maps = []
        for m in self.raw["maps"]:
            if m.get("weights_f16") is not None:
                raw = np.frombuffer(base64.b64decode(m["weights_f16"]), dtype="<f2").reshape(m["shape"])
                maps.append(raw.astype(np.float32))
            else:
                maps.append(np.asarray(m["weights"], dtype=np.float32))
        n = len(self.raw["tokens"])
        return np.stack(maps) if maps else np.zeros((0, n, n), np.float32)

    def to_torch(self) -> torch.Tensor:
        return _torch(self.to_numpy())

    def map(self, head: Head) -> np.ndarray:
        """One head's (n_queries, n_keys) map."""
        out: np.ndarray = self.to_numpy()[self.heads.index(parse(head))]
        return out

    def snapshot(self, title: str | None = None) -> Snapshot:
        heads = ", ".join(label(*h) for h in self.heads[:4]) + ("…" if len(self.heads) > 4 else "")
        return self._snap(title or f"Attention of {heads}", maps=self.raw["maps"])

    def figure(self) -> dict[str, Any]:
        return maps_figure(self.tokens, self.heads, self.to_numpy())


class Overview(View):
    """POST /api/overview: `to_numpy()` is every head's thumbnail (n_layers, n_heads, s, s) of block means;
    `to_pandas()` every head's role scores (columns: layer, head and the registry's metric names)."""

    def to_numpy(self) -> np.ndarray:
        return thumbnails(self.raw)

    def to_torch(self) -> torch.Tensor:
        return _torch(self.to_numpy())

    def to_pandas(self) -> pd.DataFrame:
        stats = self.raw["stats"]
        names = [r["name"] for r in self.context.roles if stats.get(r["name"]) is not None]
        rows = [
            {"layer": ly, "head": h, **{n: stats[n][ly][h] for n in names}}
            for ly in range(self.raw["n_layers"])
            for h in range(self.raw["n_heads"])
        ]
        return _pandas().DataFrame(rows, columns=["layer", "head", *names])

    def snapshot(self, title: str | None = None) -> Snapshot:
        return self._snap(title or "All heads", overview=self.raw)


class Similarity(View, Exportable):
    """POST /api/similarity: `to_numpy()` is the (n, n) matrix over `heads` (JS divergence in nats, or cosine);
    `save_svg` / `save_pdf` draw it with the heads' labels."""

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [(h["layer"], h["head"]) for h in self.raw["heads"]]

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self.raw["matrix"], dtype=np.float64)

    def to_torch(self) -> torch.Tensor:
        return _torch(self.to_numpy())

    def to_pandas(self) -> pd.DataFrame:
        """The matrix with both axes labelled "L3H5"."""
        labels = [label(*h) for h in self.heads]
        return _pandas().DataFrame(self.to_numpy(), index=labels, columns=labels)

    def snapshot(self, title: str | None = None) -> Snapshot:
        return self._snap(title or f"Head similarity ({self.raw['metric']})", similarity=self.raw)

    def figure(self) -> dict[str, Any]:
        labels = [label(*h) for h in self.heads]
        return matrix_figure(self.to_numpy(), f"Head similarity ({self.raw['metric']})", labels, labels)


class Ablation(View):
    """POST /api/ablate: `delta_loss`, `kl_last`, `to_numpy()` KL per position (n_tokens,), and both next-token
    predictions (`raw["baseline"]`, `raw["ablated"]`), drawn before and after as the Heads page draws them."""

    def __init__(
        self, raw: dict[str, Any], text: str, context: Context, heads: list[dict[str, int]], mode: str
    ) -> None:
        super().__init__(raw, text, context)
        self.heads = [(h["layer"], h["head"]) for h in heads]
        self.mode = mode

    @property
    def delta_loss(self) -> float | None:
        value: float | None = self.raw["delta_loss"]
        return value

    @property
    def kl_last(self) -> float:
        return float(self.raw["kl_last"])

    def to_numpy(self) -> np.ndarray:
        """KL(baseline ‖ ablated) at every position, (n_tokens,)."""
        return np.asarray(self.raw["kl_per_position"], dtype=np.float64)

    def snapshot(self, title: str | None = None) -> Snapshot:
        off = [{"layer": ly, "head": h} for ly, h in self.heads]
        shown = ", ".join(label(*h) for h in self.heads[:4]) + ("…" if len(self.heads) > 4 else "")
        ablation = {**self.raw, "ablate": off, "mode": self.mode}
        return self._snap(title or f"{shown} switched off ({self.mode})", ablation=ablation)


class Combined(View):
    """Several views of one text in one snapshot: the grid (`overview`), maps (`attention`), `similarity`, and
    the predictions before and after switching heads off (`ablation`)."""

    def __init__(
        self,
        text: str,
        context: Context,
        overview: Overview | None = None,
        attention: Attention | None = None,
        similarity: Similarity | None = None,
        ablation: Ablation | None = None,
    ) -> None:
        shown = overview or attention or ablation
        super().__init__({"tokens": shown.raw["tokens"] if shown else []}, text, context)
        self.overview, self.attention, self.similarity, self.ablation = overview, attention, similarity, ablation

    def snapshot(self, title: str | None = None) -> Snapshot:
        return self._snap(
            title or "HeadScope view",
            overview=self.overview.raw if self.overview else None,
            maps=self.attention.raw["maps"] if self.attention else [],
            similarity=self.similarity.raw if self.similarity else None,
            ablation=self.ablation.snapshot().ablation if self.ablation else None,
        )
