// The head page: everything a job knows of one head — its statistics with CIs, its rank and the split-half
// reliability of each metric, its nearest heads in the dataset similarity matrix, texts from each decile of its
// scores and its top texts, and its queries and keys in one 2-D space (AttentionViz). Pure rendering from data:
// the corpus page fetches the data from the API, the static atlas reads it from files.
import { PLOT_CONFIG } from "../lib/plot.js";
import { el, fill, fmt, headLabel, plotlyText, sameHead, visible } from "../lib/util.js";
import { metricLabel } from "./grid.js";
import { exampleItem } from "./heads.js";

export const QK_COLORS = ["kind", "position", "token"];
const KIND_COLOR = { query: "#4f46e5", key: "#ea580c" };
const TOKEN_COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
const NEAREST = 6;

/** Rank of the head among all heads by a metric's mean (1 = highest), and how many heads have a mean. */
function rankOf(heads, head, metric) {
  const means = heads.heads.map((h) => h[metric]?.mean).filter((m) => Number.isFinite(m));
  const mine = heads.heads.find((h) => sameHead(h, head))?.[metric]?.mean;
  if (!Number.isFinite(mine)) return null;
  return { rank: 1 + means.filter((m) => m > mine).length, of: means.length };
}

function statsTable(heads, head) {
  const h = heads.heads.find((x) => sameHead(x, head));
  const row = (m) => {
    const s = h[m];
    const r = rankOf(heads, head, m);
    const rho = heads.reliability?.[m];
    const cells = s && s.n
      ? [fmt(s.mean), `[${fmt(s.ci_low)}, ${fmt(s.ci_high)}]`, String(s.n), r ? `${r.rank} / ${r.of}` : "–"]
      : ["–", "", "0", "–"];
    const rel = Number.isFinite(rho) ? `ρ = ${rho.toFixed(2)}` : "too few texts";
    return el("tr", {}, el("th", { scope: "row" }, metricLabel(m)), cells.map((c) => el("td", {}, c)), el("td", { class: "muted" }, rel));
  };
  return el(
    "table",
    { class: "hstats hp-stats" },
    el("thead", {}, el("tr", {}, ["metric", "mean", "95% CI", "n", "rank", "split-half"].map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, heads.metrics.map(row)),
  );
}

/** The heads whose attention is most alike this one's over the dataset (lowest JS divergence / highest cosine). */
function nearestList(similarity, head, headURL) {
  if (!similarity) return el("p", { class: "muted" }, "The job did not compute similarity: tick “similarity” to see this head's nearest heads.");
  const i = similarity.heads.findIndex((h) => sameHead(h, head));
  const js = similarity.metric === "js";
  const others = similarity.heads
    .map((h, j) => ({ h, v: similarity.matrix[i][j] }))
    .filter((x) => !sameHead(x.h, head))
    .sort((a, b) => (js ? a.v - b.v : b.v - a.v))
    .slice(0, NEAREST);
  return el(
    "ol",
    { class: "hp-near" },
    others.map(({ h, v }) => el("li", {}, el("a", { href: headURL(h) }, headLabel(h)), el("span", { class: "muted" }, ` ${js ? "JS" : "cos"} ${fmt(v)}`))),
  );
}

function exampleList(examples, head, textURL, empty) {
  if (!examples) return el("p", { class: "muted" }, "loading…");
  if (!examples.examples.length) return el("p", { class: "muted" }, empty);
  return el("ol", { class: "cx-list" }, examples.examples.map((ex, i) => exampleItem(ex, head, i, textURL)));
}

/**
 * Render the page's text parts; the Q/K plot goes into the returned node (see drawQK).
 * @param {HTMLElement} root
 * @param {{title: string, heads: object, head: {layer, head}, metric: string, top: object|null, deciles: object|null,
 *   similarity: object|null, headURL: function, textURL: function|null, backURL: string|null, onMetric: function|null}} view
 */
export function renderHeadPage(root, view) {
  const { heads, head, metric, top, deciles, similarity, headURL, textURL } = view;
  const h = heads.heads.find((x) => sameHead(x, head));
  if (!h) return fill(root, el("p", { class: "empty" }, `${headLabel(head)} is not a head of this model.`));
  const metricPick = view.onMetric
    ? el(
        "select",
        { id: "hp-metric", "aria-label": "metric of the examples", onchange: (e) => view.onMetric(e.target.value) },
        heads.metrics.map((m) => el("option", { value: m, selected: m === metric }, metricLabel(m))),
      )
    : el("b", {}, metricLabel(metric));
  const qk = el("div", { id: "hp-qk", class: "plot hp-qk" });
  const bounds = deciles?.bounds;
  fill(
    root,
    el(
      "div",
      { class: "hp-head" },
      view.backURL ? el("a", { class: "btn small", href: view.backURL, id: "hp-back" }, "← All heads") : null,
      el("h1", {}, headLabel(head)),
      el("span", { class: "muted" }, `KV group ${h.kv_group} · ${view.title} · ${heads.n_texts} texts${heads.partial ? " so far" : ""}`),
    ),
    el(
      "div",
      { class: "hp-cols" },
      el(
        "div",
        { class: "hp-col" },
        el("section", { class: "panel" }, el("h2", {}, "Statistics over the texts"), statsTable(heads, head),
          el("p", { class: "muted hint" }, "95% bootstrap CI over texts · rank among all heads by mean · split-half: how well two random halves of the texts agree on the ranking of heads by that metric.")),
        el("section", { class: "panel" }, el("h2", {}, "Nearest heads"), nearestList(similarity, head, headURL)),
        el(
          "section",
          { class: "panel", id: "hp-examples" },
          el("div", { class: "panel-head" }, el("h2", {}, "Texts across the distribution"), metricPick),
          el("p", { class: "muted hint" }, bounds
            ? `One text drawn from each decile of this head's per-text ${metricLabel(metric)} (D9 = the top tenth, ${fmt(bounds[9])}–${fmt(bounds[10])}; D0 = the bottom, ${fmt(bounds[0])}–${fmt(bounds[1])}). The top texts of a head are its least typical.`
            : "One text from each decile of the head's per-text scores."),
          el("div", { id: "hp-deciles" }, exampleList(deciles, head, textURL, "No text counts for this metric on this head.")),
          el("h3", {}, `Top texts by ${metricLabel(metric)}`),
          el("div", { id: "hp-top" }, exampleList(top, head, textURL, "No text counts for this metric on this head.")),
        ),
      ),
      el(
        "div",
        { class: "hp-col" },
        el(
          "section",
          { class: "panel", id: "hp-qk-panel" },
          el("div", { class: "panel-head" }, el("h2", {}, "Queries and keys"),
            el("div", { class: "seg", id: "hp-qk-color", role: "group", "aria-label": "colour the points by" },
              QK_COLORS.map((c) => el("button", { type: "button", "data-color": c, "aria-pressed": "false" }, c)))),
          qk,
          el("p", { class: "muted hint", id: "hp-qk-note" }, "computing the embedding on the model worker…"),
        ),
      ),
    ),
  );
  return qk;
}

function tokenColors(points) {
  const counts = new Map();
  for (const p of points) counts.set(p.token, (counts.get(p.token) || 0) + 1);
  const common = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOKEN_COLORS.length).map(([t]) => t);
  return new Map(common.map((t, i) => [t, TOKEN_COLORS[i]]));
}

