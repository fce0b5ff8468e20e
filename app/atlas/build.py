"""A job's static atlas: an index of every head and one page per head, readable from disk with no server.

What crosses the boundary: a finished job (its store, its dataset, the model that ran it) in; a folder out:
index.html, L{l}H{h}.html per head, atlas.js (the corpus page's own modules linked into one classic script by
app.snapshot.bundle), plotly.min.js (from the installed package), the page's CSS, and data/*.js, each a script
that sets one global (a page opened from file:// cannot fetch(), but it can load scripts beside it).

Data: data/job.js holds the head table, the metric names, the dataset similarity matrix and the Q/K sample's
positions and tokens (shared by every head: one sample per job); data/L{l}H{h}.js a head's top and decile
examples and its Q/K coordinates as base64 float16. The sample is at most MAX_POSITIONS positions whatever the
corpus size, so a head's data stays a few tens of kB.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import shutil
import zipfile
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.api.schemas import RoleInfo
from app.corpus import qk_space
from app.corpus.datasets import DatasetStore
from app.corpus.examples import describe
from app.corpus.jobstore import JobStore
from app.corpus.results import Results
from app.errors import Conflict
from app.inspect.engine.runs import encode, token_strings
from app.inspect.engine.steps import Progress, drain
from app.inspect.model.loaded import Loaded
from app.inspect.observe import registry
from app.snapshot.assets import PLOTLY_JS, STATIC
from app.snapshot.bundle import bundle

log = logging.getLogger(__name__)

MAX_POSITIONS = 2_000  # per job: 4,000 points per head (a query and a key per position)
TOP_K = 5
PER_DECILE = 1
CONTEXT = 6  # tokens before a point's own, shown on hover


@dataclass(frozen=True)
class Atlas:
    out: Path
    heads: int
    bytes: int


def _script(name: str, data: Any) -> str:
    """A script that sets window[name] = data (JSON with '<' escaped, so no '</script' can end its element)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return f"window[{json.dumps(name)}] = {text};\n"


