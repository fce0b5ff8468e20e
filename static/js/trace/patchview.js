// Activation patching, drawn: the layers × heads score map, the heads that matter most (as links into the
// head view), the residual-stream layers × positions map and per-position rows for chosen heads.
//
// A score means different things in the two directions. Denoise patches clean values into the corrupted run:
// 0 = no change, 1 = the clean answer restored. Noise patches corrupted values into the clean run: 1 = no change,
// 0 = the answer destroyed. Everything here measures a head by its effect, the score's distance from "no change"
// signed so that + is "carries the answer" in both directions, and colours blue for + around a white "no change".
import { headsURL } from "../heads/state.js";
import { el, fill, fmt, headLabel } from "../lib/util.js";
import { DIVERGING, NEG, POS, absMax, clear, draw, layerNames, layout, signColor, tokenCats, tokenTicks } from "./plot.js";

/** The score of a site whose patching changes nothing. */
export const noChange = (dir) => (dir === "noise" ? 1 : 0);

/** A score's effect: its distance from no change, + where the site carries the answer (either direction). */
export const effect = (score, dir) => (dir === "noise" ? 1 - score : score);

/** A colour range centred on no change, symmetric, blue for effect > 0 (noise: below 1, so the scale is reversed). */
const diverging = (z, dir) => {
  const mid = noChange(dir);
  const m = absMax(z.flat(Infinity).map((s) => s - mid));
  return { colorscale: DIVERGING, zmin: mid - m, zmax: mid + m, zmid: mid, reversescale: dir === "noise" };
};

const colorbar = (title) => ({ colorbar: { title: { text: title, side: "right" }, thickness: 10, len: 0.9, outlinewidth: 0 } });

/** What the colours mean in this direction: the score of no change, and what each end says. */
const LEGEND = {
  denoise: { title: "recovery", pos: "1 = restores the clean answer alone", zero: "0 = no change", neg: "< 0 = pushes it further away" },
  noise: { title: "answer kept", pos: "0 = destroys the answer alone", zero: "1 = no change", neg: "> 1 = strengthens it" },
};

/** The colour legend under the map (also the note on what 0 and 1 mean). */
export function renderLegend(node, dir) {
  const t = LEGEND[dir];
  const item = (color, text) => el("span", { class: "swatch-item" }, el("span", { class: "swatch", style: { background: color } }), text);
  node.dataset.dir = dir;
  fill(node, item(POS, t.pos), item("#f7f7f7", t.zero), item(NEG, t.neg));
}

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
    ...diverging(res.scores, res.direction),
    ...colorbar(LEGEND[res.direction].title),
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

/** The heads with the largest effect, each a link to the head view with that head switched off. */
export function renderTopHeads(node, res, clean, k = 8) {
  const dir = res.direction;
  const ranked = rank(res.scores, k, dir);
  const m = absMax(ranked.map((r) => effect(r.score, dir)));
  const away = dir === "noise" ? "1 − score" : "the score";
  fill(
    node,
    ranked.map((r) => {
      const e = effect(r.score, dir);
      return el(
        "li",
        { title: `effect ${fmt(e)} (${away})` },
        el("a", { href: headsURL({ text: clean, head: r, mask: [r] }), class: "head-link", title: `open ${headLabel(r)} in the head view, switched off` }, headLabel(r)),
        el("span", { class: "bar" }, el("span", { style: { width: `${(100 * Math.abs(e)) / m}%`, background: signColor(e) } })),
        el("span", { class: "num" }, fmt(r.score)),
      );
    }),
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
    ...diverging(res.residual_scores, res.direction),
    ...colorbar(LEGEND[res.direction].title),
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
    ...diverging(z, res.direction),
    ...colorbar(""),
  };
  const lay = layout(Math.max(150, z.length * 26 + 100), {
    xaxis: { ...tokenTicks(tokens, width - 90), fixedrange: true },
    yaxis: { type: "category", autorange: "reversed", fixedrange: true },
    margin: { l: 56, r: 8, t: 6, b: 8 },
  });
  return draw(div, [trace], lay);
}

/** The k heads with the largest |effect| in direction `dir`, as {layer, head, score}. */
export const rank = (scores, k, dir) =>
  scores
    .flatMap((row, layer) => row.map((score, head) => ({ layer, head, score })))
    .sort((a, b) => Math.abs(effect(b.score, dir)) - Math.abs(effect(a.score, dir)))
    .slice(0, k);
