// "Why here?": a clicked cell of a head's map explained by POST /api/qk_attribution. The pre-softmax score
// q·k·scale is a sum of query-node × key-node terms (what each upstream node wrote at the query, read against what
// each wrote at the key); the panel names the largest terms in words and draws every node's sum on each side.
import * as api from "../lib/api.js";
import { Latest } from "../lib/latest.js";
import { PLOT_CONFIG } from "../lib/plot.js";
import { el, fill, fmt, headLabel, parseHead, sameHead, signed, visible } from "../lib/util.js";

const TERMS = 8; // terms named in words
const BARS = 12; // nodes per side in the bar chart
const POSITIVE = "#4f46e5";
const NEGATIVE = "#dc2626";
const NODES_KEY = "emb: the token embeddings · L3H1: what head 1 of layer 3 wrote · M3: layer 3's MLP · bias: every bias";

/** The (query, key) positions of a heatmap point, from its category names ("tok [12]"), or null. */
export function cellOf(point) {
  const pos = (s) => Number(/\[(\d+)\]$/.exec(String(s))?.[1] ?? NaN);
  const q = pos(point?.y);
  const k = pos(point?.x);
  return Number.isInteger(q) && Number.isInteger(k) && k <= q ? { q, k } : null;
}

const token = (tokens, i) => `“${visible(tokens[i] ?? "")}” [${i}]`;

/** The node's name as the API gives it; a head's is a button that selects that head. */
function nodeName(name, onHead) {
  const h = parseHead(name);
  if (!h) return el("span", { class: "node" }, name);
  return el("button", { type: "button", class: "node head-link", title: `inspect ${name}`, onclick: () => onHead(h) }, name);
}

/** The largest `n` nodes of one side by |value|, largest first. */
const largest = (sums, n) => [...sums].sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, n);

/** Both sides' largest node sums as horizontal bars, side by side; a head's bar selects that head. */
function drawSums(div, res, onHead) {
  const side = (sums, axis) => {
    const top = largest(sums, BARS).reverse(); // largest at the top
    return {
      type: "bar",
      orientation: "h",
      x: top.map((s) => s.value),
      y: top.map((s) => s.node),
      xaxis: `x${axis}`,
      yaxis: `y${axis}`,
      marker: { color: top.map((s) => (s.value >= 0 ? POSITIVE : NEGATIVE)) },
      hovertemplate: `%{y}: %{x:+.3f}<extra>${axis === "" ? "query" : "key"} side</extra>`,
    };
  };
  const axes = (domain, title) => ({
    domain,
    zeroline: true,
    zerolinecolor: "#9ca3af",
    gridcolor: "#eef0f3",
    title: { text: title, font: { size: 11, color: "#6b7280" } },
  });
  const layout = {
    height: 60 + 19 * Math.min(BARS, res.query_sums.length),
    margin: { l: 10, r: 10, t: 24, b: 36 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "Inter, system-ui, sans-serif", size: 11, color: "#1f2937" },
    showlegend: false,
    xaxis: axes([0, 0.44], "query side: Σ over key nodes"),
    xaxis2: axes([0.56, 1], "key side: Σ over query nodes"),
    yaxis: { anchor: "x", automargin: true, type: "category", tickfont: { family: "ui-monospace, monospace" } },
    yaxis2: { anchor: "x2", automargin: true, type: "category", tickfont: { family: "ui-monospace, monospace" } },
    annotations: [
      { text: "<b>at the query</b>", xref: "paper", yref: "paper", x: 0.22, y: 1, yanchor: "bottom", showarrow: false },
      { text: "<b>at the key</b>", xref: "paper", yref: "paper", x: 0.78, y: 1, yanchor: "bottom", showarrow: false },
    ],
  };
  const config = { ...PLOT_CONFIG, displayModeBar: false }; // a small chart: the bar would cover its titles
  return window.Plotly.react(div, [side(res.query_sums, ""), side(res.key_sums, "2")], layout, config).then(() => {
    div.removeAllListeners?.("plotly_click");
    div.on("plotly_click", (ev) => {
      const h = parseHead(String(ev.points?.[0]?.y ?? ""));
      if (h) onHead(h);
    });
  });
}

/** The panel under the head view's map. */
export class WhyHere {
  /** box: the panel; onHead(h): a head node was clicked; onClose(): the panel's × was clicked. */
  constructor(box, { onHead, onClose }) {
    Object.assign(this, { box, onHead, onClose });
    this.cache = new Map(); // "L3H1:q:k" → the answer, for this text
    this.draws = new Latest();
    this.shown = null; // the answer on screen, for the JSON export
    this.onMap = () => {}; // the map's click listener (bindMap replaces it)
  }

  /** A new text: forget its answers. */
  setRun(ov) {
    this.draws.cancel();
    this.ov = ov;
    this.cache.clear();
  }

  /**
   * Clicks on the map in `div` open a cell: `headOf(curveNumber)` names the head that panel draws (null for a
   * panel that is not the unchanged model's map) and `open(head, q, k)` is called.
   */
  bindMap(div, headOf, open) {
    div.removeListener?.("plotly_click", this.onMap);
    this.onMap = (ev) => {
      const pt = ev.points?.[0];
      const h = pt && headOf(pt.curveNumber);
      const cell = cellOf(pt);
      if (h && cell) open(h, cell.q, cell.k);
    };
    div.on?.("plotly_click", this.onMap);
  }