/** One Plotly trace per group of points (so the legend names them). */
function traces(points, color) {
  const groups = new Map();
  const add = (name, p, c) => {
    if (!groups.has(name)) groups.set(name, { name, pts: [], color: c });
    groups.get(name).pts.push(p);
  };
  if (color === "token") {
    const colors = tokenColors(points);
    for (const p of points) colors.has(p.token) ? add(visible(p.token), p, colors.get(p.token)) : add("other tokens", p, "#cbd5e1");
  } else for (const p of points) add(p.kind === "query" ? "queries" : "keys", p, KIND_COLOR[p.kind]);
  const ordered = [...groups.values()].sort((a, b) => (a.name === "other tokens") - (b.name === "other tokens"));
  const maxPos = Math.max(1, ...points.map((p) => p.position));
  return ordered.map((g) => ({
    type: "scatter", // SVG: WebGL (scattergl) is missing or fails in headless and locked-down browsers
    mode: "markers",
    name: g.name,
    x: g.pts.map((p) => p.x),
    y: g.pts.map((p) => p.y),
    customdata: g.pts.map((p) => [p.text_index, p.position, p.kind]),
    text: g.pts.map((p) => `${p.kind} · text ${p.text_index} [${p.position}]<br>…${plotlyText(p.before.replace(/\n/g, "↵"))}<b>${plotlyText(visible(p.token))}</b>`),
    hovertemplate: "%{text}<extra></extra>",
    marker: color === "position"
      ? { size: 4, opacity: 0.75, color: g.pts.map((p) => p.position), colorscale: "Viridis", cmin: 0, cmax: maxPos, symbol: g.name === "keys" ? "diamond" : "circle",
          colorbar: g.name === "queries" ? { title: { text: "position", side: "right" }, thickness: 10, len: 0.7 } : undefined }
      : { size: 4, opacity: 0.7, color: g.color },
  }));
}