def _f16(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode("ascii")


def _clean(x: Any) -> Any:
    """NaN → None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _page(title: str, scripts: Iterable[str], call: str) -> str:
    tags = "\n".join(f'<script src="{html.escape(s)}"></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="headscope.css">
<link rel="stylesheet" href="corpus.css">
</head>
<body class="atlas">
<main class="corpus atlas-main" id="atlas"></main>
{tags}
<script>HeadScopeAtlas.{call};</script>
</body>
</html>
"""


def head_file(layer: int, head: int) -> str:
    return f"L{layer}H{head}.html"


def build(loaded: Loaded, datasets: DatasetStore, store: JobStore, job_id: str, out: Path) -> Atlas:
    """Write the atlas of job `job_id` into `out` (created; files of an earlier atlas there are replaced)."""
    return drain(build_steps(loaded, datasets, store, job_id, out))


def build_steps(
    loaded: Loaded, datasets: DatasetStore, store: JobStore, job_id: str, out: Path
) -> Generator[Progress, None, Atlas]:
    """`build` a slice at a time (the Q/K sample's forwards yield), for the model worker: GET /api/jobs/{id}/atlas."""
    job = store.get(job_id)
    if job.state != "done":
        raise Conflict(f"job {job_id} is {job.state}; an atlas is made from a finished job")
    if job.model != loaded.name:
        raise Conflict(f"job {job_id} ran on {job.model}; the loaded model is {loaded.name}")
    results = Results(store)
    n_layers, n_heads, group = results.shape(job)
    texts = datasets.texts(job.dataset)
    table = results.heads(job)
    metric = table.metrics[0]
    similarity = None
    if "similarity" in job.analyses:
        _, names, matrix = results.similarity(job, "js")
        similarity = {"heads": names, "matrix": matrix.tolist(), "metric": "js"}
    indices = sorted(store.stored_texts(job.id))
    items = [(i, encode(loaded.tokenizer, texts[i])[: job.max_tokens]) for i in indices]
    log.info("atlas of %s: sampling queries and keys of every layer over %d texts", job_id, len(items))
    sample = yield from qk_space.sample_steps(loaded, items, list(range(n_layers)), MAX_POSITIONS, job.seed)
    by_index = dict(items)
    tokens = {int(i): token_strings(loaded.tokenizer, by_index[int(i)]) for i in np.unique(sample.text_index)}
    words = [tokens[int(i)][int(p)] for i, p in zip(sample.text_index, sample.position, strict=True)]
    before = [
        "".join(tokens[int(i)][max(0, int(p) - CONTEXT) : int(p)])
        for i, p in zip(sample.text_index, sample.position, strict=True)
    ]
    dataset_name = datasets.get(job.dataset).name
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    shared = {
        "job": {"id": job.id, "dataset": job.dataset, "dataset_name": dataset_name, "model": job.model},
        "heads": _clean(
            {"n_texts": table.n_texts, "partial": False, "metrics": table.metrics, "reliability": table.reliability}
            | {"heads": table.heads}
        ),
        "metric": metric,
        "roles": [RoleInfo.of(m).model_dump() for m in registry.METRICS],
        "similarity": similarity,
        "sample": {
            "text_index": sample.text_index.tolist(),
            "position": sample.position.tolist(),
            "token": words,
            "before": before,
            "n_texts": len(items),
            "seen": sample.seen,
            "max_positions": MAX_POSITIONS,
        },
    }
    (out / "data" / "job.js").write_text(_script("ATLAS_JOB", shared), encoding="utf-8")
    for layer in range(n_layers):
        for head in range(n_heads):
            embedding = qk_space.project(*qk_space.head_vectors(sample, layer, head, group))
            top = [
                describe(loaded.tokenizer, texts[i], job.max_tokens, i, s, w)
                for i, s, w in results.examples(job, metric, layer, head, TOP_K)
            ]
            bounds, drawn = results.decile_examples(job, metric, layer, head, PER_DECILE, job.seed)
            deciles = [describe(loaded.tokenizer, texts[i], job.max_tokens, i, s, w, d) for i, d, s, w in drawn]
            data = {
                "layer": layer,
                "head": head,
                "metric": metric,
                "top": {"metric": metric, "sample": "top", "examples": top},
                "deciles": {"metric": metric, "sample": "deciles", "examples": deciles, "bounds": bounds},
                "qk": {
                    "kv_head": head // group,
                    "scale": embedding.scale,
                    "key_shift": embedding.key_shift.tolist(),
                    "explained": embedding.explained.tolist(),
                    "xy_f16": _f16(embedding.coords),
                },
            }
            name = f"L{layer}H{head}"
            (out / "data" / f"{name}.js").write_text(_script("ATLAS_HEAD", _clean(data)), encoding="utf-8")
            scripts = ["plotly.min.js", "atlas.js", "data/job.js", f"data/{name}.js"]
            (out / head_file(layer, head)).write_text(
                _page(f"{name} · {dataset_name} · HeadScope atlas", scripts, "head()"), encoding="utf-8"
            )
    (out / "index.html").write_text(
        _page(f"{dataset_name} · HeadScope atlas", ["atlas.js", "data/job.js"], "index()"), encoding="utf-8"
    )
    (out / "atlas.js").write_text(bundle("corpus/atlas.js", "HeadScopeAtlas"), encoding="utf-8")
    shutil.copyfile(PLOTLY_JS, out / "plotly.min.js")
    for css in ("headscope.css", "corpus.css"):
        shutil.copyfile(STATIC / "css" / css, out / css)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Atlas(out, n_layers * n_heads, size)


def zipped(folder: Path) -> bytes:
    """Every file of an atlas folder in one zip, paths relative to it (unzipped, index.html opens from disk)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def summary(job_id: str, atlas: Atlas) -> str:
    return f"atlas of {job_id}: {atlas.heads} head pages, {atlas.bytes / 1e6:.1f} MB in {atlas.out}"
