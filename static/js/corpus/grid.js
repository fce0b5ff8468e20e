// The corpus all-heads grid: layers down, heads across, each cell coloured by one dataset-level metric's mean,
// with hover (and focus) showing "L3H5 · mean ± CI half-width [ci_low, ci_high] · n". Arrow keys move between cells.
import { HeadGrid, heatLegend } from "../lib/headgrid.js";
import { HEAT, el, fill, fmt, headLabel, ramp, rgb } from "../lib/util.js";

const NAMES = new Map(); // metric → {label, description, low, high, ...}, from GET /api/roles

/** Take the metrics' labels, descriptions and ranges from the server's one registry. */
export function setMetricNames(roles) {
  for (const r of roles) NAMES.set(r.name, r);
}

/** The label a metric gets on screen ("previous_token" → "previous-token"). */
export const metricLabel = (name) => NAMES.get(name)?.label ?? name.replace(/_/g, "-");
export const metricDescription = (name) => NAMES.get(name)?.description ?? "";

/** A head's statistic as one line: "L3H5 · 0.412 ± 0.031 [0.381, 0.443] · n=128". */
export function describeStat(h, metric) {
  const s = h[metric];
  if (!s || !s.n) return `${headLabel(h)} · ${metricLabel(metric)}: no text counts (n=0)`;
  const half = (s.ci_high - s.ci_low) / 2;
  return `${headLabel(h)} · ${fmt(s.mean)} ± ${fmt(half)} [${fmt(s.ci_low)}, ${fmt(s.ci_high)}] · n=${s.n}`;
}

/**
 * The colour domain of a metric: from 0 (or below, for a negative mean) to the largest mean, and to 1 for shares
 * of attention, so that heads which differ by less than their CIs do not look far apart. Null: no values yet.
 */
export function extent(heads, metric) {
  const means = heads.map((h) => h[metric]?.mean).filter((v) => typeof v === "number" && Number.isFinite(v));
  if (!means.length) return null;
  const lo = Math.min(0, ...means);
  const hi = Math.max(...means);
  const top = NAMES.get(metric)?.high; // null (entropy) or no registry entry (importance): unbounded
  return [lo, typeof top === "number" && lo >= 0 && hi <= top ? top : hi];
}

/** A mean as it fits in a cell: two decimals (three significant digits from 10 on), no exponents. */
export function cellText(x) {
  if (Math.abs(x) >= 10) return x.toPrecision(3);
  return (Math.abs(x) < 0.005 ? 0 : x).toFixed(2);
}

const dark = ([r, g, b]) => 0.299 * r + 0.587 * g + 0.114 * b < 140;

export class CorpusGrid extends HeadGrid {
  /** onSelect({layer, head}) when a cell is clicked or activated from the keyboard (Enter or Space: its click). */
  constructor(root, { legend, tip }, onSelect) {
    super(root, { selector: ".ccell" });
    Object.assign(this, { legend, tip, onSelect });
    root.addEventListener("click", (e) => {
      const h = this.headOf(e.target);
      if (h) this.onSelect(h);
    });
    for (const type of ["mouseover", "focusin"]) root.addEventListener(type, (e) => this.#showTip(e.target.closest(".ccell")));
    root.addEventListener("mouseleave", () => (this.tip.hidden = true));
    root.addEventListener("focusout", () => (this.tip.hidden = true));
    document.addEventListener("scroll", () => (this.tip.hidden = true), true);
  }

  /** Draw every head of a /api/jobs/{id}/heads response coloured by `metric`; `selected` gets the frame. */
  render(data, metric, selected) {
    const nL = 1 + Math.max(...data.heads.map((h) => h.layer));
    const nH = 1 + Math.max(...data.heads.map((h) => h.head));
    this.data = data;
    this.metric = metric;
    const range = extent(data.heads, metric);
    const [lo, hi] = range ?? [0, 1];
    const tall = nL > 10;
    this.root.style.setProperty("--ccols", nH);
    this.root.style.setProperty("--ch", tall ? "22px" : "36px");
    const header = [el("div", { class: "ccorner" }), [...Array(nH).keys()].map((h) => el("div", { class: "ccol" }, `H${h}`))];
    const byKey = new Map(data.heads.map((h) => [headLabel(h), h]));
    this.cells = [...Array(nL).keys()].map((layer) =>
      [...Array(nH).keys()].map((head) => {
        const h = byKey.get(`L${layer}H${head}`) ?? { layer, head };
        const s = h[metric];
        const ok = s && s.n && Number.isFinite(s.mean);
        const colour = ok ? ramp(HEAT, hi > lo ? (s.mean - lo) / (hi - lo) : 0.5) : null;
        return el(
          "button",
          {
            type: "button",
            class: `ccell${ok ? "" : " none"}${ok && dark(colour) ? " dark" : ""}`,
            dataset: { head: headLabel(h), layer: String(layer), h: String(head) },
            style: colour ? { background: rgb(colour) } : {},
            tabIndex: -1,
            "aria-label": describeStat(h, metric),
            "aria-pressed": "false",
          },
          ok ? cellText(s.mean) : "–",
        );
      }),
    );
    fill(this.root, header, this.cells.map((row, layer) => [el("div", { class: "crow" }, `L${layer}`), row]));
    this.#legend(range, metric);
    this.mark(selected);
  }

  /** Frame the selected head (aria-pressed) and make it the cell the Tab key lands on. */
  mark(selected) {
    const key = selected ? headLabel(selected) : null;
    for (const row of this.cells) {
      for (const cell of row) {
        const on = cell.dataset.head === key;
        cell.classList.toggle("selected", on);
        cell.setAttribute("aria-pressed", String(on));
      }
    }
    this.focus(selected && this.cell(selected) ? selected : { layer: 0, head: 0 }, false);
  }

  #legend(range, metric) {
    if (!range) return fill(this.legend, el("span", { class: "muted" }, `no head has a ${metricLabel(metric)} value yet`));
    heatLegend(this.legend, { name: `${metricLabel(metric)} mean`, lo: range[0], hi: range[1] });
  }

  #showTip(cell) {
    if (!cell) return;
    this.tip.textContent = cell.getAttribute("aria-label");
    this.tip.hidden = false;
    // fixed to the viewport, above the cell (below it near the top), kept inside the window
    const box = cell.getBoundingClientRect();
    const tip = this.tip.getBoundingClientRect();
    const left = Math.min(window.innerWidth - tip.width - 4, Math.max(4, box.left + box.width / 2 - tip.width / 2));
    const top = box.top - tip.height - 6 >= 4 ? box.top - tip.height - 6 : box.bottom + 6;
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${top}px`;
  }
}
