"""Server rows, through the real app in-process (fastapi.testclient): overview payload size and /api/ablate time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.inspect.engine.runs import Run, analyse
from app.inspect.intervene.ablation import ablate
from app.inspect.model.loaded import Loaded
from bench import inputs, models
from bench.report import Row, nbytes, seconds
from bench.timing import interleaved, sync


def middle_head(loaded: Loaded) -> dict[str, int]:
    """A head of the middle layer: ablations resume at the first switched-off block, so the middle is the mean cost."""
    layout = loaded.adapter.layout
    return {"layer": layout.n_layers // 2, "head": layout.n_heads // 2}


@contextmanager
def client(loaded: Loaded) -> Iterator[Any]:
    """A TestClient over create_app with the already loaded model, entered and ready."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    settings = Settings(model=loaded.name, max_tokens=loaded.adapter.layout.max_positions, warmup=True)
    with TestClient(create_app(settings, loaded=loaded)) as c:
        deadline = time.monotonic() + 300
        while c.get("/api/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not become ready")
            time.sleep(0.05)
        yield c


def has_server() -> bool:
    try:
        import fastapi.testclient  # noqa: F401

        import app.main  # noqa: F401
    except ImportError:
        return False
    return True


# -- overview payload ------------------------------------------------------------------------


def all_maps_json_bytes(loaded: Loaded, run: Run) -> int:
    """Bytes of bertviz-style JSON of every head's full map as nested lists ({"maps": [{layer, head, weights}]}).

    Encoded head by head and summed (the same bytes as one json.dumps, without holding it all).
    """
    layout = loaded.adapter.layout
    heads = list(range(layout.n_heads))
    total = len('{"maps": []}') + 2 * (layout.n_layers * layout.n_heads - 1)  # ", " between items
    for layer in range(layout.n_layers):
        maps = run.maps(layer, heads, layout.group_size).cpu()  # (H, T, T)
        for head in heads:
            total += len(json.dumps({"layer": layer, "head": head, "weights": maps[head].tolist()}))
    return total


def payload_row(loaded: Loaded, c: Any, n: int, target_mb: float = 1.5) -> Row:
    text = inputs.text_of(loaded.tokenizer, n)
    run = analyse(loaded, text)
    resp = c.post("/api/overview", json={"text": text})
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["token_ids"]) == n
    size = len(resp.content)
    start = time.perf_counter()
    baseline = all_maps_json_bytes(loaded, run)
    encode_s = time.perf_counter() - start
    return Row(
        what=f"overview payload (POST /api/overview, thumb 32), {n} tokens",
        measured=nbytes(size),
        baseline=f"JSON of all maps {nbytes(baseline)} (encoded in {seconds(encode_s)})",
        ratio=size / baseline,
        target=f"≤ {target_mb} MB",
        passed=size <= target_mb * 1e6,
    )


# -- /api/ablate -----------------------------------------------------------------------------


def ablate_row(
    loaded: Loaded,
    c: Any | None,
    n: int,
    reps: int,
    target: float | None,
    abs_target_s: float | None,
    head: dict[str, int] | None = None,
) -> Row:
    """POST /api/ablate time with the baseline run already cached, vs a plain forward with logits.

    Args:
        head: the head switched off (default: a middle-layer head); target None makes a reference row.
    """
    head = head or middle_head(loaded)
    text = inputs.text_of(loaded.tokenizer, n)
    x = models.input_ids(loaded, inputs.token_ids(loaded.tokenizer, n))
    body = {"text": text, "ablate": [head], "mode": "zero"}
    if c is not None:

        def served() -> None:
            resp = c.post("/api/ablate", json=body)
            assert resp.status_code == 200, resp.text[:300]

        what = f"POST /api/ablate server time (L{head['layer']}H{head['head']} off, baseline cached), {n} tokens"
    else:  # no fastapi on this machine: the handler's model work alone
        run = analyse(loaded, text)

        def served() -> None:
            ablate(loaded, run, [(head["layer"], head["head"])], "zero", 10)
            sync(loaded.device)

        what = f"ablate() (L{head['layer']}H{head['head']} off; fastapi missing: no HTTP/JSON), {n} tokens"
    served()  # caches the baseline run
    med = interleaved({"plain": lambda: models.plain_full(loaded, x), "served": served}, reps, loaded.device)
    r = med["served"] / med["plain"]
    baseline = f"plain SDPA forward with logits {seconds(med['plain'])}"
    if target is None:
        return Row("reference: " + what, seconds(med["served"]), baseline, r)
    passed = r <= target
    tgt = f"≤ {target}×"
    if abs_target_s is not None:
        passed = passed and med["served"] <= abs_target_s
        tgt += f" and ≤ {seconds(abs_target_s)}"
    return Row(what, seconds(med["served"]), baseline, r, tgt, passed)


def attention_row(loaded: Loaded, c: Any, n: int, reps: int) -> Row:
    """Reference: POST /api/attention for one head of a cached text (map computed and sent as JSON numbers)."""
    text = inputs.text_of(loaded.tokenizer, n)
    x = models.input_ids(loaded, inputs.token_ids(loaded.tokenizer, n))
    body = {"text": text, "heads": [middle_head(loaded)]}

    def served() -> None:
        resp = c.post("/api/attention", json=body)
        assert resp.status_code == 200, resp.text[:300]

    med = interleaved({"plain": lambda: models.plain_backbone(loaded, x), "served": served}, reps, loaded.device)
    return Row(
        what=f"reference: POST /api/attention, one head's map as JSON, cached text, {n} tokens",
        measured=seconds(med["served"]),
        baseline=f"plain SDPA forward {seconds(med['plain'])}",
        ratio=med["served"] / med["plain"],
    )
