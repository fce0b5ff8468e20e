// The pruning curve: importance order vs random orders (mean, min–max band, each seed), the 0.1-nat point marked.
import { PLOT_CONFIG } from "../lib/plot.js";
import { el, fill, fmt } from "../lib/util.js";

const IMP = "#4f46e5";
const RND = "#6b7280";

/** The heads a point switches off: the first n of order k, sorted by layer then head. */
export function headsAt(curve, k, n) {
  return curve.pruned_order[k].slice(0, n).sort((a, b) => a.layer - b.layer || a.head - b.head);
}

/** The order whose loss at point i is closest to the mean (the random mean's click opens a real set). */
export function closestOrder(curve, i) {
  const p = curve.points[i];
  let best = 0;
  p.losses.forEach((loss, k) => {
    if (Math.abs(loss - p.loss) < Math.abs(p.losses[best] - p.loss)) best = k;
  });
  return best;
}

function traces(imp, rnd) {
  const out = [];
  if (rnd) {
    const x = rnd.points.map((p) => p.n_pruned);
    const band = `random: min–max over ${rnd.seeds.length} seeds`;
    out.push({ x, y: rnd.points.map((p) => p.loss_low), mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false });
    out.push({
      x,
      y: rnd.points.map((p) => p.loss_high),
      mode: "lines",
      line: { width: 0 },
      fill: "tonexty",
      fillcolor: "rgba(107, 114, 128, .16)",
      name: band,
      hoverinfo: "skip",
    });
    rnd.seeds.forEach((seed, k) => {
      out.push({
        x,
        y: rnd.points.map((p) => p.losses[k]),
        customdata: x.map((n) => ["random", k, n]),
        mode: "lines+markers",
        marker: { size: 4 },
        line: { color: "rgba(107, 114, 128, .35)", width: 1 },
        name: `seed ${seed}`,
        showlegend: false,
        hovertemplate: `seed ${seed} · %{x} heads off · loss %{y:.3f}<br>click: open with these heads off<extra></extra>`,
      });
    });
    out.push({
      x,
      y: rnd.points.map((p) => p.loss),
      customdata: rnd.points.map((p, i) => ["random", closestOrder(rnd, i), p.n_pruned]),
      mode: "lines+markers",
      line: { color: RND, dash: "dash", width: 2 },
      marker: { size: 7 },
      name: `random order (mean of ${rnd.seeds.length})`,
      hovertemplate: "random mean · %{x} heads off · loss %{y:.3f}<br>click: the seed closest to the mean<extra></extra>",
    });
    out.push({
      x: rnd.thresholds.map((t) => t.n_pruned),
      y: rnd.thresholds.map((t) => t.loss),
      customdata: rnd.thresholds.map((t, k) => ["random", k, t.n_pruned]),
      mode: "markers",
      marker: { symbol: "diamond", size: 9, color: RND, line: { color: "#fff", width: 1 } },
      name: "random: last point under +0.1",
      showlegend: false,
      text: rnd.thresholds.map((_, k) => span(thresholdRange(rnd, k))),
      hovertemplate: "seed's 0.1-nat point: %{text} heads off · loss %{y:.3f}<extra></extra>",
    });
  }
  if (imp) {
    const x = imp.points.map((p) => p.n_pruned);
    out.push({
      x,
      y: imp.points.map((p) => p.loss),
      customdata: x.map((n) => ["importance", 0, n]),
      mode: "lines+markers",
      line: { color: IMP, width: 2.5 },
      marker: { size: 8 },
      name: "importance order (least important first)",
      hovertemplate: "importance order · %{x} heads off · loss %{y:.3f}<br>click: open with these heads off<extra></extra>",
    });
    const [t] = imp.thresholds;
    out.push({
      x: [t.n_pruned],
      y: [t.loss],
      customdata: [["importance", 0, t.n_pruned]],
      mode: "markers",
      marker: { symbol: "star", size: 17, color: "#f59e0b", line: { color: "#92400e", width: 1 } },
      name: `0.1-nat point: ${span(thresholdRange(imp, 0))} heads`,
      hovertemplate: t.exact
        ? "importance: %{x} heads off before the loss rises by 0.1 nats · loss %{y:.3f}<extra></extra>"
        : `importance: the loss rises by 0.1 nats between ${span(thresholdRange(imp, 0))} heads off (the curve's resolution)<extra></extra>`,
    });
  }
  return out;
}

