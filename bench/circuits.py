"""Circuit rows (issue 22): EAP and EAP-IG over every edge, exact path patching of 20 edges, the peak memory
of attribution at 1,024 tokens, each against plain forwards (or a plain forward and backward) of the same prompts,
and a set of IOI pairs (the mean and its bootstrap CI over pairs) per pair against one pair alone.

`python -m bench.circuits mem {eap,grad} N` is the fresh process of the memory row: it prints one JSON line with
the peak RSS (VmHWM) and the RSS once the model is loaded and warmed up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from app.corpus import pairs as pair_sets
from app.inspect.engine.nodes import NODE_OUTPUTS, Graph
from app.inspect.engine.runs import Run, analyse, encode
from app.inspect.engine.steps import drain
from app.inspect.intervene import circuits, path_patching
from app.inspect.model.loaded import Loaded
from bench import inputs, mem, models, tracing
from bench.report import Row, nbytes, seconds
from bench.timing import interleaved

GB = 1e9


def _cold(*runs: Run) -> None:
    """Drop the runs' node outputs, so each timed call records them again (their forwards count)."""
    for run in runs:
        run.memo.pop(NODE_OUTPUTS)


def attribution_row(loaded: Loaded, n: int, reps: int, steps: int, target: float) -> Row:
    """circuits.attribute over every edge (node outputs recorded afresh) vs one plain forward of both prompts."""
    clean, corrupted, answer, wrong = tracing.prompts(loaded, n)
    both = torch.tensor([clean.token_ids, corrupted.token_ids], device=loaded.device)

    def attribute() -> None:
        _cold(clean, corrupted)
        circuits.attribute(loaded, corrupted, clean, n - 1, answer, wrong, steps=steps)

    med = interleaved({"plain": lambda: models.plain_full(loaded, both), "it": attribute}, reps, loaded.device)
    r = med["it"] / med["plain"]
    name = "EAP" if steps == 1 else f"EAP-IG, {steps} steps"
    edges = Graph.of(loaded.adapter).n_edges
    return Row(
        what=f"{name} over all {edges} edges (circuits.attribute, node outputs recorded afresh), {n} tokens per prompt",
        measured=seconds(med["it"]),
        baseline=f"plain SDPA forward of both prompts (a batch of 2, logits) {seconds(med['plain'])}",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
        beside=f"floor: {1 + steps} forwards + {steps} backwards of one prompt",
    )


def path_patch_row(loaded: Loaded, n: int, reps: int, k: int = 20, target: float = 0.6) -> Row:
    """Exact path patching of k edges drawn at random (one row each, node outputs recorded afresh) vs k forwards."""
    clean, corrupted, answer, wrong = tracing.prompts(loaded, n)
    graph = Graph.of(loaded.adapter)
    every = path_patching.all_edges(graph)
    picked = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:k].tolist()
    rows = [(every[i],) for i in picked]
    x = models.input_ids(loaded, clean.token_ids)

    def patch() -> None:
        _cold(clean, corrupted)
        path_patching.metrics(loaded, corrupted, clean, rows, n - 1, answer, wrong)

    med = interleaved({"plain": lambda: models.plain_full(loaded, x), "it": patch}, reps, loaded.device)
    plain = med["plain"] * k
    r = med["it"] / plain
    layers = sorted(graph.receivers[every[i][1]].layer for i in picked)
    return Row(
        what=f"exact path patching of {k} random edges, one run each (path_patching.metrics), {n} tokens",
        measured=seconds(med["it"]),
        baseline=f"{k} plain SDPA forwards with logits {seconds(plain)} (median forward × {k})",
        ratio=r,
        target=f"≤ {target}× {k} forwards",
        passed=r <= target,
        beside=f"receivers in layers {layers} (each run starts at its receiver's block; two node-output forwards)",
    )


