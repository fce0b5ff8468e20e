// The head-count trade-off: projection parameters and KV cache per token at this width, for other head counts.
import { bytes, el, fill } from "../lib/util.js";

const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };
const num = (n) => n.toLocaleString("en-US");
const COLUMNS = ["heads", "KV heads", "kind", "head dim", "q", "k", "v", "o", "per layer", "KV / token"];

function row(c, cls, title) {
  const p = c.params;
  const total = c.params_per_layer ?? p.q + p.k + p.v + p.o;
  return el(
    "tr",
    { class: cls, title },
    [c.n_heads, c.n_kv_heads].map((n) => el("td", {}, n)),
    el("td", { class: "kind" }, c.kind),
    el("td", {}, c.head_dim),
    [p.q, p.k, p.v, p.o, total].map((n) => el("td", {}, num(n))),
    el("td", {}, bytes(c.kv_cache_bytes_per_token)),
  );
}

const section = (text) => el("tr", { class: "section" }, el("td", { colSpan: COLUMNS.length }, text));

/** The table: the model counted from its weights, every KV grouping of its query heads, MHA at every head count. */
export function renderTable(table, t) {
  const real = t.real;
  const same = t.configs.filter((c) => c.n_heads === real.n_heads && c.head_dim === real.head_dim);
  const mha = t.configs.filter((c) => c.kind === "MHA");
  const counted = { ...real, params_per_layer: real.params.q + real.params.k + real.params.v + real.params.o };
  fill(
    table,
    el("thead", {}, el("tr", {}, COLUMNS.map((c) => el("th", { scope: "col" }, c)))),
    el(
      "tbody",
      {},
      section("this model, counted from its weights (layer 0)"),
      row(counted, "counted", `from the state dict; every layer ${real.closed_form ? "equals" : "differs from"} the closed form`),
      section(same.length ? `${real.n_heads} query heads: every KV grouping` : `${real.n_heads} heads × ${real.head_dim} ≠ d_model: no closed-form rows`),
      same.map((c) => row(c, c.real ? "real" : "", c.real ? "this model's configuration" : "")),
      section(`MHA at every head count: head dim = ${t.d_model} / heads (≥ ${t.min_head_dim})`),
      mha.map((c) => row(c, c.real ? "real" : "", "")),
    ),
  );
}

const LEFT = [0, 0.4]; // the two charts' shares of the width; the gap holds the left chart's right-hand axis
const RIGHT = [0.6, 1]; // and the right chart's title and ticks
const MARGIN = { l: 44, r: 12, t: 40, b: 70 };
const CHAR = 6.5; // px of a tick label's character at 10.5 px

/**
 * The category labels to show on an axis `px` wide: every `step`-th, so none meets its neighbour, and `keep`
 * (this model's head count) always, its neighbours within a step dropped.
 */
export function thinTicks(cats, keep, px) {
  const need = CHAR * Math.max(...cats.map((c) => c.length)) + 8;
  const step = Math.max(1, Math.ceil(need / (px / cats.length)));
  const k = cats.indexOf(keep);
  return cats.filter((_, i) => i === k || (i % step === 0 && (k < 0 || Math.abs(i - k) >= step)));
}

const drawn = new WeakMap(); // node → {t, width}: what it was drawn from, to draw again at another width
const resized = new ResizeObserver((entries) => {
  for (const { target } of entries) {
    const d = drawn.get(target);
    if (d && target.isConnected && Math.abs(target.clientWidth - d.width) > 4) drawTradeoff(target, d.t);
  }
});

