// The logit lens, drawn: the target's probability and rank after each block, the top tokens per layer,
// and on demand the layers × positions top-1 grid.
import { BLUES, el, fill, fmt, percent, plotlyText, rgb, visible } from "../lib/util.js";
import { draw, layerNames, layout, tokenCats, tokenTicks } from "./plot.js";

const PROB = "#2563eb";
const TABLE_K = 5; // top tokens per row of a table
const RANK = "#d97706";

/** A log axis for ranks, 1 on top, ticked at 1-2-5 steps up to the worst rank shown. */
function rankAxis(layers) {
  const worst = Math.max(2, ...layers.map((r) => r.target_rank));
  const ticks = [];
  for (let decade = 1; decade <= worst * 10; decade *= 10) {
    for (const m of [1, 2, 5]) if (decade * m <= worst * 2) ticks.push(decade * m);
  }
  return {
    type: "log",
    overlaying: "y",
    side: "right",
    range: [Math.log10(worst * 1.3), -0.05],
    tickvals: ticks,
    ticktext: ticks.map(String),
    fixedrange: true,
    showgrid: false,
  };
}

/** The readings in depth order: the embeddings (before block 0, drawn at x = −1) when given, then every block. */
function readings(res) {
  const blocks = res.layers.map((r) => ({ ...r, x: r.layer, label: `L${r.layer}` }));
  return res.embed ? [{ ...res.embed, x: -1, label: "emb" }, ...blocks] : blocks;
}

/**
 * Target probability (left axis) and rank (right axis, log, rank 1 on top) per layer, from the embeddings on.
 * Clicking a block's reading calls onLayer(layer, mouseEvent).
 */
export function drawLens(div, res, height = 240, onLayer = null) {
  const rows = readings(res);
  const x = rows.map((r) => r.x);
  const target = plotlyText(visible(res.target.token));
  const hover = rows.map((r) => [
    r.label,
    fmt(r.target_logit, 2),
    r.top_k.map((t) => `${plotlyText(visible(t.token))} ${percent(t.prob)}`).join("<br>"),
  ]);
  const prob = {
    type: "scatter",
    mode: "lines+markers",
    name: `p(${target})`,
    x,
    y: rows.map((r) => r.target_prob),
    line: { color: PROB, width: 2 },
    marker: { size: 5 },
    customdata: hover,
    hovertemplate: `%{customdata[0]}: p(${target}) = %{y:.3f}, logit %{customdata[1]}<br><b>top</b><br>%{customdata[2]}<extra></extra>`,
  };
  const rank = {
    type: "scatter",
    mode: "lines",
    name: `rank of ${target}`,
    x,
    y: rows.map((r) => r.target_rank),
    customdata: hover,
    yaxis: "y2",
    line: { color: RANK, width: 1.5, dash: "dot" },
    hovertemplate: `%{customdata[0]}: rank %{y}<extra></extra>`,
  };
  const step = res.layers.length > 16 ? 4 : 1;
  // every step-th block, and "emb" in place of block 0 when the two would touch
  const ticks = x.filter((v) => v < 0 || (v % step === 0 && !(v === 0 && step > 1 && res.embed)));
  const lay = layout(height, {
    xaxis: {
      title: { text: "layer (emb: the embeddings, before block 0)", standoff: 2 },
      tickvals: ticks,
      ticktext: ticks.map((v) => (v < 0 ? "emb" : String(v))),
      fixedrange: true,
      gridcolor: "#eef0f4",
    },
    yaxis: { range: [0, 1.02], title: { text: "probability", font: { color: PROB } }, fixedrange: true, gridcolor: "#eef0f4" },
    yaxis2: { ...rankAxis(rows), title: { text: "rank", font: { color: RANK } } },
    legend: { orientation: "h", x: 0, y: 1.14, font: { size: 11 } },
    margin: { l: 48, r: 44, t: 22, b: 36 },
    hovermode: "x",
  });
  return draw(div, [prob, rank], lay).then(() => onLayerClick(div, onLayer, (point) => point.x));
}

/** Route a plot's clicks to onLayer(layer, mouseEvent); `layerOf(point)` reads the layer (< 0: the embeddings). */
function onLayerClick(div, onLayer, layerOf) {
  div.removeAllListeners?.("plotly_click");
  if (!onLayer) return;
  div.on("plotly_click", (ev) => {
    const layer = layerOf(ev.points[0]);
    if (layer >= 0) onLayer(layer, ev.event);
  });
}

/**
 * One row per layer, last first, then the embeddings: its top tokens with probabilities, the target's rank and
 * logit. With `links`, a block's row carries data-layer and its label is a link (its href set by the page).
 */
