// The token view (bertviz's head view for any length): every head's attention from one token, shown as
// token backgrounds over the text for a chosen layer and head (or the layer's mean), with head chips that
// say where each head of the layer looks.
import { BLUES, el, fill, fmt, ramp, rgb, visible } from "../lib/util.js";
import { draw, layout, tokenCats, tokenTicks } from "./plot.js";
import { renderStrip } from "./promptview.js";

/** The attention row shown: one head's, or the mean over the layer's heads (head === null). */
export function rowOf(weights, layer, head) {
  const heads = weights[layer];
  if (head !== null) return heads[head];
  return heads[0].map((_, k) => heads.reduce((s, row) => s + row[k], 0) / heads.length);
}

const argmax = (row) => row.reduce((best, w, k) => (w > row[best] ? k : best), 0);

/** Layer <select> options and one chip per head ("H3 → ·Mary 0.62"), plus "mean". */
export function renderControls(nodes, att, layer, head) {
  const nLayers = att.weights.length;
  if (nodes.layer.options.length !== nLayers) {
    fill(nodes.layer, Array.from({ length: nLayers }, (_, l) => el("option", { value: String(l) }, `layer ${l}`)));
  }
  nodes.layer.value = String(layer);
  const chip = (h, label, row) => {
    const k = argmax(row);
    return el(
      "button",
      { type: "button", class: "head-chip", "aria-pressed": String(h === head), dataset: { head: h === null ? "mean" : String(h) }, title: `attends most to ${visible(att.tokens[k])} [${k}]: ${fmt(row[k])}` },
      el("b", {}, label),
      ` → ${visible(att.tokens[k])} `,
      el("small", {}, fmt(row[k], 2)),
    );
  };
  fill(
    nodes.heads,
    chip(null, "mean", rowOf(att.weights, layer, null)),
    att.weights[layer].map((row, h) => chip(h, `H${h}`, row)),
  );
}

/** The text with each token's background shaded by the attention it receives from the query token. */
export function renderHighlight(node, att, layer, head) {
  const row = rowOf(att.weights, layer, head);
  const q = att.query_pos;
  renderStrip(node, att.tokens, null, { selected: q, weights: row });
  const peak = Math.max(1e-9, ...row);
  node.querySelectorAll(".t").forEach((span, k) => {
    if (k > q) return;
    const w = row[k];
    const color = ramp(BLUES, Math.sqrt(w / peak)); // sqrt: small weights stay visible
    span.style.background = rgb(color);
    span.style.color = color[0] < 120 ? "#fff" : "";
    span.title = `${visible(att.tokens[k])} [${k}]: ${fmt(w, 4)}`;
    span.dataset.w = w.toFixed(6);
  });
}

/** Every head of the layer at once: heads × key tokens (up to the query), shaded by weight; click a row. */
export function drawLayerHeads(div, att, layer, head, onHead) {
  const q = att.query_pos;
  const tokens = att.tokens.slice(0, q + 1);
  const z = att.weights[layer].map((row) => row.slice(0, q + 1));
  const width = div.clientWidth || 600;
  const names = z.map((_, h) => `H${h}`);
  const trace = {
    type: "heatmap",
    z,
    x: tokenCats(tokens),
    y: names,
    hovertemplate: "%{y} → %{x}: %{z:.4f}<extra></extra>",
    colorscale: BLUES.map((c, i) => [i / (BLUES.length - 1), rgb(c)]),
    zmin: 0,
    xgap: 1,
    ygap: 1,
    showscale: false,
  };
  const shapes =
    head === null
      ? []
      : [{ type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: head - 0.5, y1: head + 0.5, line: { color: "#4f46e5", width: 2 } }];
  const lay = layout(Math.max(140, z.length * 20 + 80), {
    xaxis: { ...tokenTicks(tokens, width - 60), fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: { l: 36, r: 8, t: 4, b: 8 },
    shapes,
  });
  return draw(div, [trace], lay).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => onHead(ev.points[0].pointIndex[0]));
  });
}
