// The circuit as a Plotly figure: layers as rows (emb at the bottom, logits at the top), query heads, KV heads and
// MLPs as nodes, one line per kept edge (width ∝ |score|, colour by sign); over a set of pairs the score is the mean
// and its CI shows on hover. Pure render functions given their data.
import { PLOT_CONFIG } from "../lib/plot.js";
import { fmt, plotlyText, signed } from "../lib/util.js";
import { edgeId } from "./state.js";

const POS = "37, 99, 235"; // helps the answer (blue)
const NEG = "220, 38, 38"; // hurts it (red)
const MAX_WIDTH = 9;

/**
 * Where each node sits, for a model of `n_layers` × `n_heads` (`n_kv_heads` groups): x = head index, the KV heads
 * in columns of their own left of the query heads and the MLP right of them (so no two nodes share a spot and
 * labels do not stack at 30 layers), y = layer (emb at −1, logits at n_layers).
 */
export function place(id, { n_layers: L, n_heads: H, n_kv_heads: G }) {
  if (id === "emb") return { x: (H - 1) / 2, y: -1, kind: "emb" };
  if (id === "logits") return { x: (H - 1) / 2, y: L, kind: "logits" };
  let m = /^L(\d+)H(\d+)$/.exec(id);
  if (m) return { x: Number(m[2]), y: Number(m[1]), kind: "head" };
  m = /^L(\d+)KV(\d+)$/.exec(id);
  if (m) return { x: kvColumn(Number(m[2]), G), y: Number(m[1]), kind: "kv" };
  m = /^M(\d+)$/.exec(id);
  if (m) return { x: H + 0.6, y: Number(m[1]), kind: "mlp" };
  return null;
}

/** The x of KV head g's column: G columns left of H0, KV0 leftmost. */
const kvColumn = (g, G) => g - G - 0.6;

/** Labels drawn on the graph: the nodes with the most |score| over the kept edges (the rest name themselves on hover). */
const MAX_LABELS = 14;

function labelled(edges) {
  const weight = new Map();
  for (const e of edges) for (const id of [e.source, e.target]) weight.set(id, (weight.get(id) ?? 0) + Math.abs(e.score));
  return new Set([...weight.keys()].sort((a, b) => weight.get(b) - weight.get(a)).slice(0, MAX_LABELS));
}

const SYMBOL = { emb: "square", logits: "square", head: "circle", kv: "diamond", mlp: "square" };
const COLOR = { emb: "#334155", logits: "#334155", head: "#4f46e5", kv: "#0891b2", mlp: "#d97706" };

/** The nodes the kept edges touch, in first-touched order. */
export function touched(edges) {
  const ids = new Set();
  for (const e of edges) ids.add(e.source).add(e.target);
  return [...ids];
}

/** "+1.234", and over a set of pairs "+1.234 [0.9, 1.5]" (its 95% CI); for hover text. */
const scoreText = (s) => `${signed(s.score)}${s.ci_low === undefined ? "" : ` [${fmt(s.ci_low)}, ${fmt(s.ci_high)}]`}`;

/**
 * Draw `edges` (already the kept top n) into `div`. `scores`: id → its node score object (senders only: `score`,
 * and over a set `ci_low`, `ci_high`); `selected`: the selected edge's id or "". Edge i is point i of the last
 * trace ("edge handles"), its customdata the edge's index.
 */
export function drawGraph(div, model, edges, scores, selected) {
  const overSet = edges.length > 0 && edges[0].ci_low !== undefined;
  const what = overSet ? "mean score" : "score";
  const top = Math.max(...edges.map((e) => Math.abs(e.score)), 1e-12);
  const at = new Map(touched(edges).map((id) => [id, place(id, model)]));
  const traces = edges.map((e, i) => {
    const a = at.get(e.source);
    const b = at.get(e.target);
    const rgb = e.score >= 0 ? POS : NEG;
    const chosen = edgeId(e) === selected;
    return {
      type: "scatter",
      mode: "lines",
      x: [a.x, b.x],
      y: [a.y, b.y],
      hoverinfo: "skip",
      showlegend: false,
      line: { width: 0.8 + (MAX_WIDTH * Math.abs(e.score)) / top, color: chosen ? "rgb(17, 24, 39)" : `rgba(${rgb}, ${0.35 + 0.45 * (Math.abs(e.score) / top)})` },
      meta: { edge: i },
    };
  });
  const ids = [...at.keys()];
  const named = labelled(edges);
  const nodes = {
    type: "scatter",
    mode: "markers+text",
    name: "nodes",
    x: ids.map((id) => at.get(id).x),
    y: ids.map((id) => at.get(id).y),
    text: ids.map((id) => (named.has(id) ? id : "")),
    customdata: ids,
    textposition: "middle right",
    textfont: { size: 10, color: "#1f2937" },
    cliponaxis: false,
    marker: {
      size: ids.map((id) => (at.get(id).kind === "emb" || at.get(id).kind === "logits" ? 14 : 11)),
      symbol: ids.map((id) => SYMBOL[at.get(id).kind]),
      color: ids.map((id) => COLOR[at.get(id).kind]),
      line: { width: 1, color: "#fff" },
    },
    hovertemplate: ids.map((id) => `<b>${id}</b>${scores.has(id) ? `<br>node ${what} ${scoreText(scores.get(id))}` : ""}<extra></extra>`),
    showlegend: false,
  };
  const handles = {
    type: "scatter",
    mode: "markers",
    name: "edge handles",
    x: edges.map((e) => (at.get(e.source).x + at.get(e.target).x) / 2),
    y: edges.map((e) => (at.get(e.source).y + at.get(e.target).y) / 2),
    customdata: edges.map((_, i) => i),
    text: edges.map(edgeId),
    marker: {
      size: 9,
      color: edges.map((e) => (edgeId(e) === selected ? "rgb(17, 24, 39)" : `rgb(${e.score >= 0 ? POS : NEG})`)),
      line: { width: 1, color: "#fff" },
    },
    hovertemplate: edges.map(
      (e) =>
        `${e.source} → ${e.target} (${e.channel})<br>${what} ${scoreText(e)}${overSet ? `<br>95% CI over ${e.n} pairs` : ""}` +
        `<br>click: ${overSet ? "its score on each pair" : "exact value"}<extra></extra>`,
    ),
    showlegend: false,
  };
  const { n_layers: L, n_heads: H, n_kv_heads: G } = model;
  const layers = [...Array(L).keys()];
  const kvs = [...Array(G).keys()];
  const layout = {
    margin: { l: 56, r: 70, t: 10, b: 34 },
    hovermode: "closest",
    plot_bgcolor: "#fff",
    xaxis: {
      range: [kvColumn(0, G) - 0.5, H + 1.6],
      tickvals: [...kvs.map((g) => kvColumn(g, G)), ...[...Array(H).keys()], H + 0.6],
      ticktext: [...kvs.map((g) => `KV${g}`), ...[...Array(H).keys()].map((h) => `H${h}`), "MLP"],
      tickfont: { size: H + G > 16 ? 9 : 11 },
      showgrid: true,
      gridcolor: "#f8fafc",
      zeroline: false,
      fixedrange: true,
    },
    yaxis: {
      range: [-1.6, L + 0.6],
      tickvals: [-1, ...layers, L],
      ticktext: ["emb", ...layers.map((l) => `L${l}`), "logits"],
      tickfont: { size: L > 16 ? 9 : 11 },
      gridcolor: "#f1f5f9",
      zeroline: false,
      fixedrange: true,
    },
  };
  Plotly.react(div, [...traces, nodes, handles], layout, { ...PLOT_CONFIG, scrollZoom: false });
}