export function renderLensTable(node, res, links = false) {
  const targetId = res.target.id;
  const logit = `the raw logit of ${visible(res.target.token)} read from this stream`;
  fill(
    node,
    el(
      "thead",
      {},
      el("tr", {}, el("th", {}, "layer"), el("th", {}, "rank"), el("th", { title: logit }, "logit"), el("th", {}, "top tokens")),
    ),
    el(
      "tbody",
      {},
      readings(res).reverse().map((r) =>
        el(
          "tr",
          r.x < 0
            ? { class: "embed", title: "the embeddings, before block 0" }
            : links
              ? { dataset: { layer: r.layer }, title: `open the head view with layer ${r.layer} switched off (Shift-click: patch its heads per position)` }
              : {},
          el("td", { class: "num" }, links && r.x >= 0 ? el("a", { class: "head-link", dataset: { layer: r.layer } }, r.label) : r.label),
          el("td", { class: "num" }, String(r.target_rank)),
          el("td", { class: "num" }, fmt(r.target_logit, 2)),
          el(
            "td",
            {},
            r.top_k.slice(0, TABLE_K).map((t) =>
              el("span", { class: t.id === targetId ? "lens-tok target" : "lens-tok", title: `${percent(t.prob)}` }, visible(t.token), el("small", {}, percent(t.prob))),
            ),
          ),
        ),
      ),
    ),
  );
}

const CELL_FONT = 9; // px, monospace: a character is 0.6 of that wide
const CELL_CHAR = CELL_FONT * 0.61;
const GRID_MARGIN = { l: 40, r: 8, t: 6, b: 8 };
const COLORBAR = 72; // px the colour bar (with its ticks and title) takes beside the cells

/** A cell's label cut to `n` characters (the last one an ellipsis), so it never runs into the next cell. */
const fit = (s, n) => (s.length <= n ? s : `${s.slice(0, Math.max(0, n - 1))}…`);

const drawnGrids = new WeakMap(); // div → {res, width, onLayer}: what each grid was drawn from, to redraw at a new width

/** Redraw a grid whose width changed: its labels are cut (and its token ticks thinned) to the width drawn at. */
const resized = new ResizeObserver((entries) => {
  for (const { target } of entries) {
    const drawn = drawnGrids.get(target);
    if (drawn && target.isConnected && Math.abs(target.clientWidth - drawn.width) > 4) drawLensGrid(target, drawn.res, drawn.onLayer);
  }
});

/**
 * Layers × positions: the top-1 token after each block at each position, shaded by its probability. Clicking a
 * cell calls onLayer(its layer, mouseEvent).
 */
export function drawLensGrid(div, res, onLayer = null) {
  if (!drawnGrids.has(div)) resized.observe(div);
  drawnGrids.set(div, { res, width: div.clientWidth, onLayer });
  const g = res.grid;
  const tokens = res.tokens;
  const width = div.clientWidth || 400;
  const nLayers = g.top_ids.length;
  const cell = (width - GRID_MARGIN.l - GRID_MARGIN.r - COLORBAR) / tokens.length;
  const chars = Math.floor((cell - 3) / CELL_CHAR); // what fits in a cell, leaving a pixel or so each side
  const shown = g.top_tokens.map((row) => row.map((t) => plotlyText(fit(visible(t), chars))));
  const trace = {
    type: "heatmap",
    z: g.top_probs,
    x: tokenCats(tokens),
    y: layerNames(nLayers),
    text: shown,
    customdata: g.top_tokens.map((row) => row.map((t) => plotlyText(visible(t)))),
    texttemplate: chars >= 3 ? "%{text}" : "", // narrower cells: no labels (the hover still names each token)
    textfont: { size: CELL_FONT, family: "'DejaVu Sans Mono', ui-monospace, monospace" },
    hovertemplate: "%{y} · %{x}: top-1 %{customdata} (%{z:.3f})<extra></extra>",
    colorscale: BLUES.map((c, i) => [i / (BLUES.length - 1), rgb(c)]),
    zmin: 0,
    zmax: 1,
    xgap: 1,
    ygap: 1,
    colorbar: { title: { text: "p(top-1)", side: "right" }, thickness: 10, outlinewidth: 0 },
  };
  const lay = layout(Math.min(760, Math.max(260, nLayers * 18 + 110)), {
    width, // the width the labels were cut for (a resize draws the grid again)
    xaxis: { ...tokenTicks(tokens, width - 90), fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: GRID_MARGIN,
  });
  return draw(div, [trace], lay).then(() => onLayerClick(div, onLayer, (point) => point.pointIndex[0]));
}
