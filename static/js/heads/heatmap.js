// The head view: one head's map, two heads side by side, or a head before / after ablation with the difference.
import * as api from "../lib/api.js";
import { BoundedCache } from "../lib/cache.js";
import { Latest } from "../lib/latest.js";
import { PLOT_CONFIG } from "../lib/plot.js";
import { BLUES, el, fill, fmt, headLabel, plotlyText, rgb, sameHead, visible } from "../lib/util.js";

const ATTN_SCALE = BLUES.map((c, i) => [i / (BLUES.length - 1), rgb(c)]);
// Difference maps: blue where the ablation took attention away, red where it added some.
const DIFF_SCALE = [
  [0, "#2166ac"],
  [0.25, "#92c5de"],
  [0.5, "#f7f7f7"],
  [0.75, "#f4a582"],
  [1, "#b2182b"],
];
const LOG_FLOOR = -6;
const COLORBAR_PX = 78; // a vertical colour bar beside a single map
const COLORBAR_TOP_PX = 44; // side-by-side maps: horizontal colour bars over them instead
const MIN_PANEL_PX = 150;
const ROW_EXTRA_PX = 120;
const MAP_BUDGET = 8_000_000; // weights kept per text (≈ two 2,048-token maps); older maps are fetched again

const short = (s, n = 14) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** Unique category names ("·cat [12]"), so repeated tokens keep their own row and column. */
export function categories(tokens) {
  return tokens.map((t, i) => `${plotlyText(visible(t))} [${i}]`);
}

/** Tick labels thinned to what fits in `px` pixels: every token when short, every k-th when long. */
export function ticks(labels, cats, px) {
  const fits = Math.max(4, Math.floor(px / 11));
  const step = Math.ceil(labels.length / fits);
  const tickvals = [];
  const ticktext = [];
  for (let i = 0; i < labels.length; i += step) {
    tickvals.push(cats[i]);
    ticktext.push(plotlyText(short(labels[i])));
  }
  const size = labels.length <= 40 ? 11 : labels.length <= 120 ? 9 : 8;
  return { tickmode: "array", tickvals, ticktext, tickfont: { size } };
}

function causal(weights, f) {
  // above the diagonal nothing is visible: null draws it as background and skips its hover
  return weights.map((row, q) => row.map((w, k) => (k > q ? null : f(w))));
}

const log10 = (w) => (w > 0 ? Math.max(LOG_FLOOR, Math.log10(w)) : LOG_FLOOR);

/**
 * Draw maps side by side in `div`.
 * panels: [{title, weights (T×T), diff: bool}] — diff panels share a diverging scale centred on 0.
 */
