"""`python -m bench [--quick] [--device cuda --shape {smollm2,llama3-8b}]`: measure issue 5's targets, print one table.

CPU (default): the real default model in float32; the full run rewrites its section of bench/RESULTS.md.
CUDA: random-init models of the default model's shape or of Llama-3-8B's, in bfloat16 (timing does not depend
on the weights). They borrow the default model's tokenizer: carry models/cache/smollm2-135m/tokenizer.json and
tokenizer_config.json (not the weights). Without fastapi there, /api/ablate rows time ablate() itself and the
payload row is skipped. Each configuration rewrites only its own section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.inspect.model.loaded import Loaded
from bench import (
    analysis,
    circuits,
    cluster,
    corpus,
    families,
    generation,
    importance,
    inputs,
    lecture,
    models,
    notebook,
    report,
    served,
    server,
    timing,
    tracing,
    waits,
    whyhere,
)
from bench.report import Row, nbytes

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Plan:
    """Lengths and repetitions of one configuration."""

    analysis: tuple[tuple[int, int, float], ...]  # (tokens, reps, target ratio)
    map_lengths: tuple[int, ...]
    rss_length: int | None  # CPU: fresh-process peak RSS at this length (target 1.6 GB)
    long_length: int | None  # CPU: completes + peak RSS (target 4 GB); eager capped
    ablate: tuple[tuple[int, int], ...]  # (tokens, reps)
    sweep: tuple[int, int, int | None]  # (tokens, reps, loop sample)
    gradient: tuple[tuple[int, int], ...]
    eager_cap_gb: float = 12.0
    corpus_texts: tuple[int, int] | None = None  # CPU: corpus-job rows over this many texts (RSS: vs the second)


FULL_CPU = Plan(
    analysis=((512, 5, 1.15), (2048, 3, 1.5)),
    map_lengths=(512, 2048),
    rss_length=2048,
    long_length=8192,
    ablate=((64, 5), (512, 5)),
    sweep=(64, 1, None),
    gradient=((64, 5), (512, 5)),
    corpus_texts=(256, 4096),
)
QUICK_CPU = Plan(
    analysis=((512, 2, 1.15), (2048, 1, 1.5)),
    map_lengths=(512,),
    rss_length=2048,
    long_length=None,
    ablate=((64, 2), (512, 2)),
    sweep=(64, 1, 27),
    gradient=((64, 2), (512, 1)),
    corpus_texts=(64, 512),
)
FULL_CUDA = Plan(
    analysis=((512, 10, 1.2), (4096, 5, 1.2)),
    map_lengths=(4096,),
    rss_length=None,
    long_length=None,
    ablate=((64, 20), (512, 20)),
    sweep=(64, 3, None),
    gradient=((64, 10), (512, 10)),
)
QUICK_CUDA = Plan(
    analysis=((512, 3, 1.2), (4096, 2, 1.2)),
    map_lengths=(4096,),
    rss_length=None,
    long_length=None,
    ablate=((64, 5), (512, 5)),
    sweep=(64, 1, 64),
    gradient=((512, 3),),
)


def cuda_memory_rows(loaded: Loaded, n: int) -> list[Row]:
    """Peak GPU memory (weights included) of the analysis run vs a plain forward vs eager, at n tokens."""
    ids = inputs.token_ids(loaded.tokenizer, n)
    x = models.input_ids(loaded, ids)
    plain = analysis.peak_cuda(loaded, lambda: models.plain_backbone(loaded, x))
    ana = analysis.peak_cuda(loaded, lambda: analysis.analyse_all(loaded, ids))
    try:
        eager = nbytes(analysis.peak_cuda(loaded, lambda: models.eager_attentions(loaded, x)))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        eager = "out of memory"
    return [
        Row(
            what=f"reference: peak GPU memory allocated, analysis run, {n} tokens (weights included)",
            measured=nbytes(ana),
            baseline=f"plain forward {nbytes(plain)}",
            ratio=ana / plain,
            beside=f"eager + output_attentions: {eager}",
        )
    ]


class Steps:
    """Collects rows; each step optionally waits for a quiet machine and records how loaded it was meanwhile."""

    def __init__(self, wait_quiet_s: float) -> None:
        self.rows: list[Row] = []
        self.wait_quiet_s = wait_quiet_s

    def add(self, make: Callable[[], Row | list[Row]]) -> None:
        if self.wait_quiet_s:
            timing.wait_quiet(self.wait_quiet_s)
        meter = timing.OtherLoad()
        made = make()
        share = meter.share()
        for row in made if isinstance(made, list) else [made]:
            row.other_load = share
            self.rows.append(row)


def measure(loaded: Loaded, plan: Plan, device: torch.device, ablate_abs_s: float | None, wait_s: float) -> list[Row]:
    steps = Steps(wait_s)
    done: dict[int, analysis.Analysis] = {}

    def analysis_step(n: int, reps: int, target: float) -> Row:
        log.info("analysis run at %d tokens, %d reps", n, reps)
        done[n] = analysis.measure(loaded, n, reps)
        return analysis.analysis_row(done[n], target)

    for n, reps, target in plan.analysis:
        steps.add(lambda n=n, reps=reps, target=target: analysis_step(n, reps, target))  # type: ignore[misc]
    for n in plan.map_lengths:
        steps.add(lambda n=n: analysis.one_map_row(loaded, done[n]))  # type: ignore[misc]
    for a in done.values():
        a.run = None
    if device.type == "cpu":
        if plan.rss_length:
            log.info("peak RSS at %d tokens (fresh processes)", plan.rss_length)
            steps.add(lambda: analysis.rss_rows_cpu(plan.rss_length or 0, 1.6, None))
        if plan.long_length:
            log.info("%d tokens (fresh processes; eager capped at %s GB)", plan.long_length, plan.eager_cap_gb)
            steps.add(lambda: analysis.rss_rows_cpu(plan.long_length or 0, 4.0, plan.eager_cap_gb))
    else:
        steps.add(lambda: cuda_memory_rows(loaded, max(done)))
    if server.has_server():
        with server.client(loaded) as c:
            log.info("overview payload at 512 tokens")
            steps.add(lambda: server.payload_row(loaded, c, 512))
            for n, reps in plan.ablate:
                log.info("/api/ablate at %d tokens", n)
                abs_s = ablate_abs_s if n == 512 else None
                steps.add(lambda n=n, reps=reps, abs_s=abs_s: server.ablate_row(loaded, c, n, reps, 1.1, abs_s))  # type: ignore[misc]
            n, reps = plan.ablate[-1]
            log.info("/api/ablate at %d tokens, a first-layer head (worst case: nothing to skip)", n)
            first = {"layer": 0, "head": 0}
            steps.add(lambda: server.ablate_row(loaded, c, n, reps, None, None, first))
            for m in (256, 512):
                log.info("first /api/ablate of a text right after its /api/overview, %d tokens", m)
                steps.add(lambda m=m: analysis.first_ablation_row(loaded, c, m, reps))  # type: ignore[misc]
            steps.add(lambda: server.attention_row(loaded, c, 512, plan.ablate[-1][1]))
    else:
        log.warning("fastapi is not installed: server rows time ablate() directly and skip the payload")
        for n, reps in plan.ablate:
            abs_s = ablate_abs_s if n == 512 else None
            steps.add(lambda n=n, reps=reps, abs_s=abs_s: server.ablate_row(loaded, None, n, reps, 1.1, abs_s))  # type: ignore[misc]
    n, reps, sample = plan.sweep
    log.info("ablation sweep at %d tokens", n)
    steps.add(lambda: importance.sweep_row(loaded, n, reps, sample))
    for n, reps in plan.gradient:
        log.info("gradient importance at %d tokens", n)
        steps.add(lambda n=n, reps=reps: importance.gradient_row(loaded, n, reps))  # type: ignore[misc]
    if plan.corpus_texts and server.has_server():
        n_texts, large = plan.corpus_texts
        log.info("corpus jobs over %d texts (RSS: %d texts, fresh processes)", n_texts, large)
        steps.add(lambda: corpus.throughput_rows(loaded, n_texts))
        steps.add(lambda: corpus.server_rows(loaded, n_texts, 15))
        steps.add(lambda: corpus.rss_row(n_texts, large))
        log.info("interactive endpoints idle and while a job runs; served paths beside the functions behind them")
        steps.add(lambda: waits.rows(loaded, 5))
        steps.add(lambda: served.rows(loaded, 5, n_texts))
        if device.type == "cpu" and cluster.has_ray():
            log.info("Ray: the roles job over %d texts in-process and on local Ray with 1 and 2 actors", n_texts)
            steps.add(lambda: cluster.rows(loaded, models.DEFAULT, n_texts))
    log.info("causal tracing: patching at 64 and 512 tokens, DLA, logit lens")
    for step in tracing.rows(loaded, plan.ablate[-1][1]):
        steps.add(step)
    log.info("circuits: EAP and EAP-IG over every edge, exact path patching of 20 edges, at 64 tokens")
    for step in circuits.rows(loaded, plan.ablate[-1][1], memory=device.type == "cpu"):
        steps.add(step)
    log.info("why a head attends: composition matrices, QK attribution of a cell and of a query row")
    for step in whyhere.rows(loaded, plan.ablate[-1][1]):
        steps.add(step)
    n = plan.ablate[-1][0]
    log.info("pruning curve: 10 points × (importance + 5 random orders) at %d tokens", n)
    steps.add(lambda: lecture.curve_row(loaded, n))
    log.info("generation: 64 greedy tokens, alone and with an ablated row")
    for make in generation.rows(loaded, plan.ablate[-1][1]):
        steps.add(make)
    if device.type == "cpu" and server.has_server():
        log.info("notebook: headscope.open() to the first attention(), snapshot sizes (fresh processes)")
        steps.add(notebook.rows)
    log.info("families: a local/global (Gemma 3) and a MoE (Qwen3-MoE) analysis run at 512 tokens, random-init")
    for make in families.rows(plan.ablate[-1][1], str(device)):
        steps.add(make)
    return steps.rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no 8192-token case (smoke check)")
    parser.add_argument("--device", default="cpu", help="cpu (default model) or cuda (random-init --shape)")
    parser.add_argument("--shape", choices=sorted(models.SHAPES), default="smollm2", help="model shape on cuda")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update bench/RESULTS.md (default: yes for full runs, no for --quick)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each row, wait up to S seconds until other processes use under 15%% of the CPUs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("app", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    device = torch.device(args.device)
    load_start = os.getloadavg()
    started = time.perf_counter()
    if device.type == "cuda":
        loaded = models.random_model(args.shape, args.device)
        device = loaded.device
        plan = QUICK_CUDA if args.quick else FULL_CUDA
        ablate_abs_s = 0.025 if args.shape == "smollm2" else None
        card = torch.cuda.get_device_name(device)
        title = f"cuda · {card} · {loaded.name} (bfloat16)"
    else:
        loaded = models.default_model("cpu", "float32")
        plan = QUICK_CPU if args.quick else FULL_CPU
        ablate_abs_s = None
        title = f"cpu · {loaded.name} (float32)"
    if args.quick:
        title += " · quick"
    info = report.machine(device)
    rows = measure(loaded, plan, device, ablate_abs_s, args.wait_quiet)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    notes = [
        "Plain forward = the same model and weights with attn_implementation 'sdpa' under inference_mode: the "
        "backbone to the final hidden state for analysis/map rows (analyse() computes no logits), the full "
        "CausalLM with logits at every position for ablate/sweep/gradient rows (they need a loss).",
        "Eager = attn_implementation 'eager' with output_attentions=True (every map of every layer kept).",
        "Times are medians of interleaved repetitions after a warm-up; the analysis run is analyse() + "
        "head_stats(thumb=32) on a fresh run each time.",
        "Peak RSS = VmHWM of a fresh process that loads the model, warms up on 32 tokens and runs the case "
        "once (weights, Python and the run together); 1 MB = 10⁶ B, 1 GB = 10⁹ B.",
        f"Load average (1/5/15 min) at start {'/'.join(f'{v:.2f}' for v in load_start)}, at end "
        f"{'/'.join(f'{v:.2f}' for v in load_end)}; the whole run took {elapsed / 60:.1f} min. 'other load' = "
        "share of the CPUs that other processes used while the row was measured (a shared 2-core machine: "
        "contention inflates both sides of a ratio, unevenly).",
    ]
    failed = [r.what for r in rows if r.passed is False]
    notes.append(
        f"Targets missed: {len(failed)} of {sum(r.passed is not None for r in rows)}."
        if failed
        else "Every target met."
    )
    body = report.section(title, info, rows, notes)
    print(body)
    if args.write if args.write is not None else not args.quick:
        report.write(title, body)
        log.info("wrote %s", report.RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
