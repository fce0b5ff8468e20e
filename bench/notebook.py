"""Notebook rows (issue 24): `headscope.open()` to the first `attention()` after the model cache exists, and the
sizes of a 512-token snapshot and of one head's notebook output. Each run is a fresh process (`import headscope`
is not timed: it is the import of torch and transformers, paid by any notebook that uses them). The first start
after a change runs the start-up checks' probe forwards and keeps their verdict beside the model
(app/inspect/checks.VERDICT_FILE); later starts skip them. Both are measured: the verdict is removed before each
"checks run" process.

`python -m bench.notebook` measures these rows alone and writes them as their own section of bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from app.inspect.checks import VERDICT_FILE
from app.inspect.loading import CACHE
from bench.report import Row, machine, nbytes, seconds, section, write

ROOT = Path(__file__).resolve().parents[1]
OPEN_TARGET_S = 2.0
SCRIPT = """
import json, sys, tempfile, time
import headscope
from headscope.views import Notebook
from tests.test_snapshot_default_model import text_of
started, cpu = time.perf_counter(), time.process_time()
warm = sys.argv[2] == "warm"
scope = headscope.open("smollm2-135m", device="cpu", dtype="float32", data_dir=tempfile.mkdtemp(), warmup=warm)
opened = time.perf_counter()
scope.attention("The capital of France is Paris.", heads="L3H5")
first = time.perf_counter()
out = {"open_s": opened - started, "first_s": first - started, "cpu_s": time.process_time() - cpu}
if sys.argv[1] == "sizes":
    text = text_of(scope, 512)
    view = scope.snapshot(text, heads=[(layer, 4) for layer in range(0, 27, 3)])
    out["snapshot_bytes"] = len(view.to_html().encode())
    Notebook.plotly_sent = True
    out["output_bytes"] = len(scope.attention(text, heads="L3H5")._repr_html_().encode())
scope.close()
print(json.dumps(out))
"""


def _run(kind: str, warm: bool = False, checks: bool = False) -> dict[str, float]:
    """One fresh process; `checks`: no verdict kept (the start-up checks' probes run); `warm`: open() warms the
    model before it returns, as a server does before it is ready (as open() did before the first request did)."""
    if checks:
        (CACHE / "smollm2-135m" / VERDICT_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-c", SCRIPT, kind, "warm" if warm else "cold"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def rows(reps: int = 3) -> list[Row]:
    """Median of `reps` fresh processes for each time; the sizes from one more."""
    before = [_run("time", warm=True, checks=True) for _ in range(reps)]
    changed = [_run("time", checks=True) for _ in range(reps)]
    runs = [_run("time") for _ in range(reps)]
    sizes = _run("sizes")

    def median(found: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in found)

    first = median(runs, "first_s")
    return [
        Row(
            what=f"headscope.open() to the first attention() (in-process, model cache present), median of {reps}",
            measured=seconds(first),
            baseline=seconds(median(before, "first_s")),
            ratio=first / median(before, "first_s"),
            beside=f"the checks' verdict kept from an earlier start, the first request warming the model; open() alone "
            f"{seconds(median(runs, 'open_s'))}; CPU time of the process {seconds(median(runs, 'cpu_s'))} (baseline: "
            f"{seconds(median(before, 'cpu_s'))}); baseline: the start-up checks run and open() warms the model, as "
            "before; `import headscope` not timed",
            target=f"≤ {OPEN_TARGET_S:.0f} s",
            passed=first <= OPEN_TARGET_S,
        ),
        Row(
            what=f"the same, first start after a change (the checks' probes run, keep a verdict), median of {reps}",
            measured=seconds(median(changed, "first_s")),
            beside=f"CPU time of the process {seconds(median(changed, 'cpu_s'))}",
        ),
        Row(
            what="snapshot file, 512 tokens: every head's thumbnail + 9 full maps (plotly.js inside)",
            measured=nbytes(sizes["snapshot_bytes"]),
            target="≤ 8 MB",
            passed=sizes["snapshot_bytes"] <= 8e6,
        ),
        Row(
            what="notebook output (_repr_html_) of one head, 512 tokens (plotly.js sent with an earlier output)",
            measured=nbytes(sizes["output_bytes"]),
            target="≤ 1 MB",
            passed=sizes["output_bytes"] <= 1e6,
        ),
    ]


def main() -> None:
    before = os.getloadavg()[0]
    made = rows()
    notes = [
        f"the runs are child processes, so other load is not split from theirs: load average {before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (2 cores)",
        "open() is load (weights from models/cache) + the start-up checks (app/inspect/checks.check_served: "
        "probe forwards that refuse a model HeadScope cannot read exactly); in-process the first request warms the "
        "model (a server warms it before it says ready); a passed verdict is "
        "kept beside the model, keyed by its files, torch and transformers versions, HeadScope's inspection code, "
        "device, dtype and attention, so later starts skip the probes",
    ]
    title = "cpu · smollm2-135m · notebook (python -m bench.notebook)"
    body = section(title, machine(torch.device("cpu")), made, notes)
    print(body)
    write(title, body)


if __name__ == "__main__":
    main()
