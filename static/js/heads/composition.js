// The Composition view: every sender head × every later receiver head (GET /api/composition), for one kind
// (q, k or v), from the weights alone. The colour starts at the random-heads baseline, so only what stands above
// it shows; a click opens the receiver (Alt-click: the sender) in the head view.
import * as api from "../lib/api.js";
import { Latest } from "../lib/latest.js";
import { PLOT_CONFIG } from "../lib/plot.js";
import { el, fill, fmt, headLabel, parseHead } from "../lib/util.js";

const KIND = {
  q: "Q-composition: how much each receiver's query reads what each sender writes",
  k: "K-composition: how much each receiver's key reads what each sender writes",
  v: "V-composition: how much each receiver's value reads what each sender writes",
};
// light grey at the baseline, then yellow → orange → deep red: only scores above chance catch the eye
const SCALE = [
  [0, "#f3f4f6"],
  [0.15, "#fde68a"],
  [0.45, "#f97316"],
  [0.75, "#b91c1c"],
  [1, "#450a0a"],
];

/** Draw `data` (an /api/composition answer); onPick(head, {sender, receiver}) on a click. */
export function drawComposition(div, data, selected, onPick, { maxHeight = 900 } = {}) {
  const labels = data.senders.map(headLabel);
  const n = labels.length;
  const width = Math.max(360, div.clientWidth || 640);
  const side = Math.max(260, Math.min(width - 120, maxHeight - 70));
  let zmax = data.baseline;
  for (const row of data.scores) for (const v of row) if (v !== null && v > zmax) zmax = v;
  // one tick per layer (its first head), thinned to what fits
  const firsts = data.senders.map((h, i) => i).filter((i) => i === 0 || data.senders[i].layer !== data.senders[i - 1].layer);
  const every = Math.ceil(firsts.length / Math.max(4, Math.floor(side / 22)));
  const keep = firsts.filter((_, j) => j % every === 0);
  const axis = (title) => ({
    type: "category",
    tickmode: "array",
    tickvals: keep.map((i) => labels[i]),
    ticktext: keep.map((i) => (n > 40 ? `L${data.senders[i].layer}` : labels[i])),
    tickfont: { size: n > 60 ? 9 : 11 },
    showgrid: false,
    automargin: true,
    constrain: "domain",
    title: { text: title, font: { size: 11, color: "#6b7280" }, standoff: 4 },
  });
  const shapes = [];
  const at = selected ? labels.indexOf(headLabel(selected)) : -1;
  if (at >= 0) {
    // the selected head's row (as a sender) and column (as a receiver)
    const line = { color: "rgba(79, 70, 229, .75)", width: 1 };
    shapes.push({ type: "rect", xref: "x", yref: "y", x0: -0.5, x1: n - 0.5, y0: at - 0.5, y1: at + 0.5, line });
    shapes.push({ type: "rect", xref: "x", yref: "y", x0: at - 0.5, x1: at + 0.5, y0: -0.5, y1: n - 0.5, line });
  }
  const trace = {
    type: "heatmap",
    x: labels,
    y: labels,
    z: data.scores,
    zmin: data.baseline,
    zmax: Math.max(zmax, data.baseline + 1e-6),
    colorscale: SCALE,
    hoverongaps: false,
    colorbar: {
      title: { text: `score (from the random<br>baseline ${fmt(data.baseline, 3)})`, side: "right" },
      thickness: 12,
      len: 0.8,
    },
    hovertemplate: `sender %{y} → receiver %{x}: %{z:.3f}<extra>${data.kind.toUpperCase()} · random heads ${fmt(data.baseline, 3)}</extra>`,
  };
  const layout = {
    height: side + 60,
    margin: { l: 10, r: 10, t: 10, b: 10 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#ffffff",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    xaxis: { ...axis("receiver head"), side: "bottom" },
    yaxis: { ...axis("sender head"), autorange: "reversed", scaleanchor: "x", constraintoward: "top" },
    shapes,
  };
  return window.Plotly.react(div, [trace], layout, PLOT_CONFIG).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => {
      const pt = ev.points?.[0];
      const sender = pt && parseHead(String(pt.y));
      const receiver = pt && parseHead(String(pt.x));
      if (!sender || !receiver || pt.z === null || pt.z === undefined) return;
      onPick(ev.event?.altKey ? sender : receiver, { sender, receiver });
    });
  });
}

export class CompositionView {
  /** {plot, caption}; onPick(head) when a cell is clicked. */
  constructor({ plot, caption }, onPick) {
    Object.assign(this, { plot, caption, onPick });
    this.cache = new Map(); // kind → answer (weights only: the same for every text)
    this.draws = new Latest();
    this.shown = null;
  }

  /** Draw `kind`, marking the selected head's row and column; resolves to true when painted. */
  async draw(kind, selected, maxHeight) {
    const signal = this.draws.next();
    this.plot.classList.add("outdated");
    try {
      if (!this.cache.has(kind)) this.cache.set(kind, await api.composition(kind, { signal }));
    } finally {
      if (this.draws.isCurrent(signal)) this.plot.classList.remove("outdated");
    }
    if (!this.draws.isCurrent(signal)) return false;
    const data = this.cache.get(kind);
    this.shown = data;
    const std = data.baseline_std;
    fill(
      this.caption,
      el("b", {}, KIND[kind]),
      ` (‖W_OV^sender·M_receiver‖ / ‖W_OV‖·‖M‖, from the weights). The colour starts at random heads' mean score `,
      el("b", { id: "comp-baseline" }, fmt(data.baseline, 3)),
      ` (± ${fmt(std, 4)}): at or below it a score means nothing. Blank: the receiver is not later.`,
      data.note ? [" ", data.note] : null,
    );
    if (this.plot.querySelector(".empty")) fill(this.plot);
    await drawComposition(this.plot, data, selected, this.onPick, { maxHeight });
    this.plot.dataset.kind = kind;
    return true;
  }
}
