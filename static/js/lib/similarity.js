// Head × head similarity matrix (JS divergence or cosine), in layer or clustered order, and per-layer collapse.
import * as api from "./api.js";
import { Latest } from "./latest.js";
import { PLOT_CONFIG } from "./plot.js";
import { el, fill, headLabel, parseHead } from "./util.js";

// The measures of GET /api/roles `similarity` (a test keeps the two lists the same), as the page draws them.
// Both are bounded below by 0 (attention rows are non-negative): JS divergence ≤ ln 2, cosine ≤ 1.
export const METRIC = {
  js: { name: "JS divergence (nats)", scale: "Viridis", reverse: true, fmt: ".4f" },
  cosine: { name: "cosine similarity", scale: "Viridis", reverse: false, fmt: ".3f" },
};

/** Draw the matrix; clicking a cell calls onPick(rowHead, columnHead). */
export function drawSimilarity(div, data, onPick, { maxHeight = 900 } = {}) {
  const Plotly = window.Plotly;
  const labels = data.heads.map(headLabel);
  const n = labels.length;
  const m = METRIC[data.metric] ?? METRIC.js;
  const width = Math.max(360, div.clientWidth || 640);
  const side = Math.min(width - 110, maxHeight - 90);
  // In layer order label each layer's first head; otherwise thin labels to what fits.
  const byLayer = data.order === "layer" && n > 40;
  const step = Math.ceil(n / Math.max(4, Math.floor(side / 12)));
  const tickIdx = labels
    .map((_, i) => i)
    .filter((i) => (byLayer ? i === 0 || data.heads[i].layer !== data.heads[i - 1].layer : i % step === 0));
  const keep = byLayer ? tickIdx.filter((_, k) => k % Math.ceil(tickIdx.length / Math.max(4, Math.floor(side / 14))) === 0) : tickIdx;
  const axis = {
    type: "category",
    tickmode: "array",
    tickvals: keep.map((i) => labels[i]),
    ticktext: keep.map((i) => (byLayer ? `L${data.heads[i].layer}` : labels[i])),
    tickfont: { size: n > 60 ? 9 : 11 },
    showgrid: false,
    automargin: true,
    constrain: "domain",
  };
  const shapes = [];
  if (data.order === "layer") {
    // thin separators between layers
    for (let i = 1; i < n; i++) {
      if (data.heads[i].layer !== data.heads[i - 1].layer) {
        const pos = i - 0.5;
        shapes.push({ type: "line", xref: "x", yref: "y", x0: pos, x1: pos, y0: -0.5, y1: n - 0.5, line: { color: "rgba(255,255,255,0.55)", width: 0.6 } });
        shapes.push({ type: "line", xref: "x", yref: "y", y0: pos, y1: pos, x0: -0.5, x1: n - 0.5, line: { color: "rgba(255,255,255,0.55)", width: 0.6 } });
      }
    }
  }
  const trace = {
    type: "heatmap",
    x: labels,
    y: labels,
    z: data.matrix,
    zmin: 0,
    zmax: data.matrix.reduce((hi, row) => row.reduce((a, v) => Math.max(a, v), hi), 1e-6),
    colorscale: m.scale,
    reversescale: m.reverse,
    colorbar: { title: { text: m.name, side: "right" }, thickness: 12, len: 0.8 },
    hovertemplate: `%{y} ↔ %{x}: %{z:${m.fmt}}<extra>${m.name}</extra>`,
  };
  const layout = {
    height: side + 50,
    margin: { l: 10, r: 10, t: 10, b: 10 },
    paper_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    xaxis: { ...axis, title: { text: "head", font: { size: 11, color: "#6b7280" } } },
    yaxis: { ...axis, autorange: "reversed", scaleanchor: "x", constraintoward: "top" },
    shapes: n <= 600 ? shapes : [],
  };
  return Plotly.react(div, [trace], layout, PLOT_CONFIG).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => {
      const pt = ev.points?.[0];
      const a = pt && parseHead(String(pt.y));
      const b = pt && parseHead(String(pt.x));
      if (a && b) onPick(a, b);
    });
  });
}

/** Per layer, the mean pairwise value among its heads: low JS divergence / high cosine = redundant heads. */
export function drawCollapse(div, data) {
  const m = METRIC[data.metric] ?? METRIC.js;
  const trace = {
    type: "bar",
    x: data.collapse.map((c) => c.layer),
    y: data.collapse.map((c) => c.mean_similarity),
    marker: { color: "#4f46e5" },
    hovertemplate: `L%{x}: %{y:${m.fmt}}<extra>mean within layer</extra>`,
  };
  const layout = {
    height: 180,
    margin: { l: 50, r: 10, t: 28, b: 36 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    title: { text: `Within-layer mean ${m.name}`, font: { size: 12 }, x: 0, xanchor: "left" },
    xaxis: { title: { text: "layer" }, dtick: data.collapse.length > 12 ? 2 : 1, showgrid: false },
    yaxis: { gridcolor: "#e5e7eb", zeroline: false, rangemode: "tozero" },
    bargap: 0.25,
  };
  return window.Plotly.react(div, [trace], layout, { ...PLOT_CONFIG, responsive: true });
}

/** Fetches (and caches, per text and settings) the matrix the state asks for and draws it. */
export class SimilarityView {
  /** onPick(rowHead, columnHead) when a cell is clicked. */
  constructor({ plot, collapse, collapseBox }, onPick) {
    Object.assign(this, { plot, collapse, collapseBox, onPick });
    this.cache = new Map();
    this.draws = new Latest(); // a newer draw aborts this one's fetch and discards its answer
    this.shown = null;
  }

  setRun(ov) {
    this.draws.cancel();
    this.ov = ov;
    this.cache.clear();
    this.shown = null;
  }

  /** Resolves to true when something new was painted. scope: "all" or a layer; kv: "all" or a KV head of it. */
  async draw({ metric, order, scope, kv }, maxHeight) {
    const signal = this.draws.next();
    if (!this.ov) return false;
    if (this.ov.tokens.length < 2) {
      // one token: every head puts all its weight on it, so every pair is identical
      this.shown = null;
      window.Plotly.purge(this.plot);
      window.Plotly.purge(this.collapse);
      this.collapseBox.hidden = true;
      fill(this.plot, el("p", { class: "empty" }, "With one token every head attends only to it: there is nothing to compare. Run a longer text."));
      return true;
    }
    const kvHead = scope !== "all" && kv !== "all" ? Number(kv) : null;
    const key = `${metric}|${order}|${scope}|${kvHead}`;
    if (!this.cache.has(key)) {
      const opts = { metric, order, layer: scope === "all" ? null : Number(scope), kvHead };
      this.cache.set(key, await api.similarity(this.ov.text, opts, { signal }));
    }
    if (!this.draws.isCurrent(signal)) return false;
    const data = this.cache.get(key);
    this.shown = { ...data, layer: scope === "all" ? null : Number(scope), kv_head: kvHead };
    if (this.plot.querySelector(".empty")) fill(this.plot);
    await drawSimilarity(this.plot, data, this.onPick, { maxHeight });
    this.collapseBox.hidden = scope !== "all"; // within-layer means need every layer
    if (scope === "all") await drawCollapse(this.collapse, data);
    return true;
  }
}