/** The faithfulness curve: the share recovered by the top n edges, n on a log axis; a dotted line at the kept n. */
export function drawFaith(div, points, keptN) {
  const ok = points.filter((p) => p.recovered !== null);
  const trace = {
    type: "scatter",
    mode: "lines+markers",
    x: ok.map((p) => p.n_edges),
    y: ok.map((p) => p.recovered),
    line: { color: "#4f46e5", width: 2 },
    marker: { size: 6 },
    hovertemplate: "top %{x} edges<br>recovered %{y:.3f}<extra></extra>",
  };
  const layout = {
    margin: { l: 44, r: 10, t: 8, b: 36 },
    xaxis: {
      type: "log",
      // 1-2-5 steps while they fit; decades once the curve runs to every edge of a large model
      tickvals: Math.max(...points.map((p) => p.n_edges)) > 1000 ? [1, 10, 100, 1e3, 1e4, 1e5, 1e6] : [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
      tickangle: 0,
      title: { text: "edges patched (top n)", font: { size: 11 } },
    },
    yaxis: { title: { text: "recovered", font: { size: 11 } }, zeroline: true, zerolinecolor: "#cbd5e1" },
    shapes: [
      { type: "line", xref: "x", yref: "paper", x0: keptN, x1: keptN, y0: 0, y1: 1, line: { dash: "dot", color: "#64748b", width: 1 } },
      { type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: 1, y1: 1, line: { dash: "dash", color: "#16a34a", width: 1 } },
    ],
    showlegend: false,
  };
  Plotly.react(div, [trace], layout, PLOT_CONFIG);
}

/**
 * One edge's score on each pair of a set (a dot per pair, its prompt on hover), the mean as a line and the 95% CI
 * as a band. `pairs`: the answer's pairs, in the order of `edge.scores`.
 */
export function drawSpread(div, edge, pairs) {
  const n = edge.scores.length;
  const trace = {
    type: "scatter",
    mode: "markers",
    x: edge.scores,
    y: edge.scores.map((_, i) => ((i * 7) % 11) / 10 - 0.5), // a fixed jitter, so equal scores stay apart
    marker: { size: 7, color: edge.scores.map((v) => (v >= 0 ? "rgba(37, 99, 235, .75)" : "rgba(220, 38, 38, .75)")) },
    customdata: pairs.map((p, i) => `pair ${i + 1}: ${plotlyText(p.clean)}`),
    hovertemplate: "%{customdata}<br>score %{x:.4f}<extra></extra>",
  };
  const layout = {
    margin: { l: 10, r: 10, t: 6, b: 30 },
    height: 110,
    xaxis: { zeroline: true, zerolinecolor: "#94a3b8", title: { text: `score on each of ${n} pairs`, font: { size: 10 } }, tickfont: { size: 10 } },
    yaxis: { visible: false, range: [-0.8, 0.8], fixedrange: true },
    shapes: [
      { type: "rect", xref: "x", yref: "paper", x0: edge.ci_low, x1: edge.ci_high, y0: 0, y1: 1, fillcolor: "rgba(100, 116, 139, .18)", line: { width: 0 } },
      { type: "line", xref: "x", yref: "paper", x0: edge.score, x1: edge.score, y0: 0, y1: 1, line: { color: "#111827", width: 2 } },
    ],
    showlegend: false,
  };
  Plotly.react(div, [trace], layout, PLOT_CONFIG);
}