  /** Outline the open cell on the map in `div` when one of its panels (`headOf(i)`) draws the cell's head. */
  markCell(div, why, headOf) {
    const n = div.data?.length ?? 0;
    const shapes = [];
    for (let i = 0; why && i < n; i++) {
      if (!sameHead(headOf(i), why)) continue;
      const suffix = i === 0 ? "" : String(i + 1);
      const box = { x0: why.k - 0.5, x1: why.k + 0.5, y0: why.q - 0.5, y1: why.q + 0.5 };
      shapes.push({ type: "rect", xref: `x${suffix}`, yref: `y${suffix}`, ...box, line: { color: "#f59e0b", width: 2.5 } });
    }
    if (n && (shapes.length || div.layout?.shapes?.length)) return window.Plotly.relayout(div, { shapes });
    return Promise.resolve();
  }

  hide() {
    this.draws.cancel();
    this.box.hidden = true;
    this.shown = null;
    const bars = this.box.querySelector(".why-bars");
    if (bars) window.Plotly.purge(bars);
    fill(this.box);
  }

  /** Fetch (once per cell and text) and draw the cell `why` = {layer, head, q, k}; `off`: heads switched off. */
  async draw(why, off) {
    const signal = this.draws.next();
    if (!this.ov || !why) {
      this.hide();
      return false;
    }
    const key = `${headLabel(why)}:${why.q}:${why.k}`;
    this.box.hidden = false;
    this.box.classList.add("outdated");
    if (!this.box.childElementCount) fill(this.box, el("p", { class: "muted" }, `Why here? ${headLabel(why)}: asking…`));
    try {
      if (!this.cache.has(key)) {
        const body = { text: this.ov.text, layer: why.layer, head: why.head, query_pos: why.q, key_pos: why.k, top: TERMS };
        this.cache.set(key, await api.qkAttribution(body, { signal }));
      }
    } catch (err) {
      if (this.draws.isCurrent(signal)) fill(this.box, this.#title(why), el("p", { class: "muted" }, "failed: see the message above"));
      throw err;
    } finally {
      this.box.classList.remove("outdated");
    }
    if (!this.draws.isCurrent(signal)) return false;
    const res = this.cache.get(key);
    this.shown = res;
    this.#render(why, res, off);
    await drawSums(this.box.querySelector(".why-bars"), res, this.onHead);
    return true;
  }

  #title(why) {
    return el(
      "div",
      { class: "why-head" },
      el("h3", {}, "Why here? ", el("b", {}, headLabel(why)), ` · query ${why.q} → key ${why.k}`),
      el("button", { type: "button", class: "btn small", title: "close Why here?", "aria-label": "close Why here?", onclick: this.onClose }, "×"),
    );
  }

  #render(why, res, off) {
    const tokens = res.tokens;
    const n = res.query_sums.length;
    const shown = res.terms.reduce((a, t) => a + t.value, 0);
    const notes = [];
    if (off) notes.push(`On the unchanged model: the ${off} switched-off head${off === 1 ? " is" : "s are"} on here.`);
    if (res.masked) notes.push("The mask removes this key (outside the sliding window): the score is attributed all the same.");
    if (res.softcap !== null) notes.push(`The head soft-caps its scores at ${fmt(res.softcap, 1)}: the terms explain the score before the cap (${signed(res.capped_score, 3)} after it).`);
    if (res.position_bias !== null) notes.push(`ALiBi adds ${signed(res.position_bias, 3)} at this key, outside the terms.`);
    fill(
      this.box,
      this.#title(why),
      el(
        "p",
        { class: "why-cell" },
        `From ${token(tokens, res.query_pos)} to ${token(tokens, res.key_pos)}: attention weight `,
        el("b", {}, fmt(res.weight, 3)),
        ".",
      ),
      el(
        "p",
        { class: "why-score" },
        "Score q·k·scale ",
        el("b", { id: "why-score", dataset: { value: String(res.score) } }, signed(res.score, 3)),
        ` = the sum of all ${n} × ${n} node terms `,
        el("b", { id: "why-total", dataset: { value: String(res.total) } }, signed(res.total, 3)),
        ".",
      ),
      notes.map((t) => el("p", { class: "note" }, t)),
      el("h4", {}, `Largest terms (of ${n * n})`),
      el(
        "ol",
        { class: "why-terms" },
        res.terms.map((t) =>
          el(
            "li",
            {},
            nodeName(t.query_node, this.onHead),
            " at the query × ",
            nodeName(t.key_node, this.onHead),
            " at the key: ",
            el("b", { class: t.value >= 0 ? "pos" : "neg" }, signed(t.value, 2)),
          ),
        ),
      ),
      el("p", { class: "muted why-rest" }, `The other ${n * n - res.terms.length} terms add ${signed(res.total - shown, 2)}.`),
      el("div", { class: "why-bars plot" }),
      el("p", { class: "muted why-key" }, NODES_KEY, ". Click a head to inspect it."),
    );
  }
}