export function drawMaps(div, tokens, panels, { scale = "linear", maxHeight = 900 } = {}) {
  const Plotly = window.Plotly;
  const T = tokens.length;
  const cats = categories(tokens);
  const labels = tokens.map(visible);
  const hasDiff = panels.some((p) => p.diff);
  const hasAttn = panels.some((p) => !p.diff);
  const width = Math.max(300, div.clientWidth || 640);
  const n = panels.length;
  const barsOnTop = n > 1; // side by side: the width goes to the maps, the colour bars sit over them
  const reserve = barsOnTop ? 0 : ((Number(hasAttn) + Number(hasDiff)) * COLORBAR_PX) / width;
  // as many panels per row as stay readable (≥ MIN_PANEL_PX); the rest wrap to further rows
  const cols = Math.max(1, Math.min(n, Math.floor((width * (1 - reserve)) / MIN_PANEL_PX)));
  const rows = Math.ceil(n / cols);
  const span = (1 - reserve) / cols;
  const panelPx = span * width;
  const topPx = barsOnTop ? COLORBAR_TOP_PX : 0;
  const height =
    topPx +
    (rows === 1 ? Math.min(maxHeight, Math.round(panelPx * 0.85 + 150)) : Math.round(rows * (panelPx * 0.95 + ROW_EXTRA_PX)));
  const rowH = 1 / rows;
  const below = ROW_EXTRA_PX / height; // room under each row for the key-token labels
  const above = 26 / height; // room over each row for the panel title
  const isLog = scale === "log";

  let cmax = 0;
  let dmax = 0;
  for (const p of panels) {
    for (const row of p.weights) {
      for (const w of row) {
        if (p.diff) dmax = Math.max(dmax, Math.abs(w));
        else cmax = Math.max(cmax, w);
      }
    }
  }
  const tickX = ticks(labels, cats, panelPx * 0.8);
  const tickY = ticks(labels, cats, Math.min(panelPx, maxHeight) * 0.8);
  // a colour bar: vertical at the right of a single map, horizontal over the first map (weights) or the last (Δ)
  const bar = (title, which) =>
    barsOnTop
      ? {
          title: { text: title, side: "top" },
          orientation: "h",
          thickness: 9,
          len: Math.min(0.45, span * 0.9),
          lenmode: "fraction",
          x: which === "diff" ? (cols - 0.5) * span : 0.5 * span,
          xanchor: "center",
          yref: "container", // in the figure's top strip, over the panel titles
          y: 1,
          yanchor: "top",
          ypad: 6,
          tickfont: { size: 9 },
        }
      : { title: { text: title, side: "right" }, thickness: 12, len: 0.8, xanchor: "left" };
  const layout = {
    height,
    margin: { l: 10, r: 10, t: 34 + topPx, b: 10 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#eef0f3",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    hoverlabel: { font: { family: "ui-monospace, SFMono-Regular, Menlo, monospace", size: 12 } },
    annotations: [],
    coloraxis: {
      colorscale: ATTN_SCALE,
      cmin: isLog ? LOG_FLOOR : 0,
      cmax: isLog ? Math.max(LOG_FLOOR + 1, Math.log10(cmax || 1)) : cmax || 1,
      colorbar: {
        ...bar(isLog ? "weight (log)" : "weight", "attn"),
        ...(barsOnTop ? {} : { x: 1 - reserve + 0.01 }),
        ...(isLog ? { tickvals: [-6, -5, -4, -3, -2, -1, 0], ticktext: ["1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1", "1"] } : {}),
      },
    },
  };
  if (hasDiff) {
    const m = dmax || 1e-6;
    layout.coloraxis2 = {
      colorscale: DIFF_SCALE,
      cmin: -m,
      cmax: m,
      colorbar: {
        ...bar("Δ weight", "diff"),
        ...(barsOnTop ? {} : { x: 1 - reserve + 0.01 + (hasAttn ? COLORBAR_PX / width : 0) }),
      },
    };
  }
  const traces = panels.map((p, i) => {
    const suffix = i === 0 ? "" : String(i + 1);
    const gap = cols > 1 ? 0.035 : 0;
    const [r, c] = [Math.floor(i / cols), i % cols];
    const top = 1 - r * rowH - (rows > 1 ? above : 0);
    const bottom = rows > 1 ? 1 - (r + 1) * rowH + below : 0;
    layout[`xaxis${suffix}`] = {
      type: "category",
      domain: [c * span + gap, (c + 1) * span - gap],
      anchor: `y${suffix}`,
      ...tickX,
      tickangle: T > 10 ? -90 : "auto",
      automargin: true,
      showgrid: false,
      title: { text: "key token", standoff: 6, font: { size: 11, color: "#6b7280" } },
      constrain: "domain",
    };
    layout[`yaxis${suffix}`] = {
      type: "category",
      anchor: `x${suffix}`,
      domain: [bottom, top],
      constraintoward: "top",
      autorange: "reversed",
      ...tickY,
      showticklabels: c === 0, // the same tokens on every row: label them once, left of the first map
      automargin: true,
      showgrid: false,
      scaleanchor: `x${suffix}`,
      constrain: "domain",
      title: c === 0 ? { text: "query token", standoff: 6, font: { size: 11, color: "#6b7280" } } : undefined,
    };
    layout.annotations.push({
      text: `<b>${plotlyText(p.title)}</b>`,
      xref: "paper",
      yref: "paper",
      x: (c + 0.5) * span,
      y: top,
      yanchor: "bottom",
      showarrow: false,
      font: { size: 13 },
    });
    const trace = {
      type: "heatmap",
      x: cats,
      y: cats,
      xaxis: `x${suffix}`,
      yaxis: `y${suffix}`,
      coloraxis: p.diff ? "coloraxis2" : "coloraxis",
      hoverongaps: false,
      xgap: T <= 48 ? 0.5 : 0,
      ygap: T <= 48 ? 0.5 : 0,
      name: p.title,
    };
    const extra = `<extra>${plotlyText(p.title)}</extra>`;
    if (p.diff) {
      trace.z = causal(p.weights, (w) => w);
      trace.hovertemplate = `%{y} → %{x}: Δ %{z:+.4f}${extra}`;
    } else if (isLog) {
      trace.z = causal(p.weights, log10);
      trace.customdata = p.weights;
      trace.hovertemplate = `%{y} → %{x}: %{customdata:.4g}${extra}`;
    } else {
      trace.z = causal(p.weights, (w) => w);
      trace.hovertemplate = `%{y} → %{x}: %{z:.4f}${extra}`;
    }
    return trace;
  });
  // Plotly.react cannot carry its axis constraints from one panel layout to another: start afresh then
  const shape = `${n}x${cols}`;
  if (div.dataset.shape !== shape) Plotly.purge(div);
  div.dataset.shape = shape;
  return Plotly.react(div, traces, layout, PLOT_CONFIG);
}

/** Fetches (and caches, per text) the maps the state asks for and draws them with a caption and a note. */
export class HeadView {
  constructor({ plot, info, note }) {
    Object.assign(this, { plot, info, noteNode: note });
    this.maps = new BoundedCache(MAP_BUDGET, (w) => w.length * w.length); // head label → weights, this text
    this.roles = [];
    this.draws = new Latest(); // a newer draw aborts this one's fetch and discards its answer
    this.shown = null; // what is on screen, for the JSON export
  }

  setModel(model) {
    this.model = model;
  }

  /** [{name, label, description}] from /api/roles: what the caption lists under each head. */
  setRoles(roles) {
    this.roles = roles;
  }

  /** A new text: forget its maps. */
  setRun(ov) {
    this.draws.cancel();
    this.ov = ov;
    this.extra = {};
    this.maps.clear();
  }

  async #fetch(heads, signal) {
    const missing = heads.filter((h) => !this.maps.has(headLabel(h)));
    if (missing.length) {
      const res = await api.attention(this.ov.text, missing, { signal });
      const fetched = new Map(res.maps.map((m) => [headLabel(m), m.weights]));
      for (const [label, weights] of fetched) this.maps.set(label, weights);
      return heads.map((h) => fetched.get(headLabel(h)) ?? this.maps.get(headLabel(h)));
    }
    return heads.map((h) => this.maps.get(headLabel(h)));
  }

  #note(text) {
    this.noteNode.hidden = !text;
    this.noteNode.textContent = text || "";
  }

  /** The head's label, KV head and every role score known for this text (each names what it measures). */
  #describe(h) {
    const st = { ...this.ov.stats, ...this.extra };
    const parts = [el("span", {}, `KV${this.model?.kv_groups.findIndex((g) => g.includes(h.head)) ?? "?"}`)];
    for (const role of this.roles) {
      if (role.name === "entropy_ratio" || !st[role.name]) continue;
      parts.push(el("span", { title: role.description }, `${role.label} ${fmt(st[role.name][h.layer][h.head], 2)}`));
    }
    return [el("b", {}, headLabel(h)), " ", parts.map((p, i) => (i ? [" · ", p] : p))];
  }

  /** Scores fetched after the overview (e.g. induction on this text), shown in the caption too. */
  setExtraStats(stats) {
    this.extra = stats;
  }

  /**
   * Draw what the state asks for. `ablated` is the latest /api/ablate result (its maps hold the
   * selected head under the ablation). Resolves to true when something new was painted.
   */
  async draw({ head: A, cmp, mode, mask, scale }, ablated, maxHeight) {
    const signal = this.draws.next();
    if (!this.ov) return false;
    if (!A) {
      fill(this.info);
      this.#note("");
      window.Plotly.purge(this.plot);
      fill(this.plot, el("p", { class: "empty" }, "Click a head in the grid to see its attention map."));
      return false;
    }
    const B = mode === "compare" && cmp && !sameHead(cmp, A) ? cmp : null;
    const [wa, wb] = await this.#fetch(B ? [A, B] : [A], signal);
    if (!this.draws.isCurrent(signal)) return false; // a newer draw started meanwhile
    let panels = [{ title: headLabel(A), weights: wa }];
    let note = "";
    if (B) panels.push({ title: headLabel(B), weights: wb });
    else if (mode === "compare") note = `Alt-click a head in the grid (or type one above) to compare it with ${headLabel(A)}.`;
    if (mode === "diff") {
      const after = ablated?.maps?.find((m) => sameHead(m, A));
      if (!mask.length) note = "Switch heads off (shift-click in the grid) to see how this map changes.";
      else if (!after) return false; // the ablated run is on its way; its arrival redraws
      else {
        const delta = after.weights.map((row, q) => row.map((w, k) => w - wa[q][k]));
        panels = [
          { title: `${headLabel(A)} before`, weights: wa },
          { title: `after (${mask.length} off)`, weights: after.weights },
          { title: "after − before", weights: delta, diff: true },
        ];
        if (mask.every((m) => m.layer >= A.layer)) {
          note = `Every head switched off sits in layer ${A.layer} or later, so it cannot change this map.`;
        }
      }
    }
    fill(this.info, this.#describe(A), B ? [el("br"), this.#describe(B)] : null);
    this.#note(note);
    if (this.plot.querySelector(".empty")) fill(this.plot);
    this.shown = { tokens: this.ov.tokens, scale, panels };
    await drawMaps(this.plot, this.ov.tokens, panels, { scale, maxHeight });
    this.plot.dataset.heads = panels.map((p) => p.title).join(",");
    return true;
  }
}
