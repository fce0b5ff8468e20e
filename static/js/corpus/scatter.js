// Heads as points by two dataset-level metrics, with 95% CI error bars both ways; clicking a point selects that head.
import { PLOT_CONFIG } from "../lib/plot.js";
import { headLabel, parseHead, sameHead } from "../lib/util.js";
import { describeStat, metricLabel } from "./grid.js";

const LAYER_SCALE = "Viridis";

/** Draw heads at (mean of x, mean of y); heads without a value for either metric are left out. */
export function drawScatter(div, data, x, y, selected, onPick) {
  const Plotly = window.Plotly;
  const ok = (s) => s && s.n && Number.isFinite(s.mean);
  const pts = data.heads.filter((h) => ok(h[x]) && ok(h[y]));
  const nL = 1 + Math.max(0, ...data.heads.map((h) => h.layer));
  const bar = (m) => ({
    type: "data",
    symmetric: false,
    array: pts.map((h) => h[m].ci_high - h[m].mean),
    arrayminus: pts.map((h) => h[m].mean - h[m].ci_low),
    thickness: 1,
    width: 0,
    color: "rgba(100, 116, 139, 0.45)",
  });
  const heads = {
    type: "scatter",
    mode: "markers",
    x: pts.map((h) => h[x].mean),
    y: pts.map((h) => h[y].mean),
    customdata: pts.map(headLabel),
    text: pts.map((h) => `${describeStat(h, x)}<br>${describeStat(h, y).replace(/^\S+ · /, "")}`),
    hovertemplate: `%{text}<extra></extra>`,
    error_x: bar(x),
    error_y: bar(y),
    marker: {
      size: 8,
      color: pts.map((h) => h.layer),
      colorscale: LAYER_SCALE,
      cmin: 0,
      cmax: Math.max(1, nL - 1),
      line: { width: 0.5, color: "#fff" },
      colorbar: { title: { text: "layer", side: "right" }, thickness: 10, len: 0.7, tickformat: "d", dtick: Math.max(1, Math.ceil(nL / 6)) },
    },
  };
  const sel = pts.filter((h) => sameHead(h, selected));
  const mark = {
    type: "scatter",
    mode: "markers+text",
    x: sel.map((h) => h[x].mean),
    y: sel.map((h) => h[y].mean),
    customdata: sel.map(headLabel),
    text: sel.map(headLabel),
    textposition: "top center",
    textfont: { color: "#4f46e5", size: 12 },
    hoverinfo: "skip",
    marker: { size: 16, color: "rgba(0,0,0,0)", line: { width: 2.5, color: "#4f46e5" } },
  };
  const axis = (m) => ({ title: { text: `${metricLabel(m)} (mean, 95% CI)`, font: { size: 11 } }, gridcolor: "#eef0f3", zeroline: false });
  const layout = {
    height: Math.max(300, Math.min(460, div.clientWidth * 0.8)),
    margin: { l: 56, r: 10, t: 10, b: 44 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    xaxis: axis(x),
    yaxis: axis(y),
    showlegend: false,
    hovermode: "closest",
  };
  return Plotly.react(div, [heads, mark], layout, PLOT_CONFIG).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => {
      const h = parseHead(String(ev.points?.[0]?.customdata ?? ""));
      if (h) onPick(h);
    });
  });
}