/** Left: head dim (bars) and projection parameters per layer (line) vs query heads; right: KV cache per token. */
export function drawTradeoff(node, t) {
  if (!drawn.has(node)) resized.observe(node);
  const width = node.clientWidth || 560;
  drawn.set(node, { t, width });
  const mha = t.configs.filter((c) => c.kind === "MHA");
  const x = mha.map((c) => String(c.n_heads));
  const mqa = t.configs.filter((c) => c.kind === "MQA" || c.n_heads === 1);
  const kib = (b) => b / 1024;
  const data = [
    { type: "bar", x, y: mha.map((c) => c.head_dim), name: "head dim", marker: { color: "#c7d2fe" }, hovertemplate: "%{x} heads: head dim %{y}<extra></extra>" },
    {
      x,
      y: mha.map((c) => c.params_per_layer),
      yaxis: "y3",
      mode: "lines+markers",
      name: "q+k+v+o params / layer (MHA)",
      line: { color: "#4f46e5" },
      hovertemplate: "%{x} heads: %{y:,} parameters per layer<extra></extra>",
    },
    {
      x: x,
      y: mha.map((c) => kib(c.kv_cache_bytes_per_token)),
      xaxis: "x2",
      yaxis: "y2",
      mode: "lines+markers",
      name: "KV cache, MHA",
      line: { color: "#0f766e" },
      hovertemplate: "MHA, %{x} heads: %{y:.1f} KiB / token<extra></extra>",
    },
    {
      x: mqa.map((c) => String(c.n_heads)),
      y: mqa.map((c) => kib(c.kv_cache_bytes_per_token)),
      xaxis: "x2",
      yaxis: "y2",
      mode: "lines+markers",
      name: "KV cache, MQA",
      line: { color: "#d97706", dash: "dash" },
      hovertemplate: "MQA, %{x} query heads: %{y:.1f} KiB / token<extra></extra>",
    },
    {
      x: [String(t.real.n_heads)],
      y: [kib(t.real.kv_cache_bytes_per_token)],
      xaxis: "x2",
      yaxis: "y2",
      mode: "markers",
      name: `this model (${t.real.kind}, ${t.real.n_kv_heads} KV heads)`,
      marker: { symbol: "star", size: 15, color: "#dc2626" },
      hovertemplate: "this model: %{y:.1f} KiB / token<extra></extra>",
    },
  ];
  const plotted = (domain) => (width - MARGIN.l - MARGIN.r) * (domain[1] - domain[0]);
  const axis = (domain) => ({
    type: "category",
    categoryorder: "array",
    categoryarray: x,
    tickmode: "array",
    tickvals: thinTicks(x, String(t.real.n_heads), plotted(domain)),
    tickangle: 0,
    title: { text: "query heads", standoff: 4 },
    domain,
  });
  const layout = {
    height: 300,
    width,
    margin: MARGIN,
    font: { family: "Inter, system-ui, 'DejaVu Sans', sans-serif", size: 10.5, color: "#1f2937" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#fff",
    showlegend: true,
    legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top", font: { size: 10 } },
    xaxis: axis(LEFT),
    yaxis: { title: { text: "head dim" }, rangemode: "tozero" },
    // an explicit range: a flat line's autorange puts a tick at a rounding error above 0 ("910f")
    yaxis3: { overlaying: "y", side: "right", range: [0, 1.15 * Math.max(...mha.map((c) => c.params_per_layer))], showgrid: false, tickformat: ".2s" },
    xaxis2: { ...axis(RIGHT), anchor: "y2" },
    yaxis2: { anchor: "x2", title: { text: "KV cache KiB / token", standoff: 4 }, rangemode: "tozero" },
    annotations: [
      { text: "at fixed width: parameters flat,<br>heads narrower", xref: "paper", yref: "paper", x: LEFT[0], y: 1.02, yanchor: "bottom", showarrow: false, xanchor: "left", align: "left" },
      { text: "the KV cache follows<br>the KV heads", xref: "paper", yref: "paper", x: RIGHT[0], y: 1.02, yanchor: "bottom", showarrow: false, xanchor: "left", align: "left" },
    ],
  };
  Plotly.react(node, data, layout, CONFIG);
}

export function renderTradeoffSummary(node, t) {
  const r = t.real;
  const total = r.params.q + r.params.k + r.params.v + r.params.o;
  const mha = t.configs.find((c) => c.kind === "MHA" && c.n_heads === r.n_heads);
  const mqa = t.configs.find((c) => c.n_kv_heads === 1 && c.n_heads === r.n_heads);
  const parts = [
    `d_model ${t.d_model}, ${t.n_layers} layers, ${t.dtype}. This model: ${r.n_heads} query heads × ${r.head_dim} dims, `,
    `${r.n_kv_heads} KV heads (${r.kind}): ${num(total)} projection parameters per layer from its weights`,
    t.biases.length ? ` (biases on ${t.biases.join(", ")})` : " (no biases)",
    `, ${bytes(r.kv_cache_bytes_per_token)} of KV cache per token`,
  ];
  if (mha && mqa) parts.push(` — ${bytes(mha.kv_cache_bytes_per_token)} as MHA, ${bytes(mqa.kv_cache_bytes_per_token)} as MQA.`);
  else parts.push(".");
  fill(node, parts);
}
