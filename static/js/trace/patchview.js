// Activation patching, drawn: the layers × heads score map, the heads that matter most (as links into the
// head view), the residual-stream layers × positions map and per-position rows for chosen heads.
import { headsURL } from "../heads/state.js";
import { el, fill, fmt, headLabel } from "../lib/util.js";
import { DIVERGING, absMax, clear, draw, layerNames, layout, signColor, tokenCats, tokenTicks } from "./plot.js";

const diverging = (z) => {
  const m = absMax(z);
  return { colorscale: DIVERGING, zmin: -m, zmax: m, zmid: 0 };
};

const colorbar = (title) => ({ colorbar: { title: { text: title, side: "right" }, thickness: 10, len: 0.9, outlinewidth: 0 } });

/** The layers × heads map. Clicking a cell calls onHead({layer, head}, mouseEvent). */
export function drawPatch(div, res, onHead) {
  const nLayers = res.scores.length;
  const nHeads = res.scores[0].length;
  const labels = res.scores.map((row, l) => row.map((_, h) => `L${l}H${h}`));
  const height = Math.min(620, Math.max(240, nLayers * 17 + 70));
  const what = res.direction === "denoise" ? "clean → corrupted" : "corrupted → clean";
  const trace = {
    type: "heatmap",
    z: res.scores,
    x: Array.from({ length: nHeads }, (_, h) => `H${h}`),
    y: layerNames(nLayers),
    text: labels,
    hovertemplate: `%{text}: %{z:.3f}<extra>${what}</extra>`,
    xgap: 1,
    ygap: 1,
    ...diverging(res.scores),
    ...colorbar("recovery"),
  };
  const lay = layout(height, {
    xaxis: { type: "category", side: "top", fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: { l: 40, r: 8, t: 26, b: 8 },
  });
  return draw(div, [trace], lay).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => {
      const [layer, head] = ev.points[0].pointIndex;
      onHead({ layer, head }, ev.event);
    });
    div.dataset.cells = String(nLayers * nHeads);
  });
}

/** The heads with the largest |score|, each a link to the head view with that head switched off. */
export function renderTopHeads(node, res, clean, k = 8) {
  const ranked = rank(res.scores, k);
  const m = absMax(ranked.map((r) => r.score));
  fill(
    node,
    ranked.map((r) =>
      el(
        "li",
        {},
        el("a", { href: headsURL({ text: clean, head: r, mask: [r] }), class: "head-link", title: `open ${headLabel(r)} in the head view, switched off` }, headLabel(r)),
        el("span", { class: "bar" }, el("span", { style: { width: `${(100 * Math.abs(r.score)) / m}%`, background: signColor(r.score) } })),
        el("span", { class: "num" }, fmt(r.score)),
      ),
    ),
  );
}

/** The residual stream entering each block, patched per position: layers × positions. */
export function drawResidual(div, res) {
  if (!res.residual_scores) return clear(div), Promise.resolve();
  const tokens = res.tokens_clean;
  const nLayers = res.residual_scores.length;
  const width = div.clientWidth || 400;
  const trace = {
    type: "heatmap",
    z: res.residual_scores,
    x: tokenCats(tokens),
    y: layerNames(nLayers),
    hovertemplate: "%{y} · %{x}: %{z:.3f}<extra>residual</extra>",
    ...diverging(res.residual_scores),
    ...colorbar("recovery"),
  };
  const lay = layout(Math.min(520, Math.max(220, nLayers * 12 + 110)), {
    xaxis: { ...tokenTicks(tokens, width - 90), fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: { l: 40, r: 8, t: 6, b: 8 },
  });
  return draw(div, [trace], lay);
}

/** Per-position patching of chosen heads: one row per head, one column per position. */
export function drawRows(div, res) {
  if (!res.position_scores?.length) return clear(div), Promise.resolve();
  const tokens = res.tokens_clean;
  const z = res.position_scores.map((r) => r.scores);
  const width = div.clientWidth || 400;
  const trace = {
    type: "heatmap",
    z,
    x: tokenCats(tokens),
    y: res.position_scores.map(headLabel),
    hovertemplate: "%{y} · %{x}: %{z:.3f}<extra>per position</extra>",
    xgap: 1,
    ygap: 1,
    ...diverging(z),
    ...colorbar(""),
  };
  const lay = layout(Math.max(150, z.length * 26 + 100), {
    xaxis: { ...tokenTicks(tokens, width - 90), fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: { l: 56, r: 8, t: 6, b: 8 },
  });
  return draw(div, [trace], lay);
}

/** The k heads with the largest |score|, as {layer, head, score}. */
export const rank = (scores, k) =>
  scores
    .flatMap((row, layer) => row.map((score, head) => ({ layer, head, score })))
    .sort((a, b) => Math.abs(b.score) - Math.abs(a.score))
    .slice(0, k);
