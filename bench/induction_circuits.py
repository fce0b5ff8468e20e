"""Why the default model's induction heads attend where they do (issue 23's note): on a repeated random sequence,
the QK attribution of each induction head's cell (query: a token in the second copy; key: the token after its
first occurrence), averaged over the second copy, and the K-composition scores from the previous-token heads
into it against the random-heads baseline.

`python -m bench.induction_circuits [--heads L17H4 L18H6] [--length 24] [--seed 0]` prints the findings.
"""

from __future__ import annotations

import argparse

import torch

from app.inspect.engine.runs import analyse
from app.inspect.observe import composition, qk_attribution
from bench import models


def parse(head: str) -> tuple[int, int]:
    layer, h = head.removeprefix("L").split("H")
    return int(layer), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.induction_circuits", description=__doc__)
    parser.add_argument("--heads", nargs="+", default=["L17H4", "L18H6"])
    parser.add_argument("--length", type=int, default=24, help="random tokens in one copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()
    loaded = models.default_model("cpu", "float32")
    lay = loaded.adapter.layout
    gen = torch.Generator().manual_seed(args.seed)
    half = torch.randint(1000, 20000, (args.length,), generator=gen).tolist()
    ids, n = half + half, args.length
    run = analyse(loaded, "", token_ids=ids)

    prev = torch.stack([run.maps(layer, list(range(lay.n_heads)), lay.group_size) for layer in range(lay.n_layers)])
    prev_score = prev.diagonal(-1, -2, -1).mean(-1)  # (layers, heads): mean attention to the previous token
    comp = composition.composition(loaded.adapter, "k")
    print(
        f"repeated random sequence: {n} tokens × 2 (seed {args.seed}); K-composition baseline "
        f"{comp.baseline:.4f} ± {comp.baseline_std:.4f} (random heads), all pairs' median "
        f"{float(comp.scores.nanmedian()):.4f}"
    )
    for name in args.heads:
        layer, head = parse(name)
        weights = prev[layer, head]  # (T, T)
        hits = [int(weights[t].argmax()) == t - n + 1 for t in range(n, 2 * n)]
        print(
            f"\n{name}: attends to the induction target (token after the earlier copy) at {sum(hits)}/{n} queries, "
            f"mean weight there {float(torch.stack([weights[t, t - n + 1] for t in range(n, 2 * n)]).mean()):.2f}"
        )
        q_sum: dict[str, float] = {}
        k_sum: dict[str, float] = {}
        term_sum: dict[tuple[str, str], float] = {}
        scores = []
        queries = range(n + 1, 2 * n)
        for t in queries:
            cell = qk_attribution.cell(loaded, run, layer, head, t, t - n + 1)
            scores.append(cell.score)
            for node, v in zip(cell.nodes, cell.terms.sum(1).tolist(), strict=True):
                q_sum[node] = q_sum.get(node, 0.0) + v / len(queries)
            for node, v in zip(cell.nodes, cell.terms.sum(0).tolist(), strict=True):
                k_sum[node] = k_sum.get(node, 0.0) + v / len(queries)
            flat = cell.terms.flatten()
            for i in flat.abs().topk(args.top).indices.tolist():
                pair = (cell.nodes[i // len(cell.nodes)], cell.nodes[i % len(cell.nodes)])
                term_sum[pair] = term_sum.get(pair, 0.0) + float(flat[i]) / len(queries)
        print(
            f"  mean score at the target {sum(scores) / len(scores):.2f} (pre-softmax q·k·scale), "
            f"{len(queries)} queries"
        )
        top = sorted(k_sum.items(), key=lambda kv: -abs(kv[1]))[: args.top]
        print("  key side (summed over query nodes):  " + ", ".join(f"{a} {v:+.2f}" for a, v in top))
        top = sorted(q_sum.items(), key=lambda kv: -abs(kv[1]))[: args.top]
        print("  query side (summed over key nodes):  " + ", ".join(f"{a} {v:+.2f}" for a, v in top))
        top = sorted(term_sum.items(), key=lambda kv: -abs(kv[1]))[: args.top]
        print("  top terms (query × key, mean):       " + ", ".join(f"{a}×{b} {v:+.2f}" for (a, b), v in top))
        col = comp.scores[:, layer * lay.n_heads + head]
        ranked = torch.argsort(col.nan_to_num(-1.0), descending=True)
        senders = [(int(i) // lay.n_heads, int(i) % lay.n_heads) for i in ranked[: args.top]]
        print(
            "  top K-composition senders:           "
            + ", ".join(
                f"L{a}H{b} {float(col[a * lay.n_heads + b]):.3f} (prev-token {float(prev_score[a, b]):.2f})"
                for a, b in senders
            )
        )
        earlier = prev_score[:layer].flatten()
        prev_heads = torch.argsort(earlier, descending=True)[: args.top]
        valid = col[: layer * lay.n_heads]
        print(
            "  previous-token heads → it:           "
            + ", ".join(
                f"L{int(i) // lay.n_heads}H{int(i) % lay.n_heads} (prev {float(earlier[i]):.2f}): "
                f"{float(valid[i]):.3f}, rank {int((valid > valid[i]).sum()) + 1}/{valid.numel()}, "
                f"{float(valid[i]) / comp.baseline:.1f}× baseline"
                for i in prev_heads
            )
        )


if __name__ == "__main__":
    main()
