"""Why-a-head-attends rows (issue 23): composition matrices from the weights (each kind computed afresh), and QK
attribution of one cell and of a whole query row of an analysed text against a plain forward of that text.

`python -m bench.whyhere` measures these rows alone and writes them as their own section of bench/RESULTS.md.
`--cpu-time` times them as CPU seconds of the calling thread with one torch thread (both sides of each ratio
alike): on a shared machine other processes then slow neither side, where wall-clock ratios would drift.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from app.inspect.engine.runs import Run, analyse
from app.inspect.model.loaded import Loaded
from app.inspect.observe import composition, qk_attribution
from bench import inputs, models
from bench.report import Row, machine, seconds, section, write
from bench.timing import OtherLoad, interleaved, wait_quiet

COMPOSITION_TARGET_S = 2.0
CELL_TARGET = 0.3
ROW_TARGET = 1.0


def medians(fns: dict[str, Callable[[], object]], reps: int, device: torch.device, cpu_time: bool) -> dict[str, float]:
    """bench.timing.interleaved, or with `cpu_time` the median CPU seconds of the calling thread (one warm-up)."""
    if not cpu_time:
        return interleaved(fns, reps, device)
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def composition_row(loaded: Loaded, kind: composition.Kind, cpu_time: bool = False, reps: int = 3) -> Row:
    """One kind's scores for every pair of heads, the per-model cache emptied before each run."""
    adapter = loaded.adapter

    def fresh() -> None:
        composition._cache.pop(adapter, None)
        composition.composition(adapter, kind)

    took = medians({"it": fresh}, reps, loaded.device, cpu_time)["it"]
    n = adapter.layout.n_layers * adapter.layout.n_heads
    return Row(
        what=f"composition scores, kind {kind}: {n} × {n} heads from the weights (cache emptied)",
        measured=seconds(took),
        target=f"≤ {COMPOSITION_TARGET_S:.0f} s",
        passed=took <= COMPOSITION_TARGET_S,
    )


def cached_row(loaded: Loaded, kind: composition.Kind, cpu_time: bool = False, reps: int = 3) -> Row:
    """One kind's scores as the server's later calls get them: from the per-model cache."""
    composition.composition(loaded.adapter, kind)  # fills the cache (the first call)
    took = medians({"it": lambda: composition.composition(loaded.adapter, kind)}, reps, loaded.device, cpu_time)["it"]
    return Row(
        what=f"composition scores, kind {kind}: cached (every call after the first)",
        measured=seconds(took),
        target=f"≤ {COMPOSITION_TARGET_S:.0f} s",
        passed=took <= COMPOSITION_TARGET_S,
    )


def attribution_row(
    loaded: Loaded, n: int, reps: int, what: str, fn: Callable[[Run], object], target: float, cpu_time: bool
) -> Row:
    """`fn(run)` on an analysed text of n tokens vs one plain backbone forward of the text."""
    ids = inputs.token_ids(loaded.tokenizer, n)
    run = analyse(loaded, "", token_ids=ids)
    x = models.input_ids(loaded, ids)
    fns: dict[str, Callable[[], object]] = {"plain": lambda: models.plain_backbone(loaded, x), "it": lambda: fn(run)}
    med = medians(fns, reps, loaded.device, cpu_time)
    r = med["it"] / med["plain"]
    return Row(
        what=f"{what}, {n} tokens (run cached)",
        measured=seconds(med["it"]),
        baseline=f"plain SDPA forward {seconds(med['plain'])}",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
    )


def cell_row(loaded: Loaded, n: int, reps: int, cpu_time: bool = False) -> Row:
    """One cell of the last layer (the most upstream nodes): the last query, key 1."""
    last = loaded.adapter.layout.n_layers - 1
    what = f"QK attribution of one cell (L{last}H4, last query, key 1)"

    def cell(run: Run) -> object:
        return qk_attribution.cell(loaded, run, last, 4, n - 1, 1)

    return attribution_row(loaded, n, reps, what, cell, CELL_TARGET, cpu_time)


def query_row_row(loaded: Loaded, n: int, reps: int, cpu_time: bool = False) -> Row:
    """The last query's whole row in the last layer: every key, its sums and its top 3 terms."""
    last = loaded.adapter.layout.n_layers - 1
    what = f"QK attribution of a whole query row (L{last}H4, last query, every key, top 3 terms each)"

    def row(run: Run) -> object:
        return qk_attribution.query_row(loaded, run, last, 4, n - 1)

    return attribution_row(loaded, n, reps, what, row, ROW_TARGET, cpu_time)


def rows(loaded: Loaded, reps: int = 5, cpu_time: bool = False, only: str = "all") -> list[Callable[[], Row]]:
    """The rows, as steps (each builds its inputs when it runs); `only` "composition" keeps the composition rows."""
    out: list[Callable[[], Row]] = []
    for k in composition.KINDS:
        out += [partial(composition_row, loaded, k, cpu_time), partial(cached_row, loaded, k, cpu_time)]
    if only == "composition":
        return out
    for n in (64, 512):
        out += [partial(cell_row, loaded, n, reps, cpu_time), partial(query_row_row, loaded, n, 3, cpu_time)]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whyhere", description=__doc__)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S", help="as python -m bench's")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="update RESULTS.md")
    parser.add_argument("--cpu-time", action="store_true", help="CPU seconds of one thread, not wall-clock")
    parser.add_argument("--only", choices=("all", "composition"), default="all", help="which rows to measure")
    args = parser.parse_args(argv)
    if args.cpu_time:
        torch.set_num_threads(1)
    loaded = models.default_model("cpu", "float32")
    before = os.getloadavg()[0]
    made = []
    for step in rows(loaded, cpu_time=args.cpu_time, only=args.only):
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        meter = OtherLoad()
        row = step()
        row.other_load = meter.share()
        made.append(row)
    notes = [
        f"load average {before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)",
        "composition: every kind computed afresh (the server computes each kind once per model and keeps it)",
        "QK attribution reads the cached run (block inputs, captured q and k); no forward runs",
    ]
    title = "cpu · smollm2-135m · why a head attends (python -m bench.whyhere" + (
        " --cpu-time)" if args.cpu_time else ")"
    )
    if args.cpu_time:
        notes.insert(
            0, "times are CPU seconds of the calling thread with one torch thread, forward and attribution alike"
        )
    body = section(title, machine(torch.device("cpu")), made, notes)
    print(body)
    if args.write:
        write(title, body)


if __name__ == "__main__":
    main()
