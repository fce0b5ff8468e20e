"""EAP and EAP-IG against exact edge patching on the default model, on the indirect-object prompt (issue 22).

Every edge of the graph is patched alone, exactly (clean values into the corrupted run, one engine row each):
its effect is the metric's change, logit(" Mary") − logit(" John") at the last position. The estimates are then
compared with it: Spearman's ρ over the 500 edges of largest exact |effect|, and how many of the 50 largest by
exact |effect| are among a method's 50 largest by |score|. The faithfulness of a method's top 50, 100 and 200
edges is the metric recovered by patching them together, exactly.

`python -m bench.ioi_circuit [--steps 5] [--out FILE] [--exact FILE]` prints the findings (and writes every
edge's numbers to FILE as JSON when asked). On the 2-core CPU it takes about half an hour: 70,651 exact patched
runs; `--exact FILE` reads their effects from an earlier `--out` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
from scipy.stats import spearmanr

from app.inspect.engine.nodes import Graph
from app.inspect.engine.runs import analyse
from app.inspect.intervene import circuits, path_patching
from app.inspect.intervene.circuits import Attribution
from bench import models

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
SIZES = (1, 5, 10, 20, 50, 100, 200)  # circuits whose faithfulness is reported, in edges
log = logging.getLogger("bench.ioi_circuit")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ioi_circuit", description=__doc__)
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps")
    parser.add_argument("--out", help="write every edge's scores and exact effect here (JSON)")
    parser.add_argument("--exact", help="read the exact effects from an earlier --out instead of patching again")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    loaded = models.default_model()
    tok = loaded.tokenizer
    answer, wrong = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" Mary", " John"))
    clean, corrupted = analyse(loaded, CLEAN), analyse(loaded, CORRUPTED)
    pos = clean.n_tokens - 1
    gap = path_patching.check(loaded)
    assert gap is None, gap
    found: dict[str, Attribution] = {}
    took: dict[str, float] = {}
    for name, steps in (("EAP", 1), (f"EAP-IG ({args.steps} steps)", args.steps)):
        start = time.perf_counter()
        found[name] = circuits.attribute(loaded, corrupted, clean, pos, answer, wrong, steps=steps)
        took[name] = time.perf_counter() - start
    any_att = next(iter(found.values()))
    graph, this, other = any_att.graph, any_att.metric_this, any_att.metric_other
    every = path_patching.all_edges(graph)
    start = time.perf_counter()
    if args.exact:
        with open(args.exact, encoding="utf-8") as f:
            exact = torch.tensor([e["exact"] for e in json.load(f)], dtype=torch.float64)
    else:
        log.info("exact patching of all %d edges, one run each", len(every))
        exact = path_patching.metrics(loaded, corrupted, clean, [(e,) for e in every], pos, answer, wrong) - this
    took["exact, every edge"] = time.perf_counter() - start
    order = torch.argsort(exact.abs(), descending=True)
    top500, top50 = order[:500], set(order[:50].tolist())
    print(f"clean metric {other:+.3f}, corrupted {this:+.3f} (logit Mary − logit John at position {pos})")
    largest = every[int(order[0])]
    print(f"{graph.n_edges} edges; the largest exact effect: {_name(graph, largest)} {float(exact[order[0]]):+.3f}")
    for name, att in found.items():
        est = torch.tensor([float(att.scores[r, s]) for s, r in every], dtype=torch.float64)
        rho = float(spearmanr(est[top500].numpy(), exact[top500].numpy()).statistic)
        mine50 = set(torch.argsort(est.abs(), descending=True)[:50].tolist())
        ns = list(SIZES)
        faith = circuits.faithfulness(loaded, corrupted, clean, att, pos, answer, wrong, ns)
        recovered = [path_patching.recovered(float(v), this, other) for v in faith]
        top = att.ranked(1)[0]
        print(
            f"{name}: {took[name]:.1f} s; Spearman ρ over the top 500 edges by exact |effect| {rho:.3f}; "
            f"top-50 overlap {len(mine50 & top50)}/50; faithfulness (recovered) of its top "
            + ", ".join(f"{n}: {r:.3f}" for n, r in zip(ns, recovered, strict=True))
            + f"; its top edge {_name(graph, top[:2])} {top[2]:+.3f} (exact {float(exact[every.index(top[:2])]):+.3f})"
        )
    by_exact = [(every[int(i)], float(exact[i])) for i in order[:200]]
    rows = [tuple(e for e, _ in by_exact[:n]) for n in SIZES]
    best = path_patching.metrics(loaded, corrupted, clean, rows, pos, answer, wrong)
    print(
        f"for reference, the top {'/'.join(map(str, SIZES))} edges by exact single-edge effect recover "
        + ", ".join(f"{path_patching.recovered(float(v), this, other):.3f}" for v in best)
        + f"; exact patching of every edge alone took {took['exact, every edge']:.0f} s"
        + (" (read from an earlier run)" if args.exact else "")
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(
                [
                    {"edge": _name(graph, e), "exact": float(exact[i])}
                    | {name: float(att.scores[e[1], e[0]]) for name, att in found.items()}
                    for i, e in enumerate(every)
                ],
                f,
            )


def _name(graph: Graph, edge: tuple[int, int]) -> str:
    rec = graph.receivers[edge[1]]
    return f"{graph.senders[edge[0]]} → {rec.target} ({rec.channel})"


if __name__ == "__main__":
    main()
