// Plot helpers shared by the Trace page's views: one diverging scale, sign colours, token axes, Plotly config.
import { PLOT_CONFIG } from "../lib/plot.js";
import { plotlyText, visible } from "../lib/util.js";

export const POS = "#2166ac"; // helps the answer / restores the clean run
export const NEG = "#b2182b"; // hurts it
export const signColor = (x) => (x >= 0 ? POS : NEG);

/** Red (negative) → white (0) → blue (positive); used with a symmetric range so 0 sits in the middle. */
export const DIVERGING = [
  [0, NEG],
  [0.25, "#ef8a62"],
  [0.5, "#f7f7f7"],
  [0.75, "#67a9cf"],
  [1, POS],
];

export const CONFIG = {
  ...PLOT_CONFIG,
  modeBarButtonsToRemove: [...PLOT_CONFIG.modeBarButtonsToRemove, "zoomIn2d", "zoomOut2d"],
};

const FONT = { family: "Inter, system-ui, 'DejaVu Sans', sans-serif", size: 11, color: "#1f2937" };

export function layout(height, extra = {}) {
  return {
    height,
    font: FONT,
    margin: { l: 52, r: 12, t: 8, b: 36 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#fff",
    hoverlabel: { font: { family: "ui-monospace, 'DejaVu Sans Mono', monospace", size: 12 } },
    ...extra,
  };
}

/** The largest |value| of a (nested) array, at least `floor`, for a range symmetric around 0. */
export function absMax(values, floor = 1e-9) {
  let m = floor;
  for (const v of values.flat(Infinity)) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m;
}

/** Unique category names per position ("·John [10]") so repeated tokens keep their own column. */
export const tokenCats = (tokens) => tokens.map((t, i) => `${plotlyText(visible(t))} [${i}]`);

const short = (s, n = 10) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** Tick labels for a token axis, thinned to fit `px` pixels. */
export function tokenTicks(tokens, px) {
  const cats = tokenCats(tokens);
  const step = Math.ceil(tokens.length / Math.max(4, Math.floor(px / 14)));
  const tickvals = [];
  const ticktext = [];
  for (let i = 0; i < tokens.length; i += step) {
    tickvals.push(cats[i]);
    ticktext.push(plotlyText(short(visible(tokens[i]))));
  }
  return { type: "category", tickmode: "array", tickvals, ticktext, tickangle: -45, automargin: true };
}

export const layerNames = (n) => Array.from({ length: n }, (_, l) => `L${l}`);

/** Draw (or redraw in place) a Plotly figure. */
export const draw = (div, data, lay) => window.Plotly.react(div, data, lay, CONFIG);

export function clear(div, message) {
  window.Plotly?.purge(div);
  div.replaceChildren();
  if (message) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = message;
    div.append(p);
  }
}
