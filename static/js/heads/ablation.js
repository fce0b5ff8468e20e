// Live ablation: re-run the model with heads switched off (stale requests cancelled) and show the prediction.
import * as api from "../lib/api.js";
import { Latest } from "../lib/latest.js";
import { el, fill, fmt, headLabel, percent, signed, visible } from "../lib/util.js";

/** Heads of one layer. */
export const layerHeads = (layer, nHeads) => [...Array(nHeads).keys()].map((head) => ({ layer, head }));

/** The query heads of `layer` that share the KV head read by `head`. */
export function kvGroupHeads(h, kvGroups) {
  const group = kvGroups.find((g) => g.includes(h.head)) ?? [h.head];
  return group.map((head) => ({ layer: h.layer, head }));
}

/** Every head except the k with the largest scores (n_layers × n_heads). */
export function allButTop(scores, k) {
  const ranked = scores.flatMap((row, layer) => row.map((s, head) => ({ layer, head, s }))).sort((a, b) => b.s - a.s);
  return ranked.slice(k).map(({ layer, head }) => ({ layer, head }));
}

/** Add the heads if any of them is on, otherwise remove them all (so the buttons toggle). */
export function toggleAll(mask, heads) {
  const keys = new Set(mask.map(headLabel));
  const allOff = heads.every((h) => keys.has(headLabel(h)));
  const wanted = new Set(heads.map(headLabel));
  if (allOff) return mask.filter((h) => !wanted.has(headLabel(h)));
  return [...mask, ...heads.filter((h) => !keys.has(headLabel(h)))];
}

/** "worse" or "better" only for a real change: no colour for a missing (one-token) or zero Δ loss. */
const trend = (delta) => (typeof delta !== "number" || delta === 0 ? "" : delta > 0 ? "worse" : "better");

/** The mark beside an ablated prediction's token: its move against the baseline's top 10 (glyph, title). */
const MOVES = {
  up: ["▲", "ranked higher than in the baseline"],
  down: ["▼", "ranked lower than in the baseline"],
  new: ["◆", "new: not in the baseline's top 10"],
};

export class Ablation {
  /** nodes: {panel, metrics, topk, tokens, caption}; onResult(result) after each ablated run lands. */
  constructor(nodes, onResult) {
    this.nodes = nodes;
    this.onResult = onResult;
    this.requests = new Latest();
    this.run = null;
    this.result = null;
  }

  /** A new text was run: its tokens and baseline prediction (from /api/overview). */
  setRun(run) {
    this.requests.cancel();
    this.run = run;
    this.result = null;
    this.render();
  }

  /** Re-run with `mask` switched off; a newer call aborts this one. Resolves to the result, or null if stale. */
  async update(mask, mode, maps = []) {
    this.requests.cancel();
    this.cancelled = false;
    if (!this.run) return null;
    if (!mask.length) {
      this.result = null;
      this.render();
      return null;
    }
    const signal = this.requests.next();
    this.nodes.panel.dataset.state = "pending";
    const res = await api.ablate(this.run.text, mask, { mode, topK: 10, maps }, { signal });
    if (!this.requests.isCurrent(signal)) return null;
    this.result = { ...res, n: mask.length, mode };
    this.render();
    this.onResult(this.result);
    return this.result;
  }

  /** Stop waiting for the ablated run under way (the status bar's Cancel): the panel shows the baseline, and says so. */
  cancel() {
    this.requests.cancel();
    this.result = null;
    this.cancelled = true;
    this.render();
  }

  render() {
    const { panel, metrics, topk, tokens, caption } = this.nodes;
    const run = this.run;
    const res = this.result;
    panel.dataset.state = !run ? "empty" : res ? "ablated" : "baseline";
    panel.dataset.kl = res ? String(res.kl_last) : "";
    if (!run) {
      fill(metrics);
      fill(topk, el("p", { class: "empty" }, "Run a prompt to see the model's next-token prediction."));
      fill(tokens);
      return;
    }
    const base = run.prediction;
    const tile = (label, value, cls = "") => el("div", { class: `stat ${cls}` }, el("span", { class: "stat-label" }, label), el("span", { class: "stat-value" }, value));
    fill(
      metrics,
      tile("loss", fmt(base.loss)),
      tile(res ? `loss, ${res.n} off` : "loss, ablated", res ? fmt(res.ablated.loss) : "–"),
      tile("Δ loss", res ? signed(res.delta_loss) : "–", trend(res?.delta_loss)),
      tile("KL last", res ? fmt(res.kl_last, 4) : "–"),
    );
    fill(topk, this.#column("Baseline", base.top_k, null), this.#column(res ? `${res.n} head${res.n > 1 ? "s" : ""} off (${res.mode})` : "Ablated", res?.ablated.top_k, base.top_k));
    this.#tokens(tokens, caption, run, res);
  }

  #column(title, list, reference) {
    const rank = new Map((reference ?? []).map((t, i) => [t.id, i]));
    const rows = (list ?? []).map((t, i) => {
      const before = rank.get(t.id);
      const moved = reference ? (before === undefined ? "new" : before > i ? "up" : before < i ? "down" : "") : "";
      const token = visible(t.token);
      return el(
        "li",
        { class: `top ${moved}` },
        el("span", { class: "tok", title: token.length > 12 ? token : null }, token),
        el("span", { class: "move", title: MOVES[moved]?.[1] ?? null }, MOVES[moved]?.[0] ?? ""),
        el("span", { class: "prob" }, percent(t.prob)),
        el("span", { class: "bar" }, el("span", { style: { width: `${Math.max(1, t.prob * 100)}%` } })),
      );
    });
    const key = reference && rows.length ? el("p", { class: "topk-key" }, "▲▼ rank change · ◆ new in the top 10") : null;
    return el("div", { class: "top-col" }, el("h3", {}, title), rows.length ? el("ol", {}, rows) : el("p", { class: "empty" }, this.cancelled ? "Cancelled. Switch a head off or on to run it again." : "Switch heads off in the grid (shift-click) to compare."), key);
  }

  /** The text, each token coloured by its log-prob change under the ablation (or by surprisal without one). */
  #tokens(node, caption, run, res) {
    const base = run.prediction.token_logprobs;
    const abl = res?.ablated.token_logprobs;
    const deltas = abl ? abl.map((lp, i) => lp - base[i]) : null;
    const span = deltas ? Math.max(0.05, ...deltas.map(Math.abs)) : Math.max(1, ...base.map((lp) => -lp));
    caption.textContent = deltas
      ? `coloured by log-prob change: red = less likely after ablation, blue = more (scale ±${fmt(span, 2)} nats)`
      : "coloured by surprisal −log p (darker = less expected)";
    const spans = run.tokens.map((t, i) => {
      const lines = [`#${i} ${JSON.stringify(t)} id ${run.token_ids[i]}`];
      let bg = "transparent";
      if (i > 0) {
        lines.push(`log p ${fmt(base[i - 1])}`);
        if (deltas) {
          const d = deltas[i - 1];
          lines.push(`ablated ${fmt(abl[i - 1])} (Δ ${signed(d)})`);
          const a = Math.min(1, Math.abs(d) / span) * 0.85;
          bg = d < 0 ? `rgba(220, 38, 38, ${a})` : `rgba(37, 99, 235, ${a})`;
        } else {
          bg = `rgba(245, 158, 11, ${Math.min(1, -base[i - 1] / span) * 0.75})`;
        }
      }
      const s = el("span", { class: "t", title: lines.join("\n"), style: { background: bg } }, visible(t));
      return t.includes("\n") ? [s, el("br")] : s;
    });
    fill(node, spans);
  }
}