/** Draw both curves into `node`; `onPick(order, k, n)` gets a clicked point. */
export function drawCurve(node, imp, rnd, onPick) {
  const any = imp || rnd;
  const base = any.points[0].loss;
  const limit = base + any.rise;
  const layout = {
    height: 380,
    margin: { l: 56, r: 12, t: 8, b: 44 },
    font: { family: "Inter, system-ui, 'DejaVu Sans', sans-serif", size: 11, color: "#1f2937" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#fff",
    xaxis: { title: { text: `heads switched off (of ${any.n_heads})` }, range: [-any.n_heads * 0.02, any.n_heads * 1.02], zeroline: false },
    yaxis: { title: { text: "mean next-token loss (nats)" }, zeroline: false },
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 10.5 } },
    hovermode: "closest",
    shapes: [
      { type: "line", xref: "paper", x0: 0, x1: 1, y0: limit, y1: limit, line: { color: "#dc2626", dash: "dot", width: 1 } },
    ],
    annotations: [
      { xref: "paper", x: 1, y: limit, yanchor: "bottom", xanchor: "right", showarrow: false, text: `unchanged + ${any.rise} nats`, font: { color: "#dc2626", size: 10 } },
    ],
  };
  Plotly.react(node, traces(imp, rnd), layout, PLOT_CONFIG);
  node.removeAllListeners?.("plotly_click");
  node.on("plotly_click", (ev) => {
    const point = ev.points.find((p) => Array.isArray(p.customdata));
    if (point) onPick(...point.customdata);
  });
}

/**
 * Where order k's threshold can lie: [n, n] when it is exact, else [n, next point − 1] (the loss crossed somewhere
 * before the curve's next point, and the curve cannot say where).
 */
export function thresholdRange(curve, k) {
  const t = curve.thresholds[k];
  if (t.exact) return [t.n_pruned, t.n_pruned];
  const next = curve.points.find((p) => p.n_pruned > t.n_pruned);
  return [t.n_pruned, next ? next.n_pruned - 1 : t.n_pruned];
}

const num = (x) => (Number.isInteger(x) ? String(x) : fmt(x, 1));
const span = ([lo, hi]) => (lo === hi ? num(lo) : `${num(lo)}–${num(hi)}`);
const bold = (cls, text) => el("b", { class: cls }, text);

/** The widest gap between two points of a curve around a threshold that is not exact, or 0. */
function coarseness(curve) {
  return Math.max(0, ...curve.thresholds.map((_, k) => thresholdRange(curve, k)).map(([lo, hi]) => (hi > lo ? hi - lo + 1 : 0)));
}

/** One line per order: how many heads can go before the loss rises by `rise` (a range where the curve is too coarse). */
export function renderSummary(node, imp, rnd) {
  const any = imp || rnd;
  const parts = [];
  const where =
    any.dataset === null
      ? `on this text (${any.n_tokens} tokens)`
      : `on the first ${any.n_texts} texts of ${any.dataset} (${any.n_tokens} tokens; importance and loss are means over texts)`;
  if (imp) {
    parts.push("Importance order: ", bold("imp", span(thresholdRange(imp, 0))), ` of ${imp.n_heads} heads can go before the loss rises by ${imp.rise} nats. `);
  }
  if (rnd) {
    const ranges = rnd.thresholds.map((_, k) => thresholdRange(rnd, k));
    const n = ranges.length;
    if (ranges.every(([lo, hi]) => lo === hi)) {
      parts.push("Random order: ", bold("rnd", fmt(rnd.threshold_n_pruned, 1)), ` (mean of ${n} seeds: ${ranges.map(span).join(", ")}). `);
    } else {
      const mean = (i) => ranges.reduce((a, r) => a + r[i], 0) / n;
      parts.push("Random order: ", bold("rnd", span([mean(0), mean(1)])), ` (${n} seed${n > 1 ? "s" : ""}: ${ranges.map(span).join(", ")}). `);
    }
  }
  const gap = Math.max(imp ? coarseness(imp) : 0, rnd ? coarseness(rnd) : 0);
  if (gap) {
    const how = any.dataset === null ? "more points narrow a range, and “exact” finds the very head" : "more points narrow a range";
    parts.push(`A range is as close as the curve can tell: its points are up to ${gap} heads apart (${how}). `);
  }
  parts.push(`Loss with no head off ${fmt(any.points[0].loss)} nats, with every head off ${fmt(any.points.at(-1).loss)}; measured ${where}.`);
  fill(node, parts);
}