/**
 * Draw the Q/K embedding: queries and keys of the head at sampled positions, after AttentionViz's normalisation.
 * `onOpen(point)`: a click on a point (null: none, as in the static atlas).
 */
export function drawQK(div, qk, color, onOpen) {
  const Plotly = window.Plotly;
  const layout = {
    height: Math.max(360, Math.min(620, div.clientWidth * 0.95)),
    margin: { l: 40, r: 10, t: 10, b: 36 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    xaxis: { title: { text: `PC 1 (${(100 * qk.explained[0]).toFixed(0)}% of variance)`, font: { size: 11 } }, gridcolor: "#eef0f3", zeroline: false },
    yaxis: { title: { text: `PC 2 (${(100 * qk.explained[1]).toFixed(0)}%)`, font: { size: 11 } }, gridcolor: "#eef0f3", zeroline: false, scaleanchor: "x" },
    legend: { orientation: "h", y: -0.12, font: { size: 10.5 } },
    hovermode: "closest",
  };
  return Plotly.react(div, traces(qk.points, color), layout, PLOT_CONFIG).then(() => {
    div.removeAllListeners?.("plotly_click");
    if (!onOpen) return;
    div.on("plotly_click", (ev) => {
      const [text_index, position, kind] = ev.points?.[0]?.customdata ?? [];
      if (Number.isInteger(text_index)) onOpen({ text_index, position, kind });
    });
  });
}

/** What the plot shows and how it was made, in words. */
export function qkNote(qk) {
  const shift = Math.hypot(...qk.key_shift);
  return `${qk.n_positions.toLocaleString("en-US")} positions sampled from ${qk.positions_seen.toLocaleString("en-US")} in ${qk.n_texts} texts (seeded reservoir, at most ${qk.max_positions.toLocaleString("en-US")}): each gives a query (its head's) and a key (KV head ${qk.kv_head}'s), after RoPE. Queries are scaled by ${fmt(qk.scale)} and keys by 1/${fmt(qk.scale)} so both have the same mean length, then keys are shifted by a vector of length ${fmt(shift)} so the two clouds share a centroid (AttentionViz); neither changes any attention row, since a query's scores all move by the same amount. Projection: PCA. Hover a point for its token in context${qk.clickable ? "; click to open its text" : ""}.`;
}