def pairs_row(loaded: Loaded, reps: int, n_pairs: int = 8, steps: int = 5, target: float = 1.2) -> Row:
    """EAP-IG over the first n_pairs of builtin:ioi-pairs, as /api/circuit_pairs runs it (each pair analysed and
    attributed, then the top 300 edges' and every node's mean and bootstrap CI), per pair, vs one pair alone as a
    fresh /api/circuit runs it (both prompts analysed, then attributed)."""
    tokenizer = loaded.tokenizer
    chosen = []
    for p in pair_sets.ioi_pairs(tokenizer)[:n_pairs]:
        clean, corrupted = encode(tokenizer, p.clean), encode(tokenizer, p.corrupted)
        answer, wrong = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (p.answer, p.wrong or ""))
        chosen.append(circuits.Pair(clean, corrupted, len(clean) - 1, answer, wrong))

    def over_set() -> None:
        result = drain(circuits.attribute_pairs(loaded, chosen, "denoise", steps))
        _, values = result.ranked(300)
        pair_sets.spread(values.numpy(), 0)
        pair_sets.spread(result.node_scores.numpy(), 0)

    def alone() -> None:
        first = chosen[0]
        clean, corrupted = analyse(loaded, "", token_ids=first.clean), analyse(loaded, "", token_ids=first.corrupted)
        circuits.attribute(loaded, corrupted, clean, first.position, first.answer, first.wrong, steps=steps)

    med = interleaved({"alone": alone, "set": over_set}, reps, loaded.device)
    per_pair = med["set"] / n_pairs
    r = per_pair / med["alone"]
    return Row(
        what=f"EAP-IG ({steps} steps) over {n_pairs} IOI pairs with bootstrap CIs (circuits.attribute_pairs, "
        f"pairs.spread), per pair; {len(chosen[0].clean)} tokens in the first",
        measured=f"{seconds(per_pair)} per pair ({seconds(med['set'])} in all)",
        baseline=f"one pair alone: both prompts analysed, then attributed {seconds(med['alone'])}",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
        beside="the pairs differ in length (8 templates), the first is the one timed alone",
    )


def memory_row(n: int, target: float = 2.0) -> Row:
    """Peak RSS in fresh processes: EAP of two analysed n-token prompts, above the model and the two runs, vs a
    forward and backward of one prompt, above the model."""
    eap, grad = _measure("eap", n), _measure("grad", n)
    extra = eap["peak_rss_bytes"] - eap["rss_before_bytes"]
    own = grad["peak_rss_bytes"] - grad["rss_before_bytes"]
    r = extra / own
    return Row(
        what=f"peak RSS of EAP at {n} tokens per prompt, above the model and the two analysed runs (fresh process)",
        measured=nbytes(extra),
        baseline=f"the run's own: a forward and backward of one prompt, {nbytes(own)} above the model",
        ratio=r,
        target=f"≤ {target}×",
        passed=r <= target,
        beside=f"whole processes: EAP {nbytes(eap['peak_rss_bytes'])} (model and runs "
        f"{nbytes(eap['rss_before_bytes'])}), forward + backward {nbytes(grad['peak_rss_bytes'])}",
    )


def _measure(case: str, n: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.circuits", "mem", case, str(n)], capture_output=True, text=True, check=True
    )
    found: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def _child(case: str, n: int) -> None:
    """The memory row's fresh process: load, warm up on 32 tokens, run the case once, print the peak and the RSS
    before it (for EAP, once both prompts are analysed: the runs the server would hold)."""
    loaded = models.default_model()

    def run(m: int) -> int:
        ids = inputs.token_ids(loaded.tokenizer, m)
        if case == "eap":
            other = list(ids)
            other[m // 2] = ids[m // 2 - 1]
            this, that = analyse(loaded, "", token_ids=ids), analyse(loaded, "", token_ids=other)
            before = _rss()
            circuits.attribute(loaded, that, this, m - 1, ids[-1], None)
            return before
        # the run's own: a forward to the last position's logits and a backward to the input embeddings
        before = _rss()
        embeds = loaded.model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_()
        logits = loaded.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
        logits[0, -1, ids[-1]].backward()  # type: ignore[no-untyped-call]
        return before

    run(32)
    before = run(n)
    print(json.dumps({"peak_rss_bytes": mem.peak_rss(), "rss_before_bytes": before}))


def _rss() -> int:
    """This process's resident set now (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rows(loaded: Loaded, reps: int, memory: bool) -> list[Callable[[], Row]]:
    """The circuit rows, as steps for bench.__main__ (each builds its inputs when it runs); `memory`: the
    fresh-process memory row too (CPU, the default model)."""
    made: list[Callable[[], Row]] = [
        lambda: attribution_row(loaded, 64, reps, 1, 4.0),
        lambda: attribution_row(loaded, 64, max(reps // 2, 1), 5, 10.0),
        lambda: path_patch_row(loaded, 64, reps),
        lambda: pairs_row(loaded, max(reps // 2, 1)),
    ]
    return [*made, lambda: memory_row(1024)] if memory else made


if __name__ == "__main__":
    if sys.argv[1:2] == ["mem"]:
        _child(sys.argv[2], int(sys.argv[3]))
