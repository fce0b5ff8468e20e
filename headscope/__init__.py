"""HeadScope from Python: `headscope.open()` runs the model in this process, `headscope.connect(url)` talks to a
server; both return a `Scope` whose methods are the API's endpoints (attention, overview, heads, similarity,
ablate, importance, patch, dla, logit_lens, generate, datasets, jobs) and whose results are typed: arrays
(`to_numpy`, `to_torch`), tables (`to_pandas`), and views that draw themselves in a notebook or save as one
self-contained HTML file (`save_html`)."""

from __future__ import annotations

from app import __version__
from headscope.errors import HeadScopeError
from headscope.scope import Scope, connect, open
from headscope.views import Ablation, Attention, Combined, Overview, Similarity

__all__ = [
    "Ablation",
    "Attention",
    "Combined",
    "HeadScopeError",
    "Overview",
    "Scope",
    "Similarity",
    "__version__",
    "connect",
    "open",
]
