// The Circuits view: one head's QK and OV circuits from the weights (GET /api/head_circuits), the same for every
// text: the singular values and effective rank of W_QK and W_OV, the OV copying score, where the full OV circuit
// sends a few tokens, the positional QK evidence, and the earlier heads that compose into it most.
import * as api from "../lib/api.js";
import { Latest } from "../lib/latest.js";
import { PLOT_CONFIG } from "../lib/plot.js";
import { el, fill, fmt, headLabel, signed, visible } from "../lib/util.js";

const KIND_NAMES = { q: "Q-composition (its query reads them)", k: "K-composition (its key reads them)", v: "V-composition (its value reads them)" };

/** Singular values of W_QK and W_OV, one line each, on a log scale. */
function drawSingular(div, res) {
  const line = (name, values, color) => ({
    type: "scatter",
    mode: "lines+markers",
    name,
    x: values.map((_, i) => i + 1),
    y: values.map((v) => Math.max(v, 1e-12)),
    line: { color, width: 2 },
    marker: { size: 4 },
    hovertemplate: `${name} σ%{x}: %{y:.4g}<extra></extra>`,
  });
  const layout = {
    height: 210,
    margin: { l: 52, r: 10, t: 8, b: 38 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    xaxis: { title: { text: "singular value index", font: { size: 11, color: "#6b7280" } }, gridcolor: "#eef0f3", zeroline: false },
    yaxis: { type: "log", title: { text: "σ", font: { size: 11, color: "#6b7280" } }, gridcolor: "#eef0f3", exponentformat: "power" },
    legend: { orientation: "h", x: 1, xanchor: "right", y: 1, bgcolor: "rgba(255,255,255,.7)" },
    shapes: [
      { type: "line", xref: "x", yref: "paper", x0: res.qk_effective_rank, x1: res.qk_effective_rank, y0: 0, y1: 1, line: { color: "#4f46e5", dash: "dot", width: 1 } },
      { type: "line", xref: "x", yref: "paper", x0: res.ov_effective_rank, x1: res.ov_effective_rank, y0: 0, y1: 1, line: { color: "#d97706", dash: "dot", width: 1 } },
    ],
  };
  const traces = [line("W_QK", res.qk_singular_values, "#4f46e5"), line("W_OV", res.ov_singular_values, "#d97706")];
  return window.Plotly.react(div, traces, layout, PLOT_CONFIG);
}

/** A −1 … +1 gauge with the copying score marked. */
function gauge(score) {
  const at = `${(50 * (1 + Math.max(-1, Math.min(1, score)))).toFixed(1)}%`;
  return el(
    "div",
    { class: "gauge", title: "−1: suppresses the tokens it attends to · 0: neither · +1: copies them" },
    el("span", { class: "gauge-mid" }),
    el("span", { class: "gauge-mark", style: { left: at } }),
    el("span", { class: "gauge-label left" }, "−1 suppresses"),
    el("span", { class: "gauge-label right" }, "copies +1"),
  );
}

const tok = (t) => el("code", { class: "tok" }, visible(t));

function tokenMap(res) {
  return el(
    "table",
    { class: "token-map" },
    el("thead", {}, el("tr", {}, el("th", {}, "attends to"), el("th", {}, "raises the logits of (per unit attention)"), el("th", { title: "where the token itself ranks among every output token" }, "itself"))),
    el(
      "tbody",
      {},
      res.token_map.map((row) =>
        el(
          "tr",
          {},
          el("td", {}, tok(row.token.token)),
          el("td", {}, row.top.map((o) => el("span", { class: "out", title: `id ${o.id}: ${signed(o.value, 3)}` }, tok(o.token), el("small", {}, signed(o.value, 2))))),
          el("td", { class: row.self_rank <= 5 ? "self hit" : "self" }, `#${row.self_rank}`),
        ),
      ),
    ),
  );
}

function positional(pos) {
  if (!pos.defined) return el("p", { class: "muted" }, `Not defined for this model. ${pos.reason[0].toUpperCase()}${pos.reason.slice(1)}.`);
  const max = Math.max(...pos.offset_mass, 1e-9);
  return [
    el("p", {}, "Attention by offset from the position embeddings alone (0 = the query itself); previous-token mass ", el("b", {}, fmt(pos.previous_token, 3)), "."),
    el(
      "div",
      { class: "offsets" },
      pos.offset_mass.map((m, d) =>
        el("div", { class: "offset", title: `offset ${d}: ${fmt(m, 4)}` }, el("span", { style: { height: `${(100 * m) / max}%` } }), el("small", {}, String(d))),
      ),
    ),
  ];
}

function senders(res, onHead) {
  return Object.entries(res.top_senders).map(([kind, list]) =>
    el(
      "div",
      { class: "senders" },
      el("span", { class: "muted" }, `${KIND_NAMES[kind] ?? kind}: `),
      list.length
        ? list.map((s) =>
            el(
              "button",
              { type: "button", class: "node head-link", title: `inspect ${headLabel(s)}: ${fmt(s.score, 3)}, ${fmt(s.score / res.baseline[kind], 1)}× the random baseline`, onclick: () => onHead(s) },
              `${headLabel(s)} ${fmt(s.score, 3)}`,
            ),
          )
        : el("span", { class: "muted" }, "none (the first layer reads only the embeddings)"),
      el("span", { class: "muted" }, ` · random heads ${fmt(res.baseline[kind], 3)}`),
    ),
  );
}

export class CircuitsView {
  /** box: the view's body; onHead(h): a head was clicked. */
  constructor(box, onHead) {
    Object.assign(this, { box, onHead });
    this.cache = new Map(); // head label → answer (weights only: the same for every text)
    this.draws = new Latest();
    this.shown = null;
  }

  /** Draw head `h`'s circuits; resolves to true when painted. */
  async draw(h) {
    const signal = this.draws.next();
    if (!h) {
      this.shown = null;
      fill(this.box, el("p", { class: "empty" }, "Click a head in the grid to see its circuits."));
      return false;
    }
    const key = headLabel(h);
    this.box.classList.add("outdated");
    try {
      if (!this.cache.has(key)) this.cache.set(key, await api.headCircuits(h, { signal }));
    } finally {
      if (this.draws.isCurrent(signal)) this.box.classList.remove("outdated");
    }
    if (!this.draws.isCurrent(signal)) return false;
    const res = this.cache.get(key);
    this.shown = res;
    const hd = res.qk_singular_values.length;
    fill(
      this.box,
      el("h3", { class: "circ-title" }, el("b", {}, headLabel(res)), ` · KV${res.kv_head} · from the weights (the same for every text)`),
      el(
        "section",
        { class: "circ-copy" },
        el("h4", {}, "OV copying score ", el("b", { id: "copying-score", dataset: { value: String(res.copying_score) } }, signed(res.copying_score, 3))),
        gauge(res.copying_score),
        el("p", { class: "muted small" }, `Copying score: ${res.copying_definition}.`),
      ),
      el(
        "section",
        {},
        el(
          "h4",
          {},
          "Singular values: QK effective rank ",
          el("b", { id: "qk-rank" }, String(res.qk_effective_rank)),
          `, OV `,
          el("b", { id: "ov-rank" }, String(res.ov_effective_rank)),
          ` (of ${hd})`,
        ),
        el("div", { class: "plot circ-sv" }),
        el("p", { class: "muted small" }, `Effective rank: ${res.effective_rank_definition} (dotted lines). W_QK = W_Q·W_Kᵀ, W_OV = W_V·W_O, the block's input norm folded in.`),
        res.qk_note ? el("p", { class: "note" }, res.qk_note) : null,
      ),
      el("section", {}, el("h4", {}, "OV token map: attending to a token raises these logits"), tokenMap(res)),
      el("section", {}, el("h4", {}, "Positional QK term"), positional(res.positional)),
      el("section", {}, el("h4", {}, "Earlier heads it reads most (composition scores)"), senders(res, this.onHead)),
    );
    await drawSingular(this.box.querySelector(".circ-sv"), res);
    return true;
  }
}
