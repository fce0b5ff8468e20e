"""Typed answers of the circuit endpoints: edges between nodes (POST /api/circuit, /api/circuit_pairs,
/api/path_patch) and the weights' circuits of heads (GET /api/composition, /api/head_circuits, POST
/api/qk_attribution). Node ids are the API's: `emb`, `L{l}H{h}`, `L{l}KV{g}`, `M{l}`, `logits`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.figures import Exportable, matrix_figure
from headscope.heads import label
from headscope.results import Result, _pandas, _torch

if TYPE_CHECKING:
    import pandas as pd
    import torch

EDGE_COLUMNS = ["source", "target", "channel", "score"]
SET_COLUMNS = [*EDGE_COLUMNS, "ci_low", "ci_high", "n"]


class Circuit(Result):
    """POST /api/circuit (one prompt pair) or /api/circuit_pairs (the mean over a set, with 95% bootstrap CIs).

    `edges()` / `to_pandas()`: the returned edges, largest |score| first (columns source, target, channel, score,
    and over a set ci_low, ci_high, n); `node_scores()`: {node id: score}, a sender's score being the sum of its
    outgoing edges; `faithfulness()`: (n_edges, recovered) pairs when asked for."""

    @property
    def over_pairs(self) -> bool:
        return "n_pairs" in self.raw

    def edges(self) -> list[tuple[str, str, str, float]]:
        return [(e["source"], e["target"], e["channel"], float(e["score"])) for e in self.raw["edges"]]

    def node_scores(self) -> dict[str, float]:
        return {n["id"]: float(n["score"]) for n in self.raw["node_scores"]}

    def faithfulness(self) -> list[tuple[int, float | None]]:
        return [(p["n_edges"], p["recovered"]) for p in self.raw.get("faithfulness") or []]

    def to_pandas(self) -> pd.DataFrame:
        columns = SET_COLUMNS if self.over_pairs else EDGE_COLUMNS
        return _pandas().DataFrame([{c: e[c] for c in columns} for e in self.raw["edges"]], columns=columns)


class PathPatch(Result):
    """POST /api/path_patch: `metric` with the edges patched, `metric_clean`, `metric_corrupted`, `recovered`."""

    @property
    def metric(self) -> float:
        return float(self.raw["metric"])

    @property
    def recovered(self) -> float | None:
        value = self.raw["recovered"]
        return None if value is None else float(value)


class Composition(Result, Exportable):
    """GET /api/composition: `to_numpy()` is (n_senders, n_receivers) float64, NaN where the receiver is not
    later than the sender; rows `.senders`, columns `.receivers` as ("L3H5", ...); `.baseline` is the mean score
    of random heads of the same shapes (below it a score means nothing)."""

    @property
    def senders(self) -> list[str]:
        return [label(h["layer"], h["head"]) for h in self.raw["senders"]]

    @property
    def receivers(self) -> list[str]:
        return [label(h["layer"], h["head"]) for h in self.raw["receivers"]]

    @property
    def baseline(self) -> float:
        return float(self.raw["baseline"])

    def to_numpy(self) -> np.ndarray:
        return np.asarray([[np.nan if s is None else s for s in row] for row in self.raw["scores"]], dtype=np.float64)

    def to_torch(self) -> torch.Tensor:
        return _torch(self.to_numpy())

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The k largest (sender, receiver, score) pairs."""
        m = np.nan_to_num(self.to_numpy(), nan=-np.inf)
        order = np.argsort(-m, axis=None)[:k]
        rows, cols = np.unravel_index(order, m.shape)
        return [(self.senders[r], self.receivers[c], float(m[r, c])) for r, c in zip(rows, cols, strict=True)]

    def figure(self) -> dict[str, Any]:
        title = f"{self.raw['kind'].upper()}-composition (random baseline {self.baseline:.3f})"
        return matrix_figure(self.to_numpy(), title, self.receivers, self.senders, diverging=False)


class HeadCircuits(Result):
    """GET /api/head_circuits: `qk_singular_values` / `ov_singular_values` as arrays, `copying_score` (its
    definition in `raw["copying_definition"]`), and `token_map()`: {source token: [top output tokens]}."""

    @property
    def copying_score(self) -> float:
        return float(self.raw["copying_score"])

    @property
    def qk_singular_values(self) -> np.ndarray:
        return np.asarray(self.raw["qk_singular_values"], dtype=np.float64)

    @property
    def ov_singular_values(self) -> np.ndarray:
        return np.asarray(self.raw["ov_singular_values"], dtype=np.float64)

    def token_map(self) -> dict[str, list[str]]:
        return {row["token"]["token"]: [t["token"] for t in row["top"]] for row in self.raw["token_map"]}


class QkAttribution(Result):
    """POST /api/qk_attribution: one attention score split into query-node × key-node terms. `score` is the
    pre-softmax score as captured; `total` the sum of every term (= score); `to_pandas()` the returned terms
    (query_node, key_node, value), largest |value| first; `query_sums()` / `key_sums()` each side's node sums."""

    @property
    def score(self) -> float:
        return float(self.raw["score"])

    @property
    def total(self) -> float:
        return float(self.raw["total"])

    def query_sums(self) -> dict[str, float]:
        return {n["node"]: float(n["value"]) for n in self.raw["query_sums"]}

    def key_sums(self) -> dict[str, float]:
        return {n["node"]: float(n["value"]) for n in self.raw["key_sums"]}

    def to_pandas(self) -> pd.DataFrame:
        columns = ["query_node", "key_node", "value"]
        return _pandas().DataFrame([{c: t[c] for c in columns} for t in self.raw["terms"]], columns=columns)
