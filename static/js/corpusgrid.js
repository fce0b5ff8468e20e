// The corpus all-heads grid: layers down, heads across, each cell coloured by one dataset-level metric's mean,
// with hover (and focus) showing "L3H5 · mean ± CI half-width [ci_low, ci_high] · n". Arrow keys move between cells.
import { HEAT, el, fill, fmt, headLabel, ramp, rgb } from "./util.js";

const NAMES = new Map(); // metric → {label, description}, from GET /api/roles

/** Take the role scores' labels and descriptions from the server; on a corpus, induction is the text's own. */
export function setMetricNames(roles) {
  for (const r of roles) NAMES.set(r.name, r);
  if (NAMES.has("text_induction")) NAMES.set("induction", NAMES.get("text_induction"));
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

const UNBOUNDED = new Set(["entropy", "importance"]); // every other metric is a share of attention, in [0, 1]

/**
 * The colour domain of a metric: from 0 (or below, for a negative mean) to the largest mean, and to 1 for shares
 * of attention, so that heads which differ by less than their CIs do not look far apart. Null: no values yet.
 */
export function extent(heads, metric) {
  const means = heads.map((h) => h[metric]?.mean).filter((v) => typeof v === "number" && Number.isFinite(v));
  if (!means.length) return null;
  const lo = Math.min(0, ...means);
  const hi = Math.max(...means);
  return [lo, !UNBOUNDED.has(metric) && lo >= 0 && hi <= 1 ? 1 : hi];
}

/** A mean as it fits in a cell: two decimals (three significant digits from 10 on), no exponents. */
export function cellText(x) {
  if (Math.abs(x) >= 10) return x.toPrecision(3);
  return (Math.abs(x) < 0.005 ? 0 : x).toFixed(2);
}

const dark = ([r, g, b]) => 0.299 * r + 0.587 * g + 0.114 * b < 140;

export class CorpusGrid {
  /** onSelect({layer, head}) when a cell is clicked or activated from the keyboard. */
  constructor(root, { legend, tip }, onSelect) {
    Object.assign(this, { root, legend, tip, onSelect });
    this.cells = new Map(); // "L3H5" → button
    this.shape = [0, 0];
    root.addEventListener("click", (e) => {
      const cell = e.target.closest(".ccell");
      if (cell) this.onSelect(this.#head(cell));
    });
    root.addEventListener("keydown", (e) => this.#onKey(e));
    for (const type of ["mouseover", "focusin"]) root.addEventListener(type, (e) => this.#showTip(e.target.closest(".ccell")));
    root.addEventListener("mouseleave", () => (this.tip.hidden = true));
    root.addEventListener("focusout", () => (this.tip.hidden = true));
    document.addEventListener("scroll", () => (this.tip.hidden = true), true);
  }

  /** Draw every head of a /api/jobs/{id}/heads response coloured by `metric`; `selected` gets the frame. */
  render(data, metric, selected) {
    const nL = 1 + Math.max(...data.heads.map((h) => h.layer));
    const nH = 1 + Math.max(...data.heads.map((h) => h.head));
    this.shape = [nL, nH];
    this.data = data;
    this.metric = metric;
    const range = extent(data.heads, metric);
    const [lo, hi] = range ?? [0, 1];
    const tall = nL > 10;
    this.root.style.setProperty("--ccols", nH);
    this.root.style.setProperty("--ch", tall ? "22px" : "36px");
    this.cells.clear();
    const header = [el("div", { class: "ccorner" }), [...Array(nH).keys()].map((h) => el("div", { class: "ccol" }, `H${h}`))];
    const byKey = new Map(data.heads.map((h) => [headLabel(h), h]));
    const rows = [...Array(nL).keys()].map((layer) => [
      el("div", { class: "crow" }, `L${layer}`),
      [...Array(nH).keys()].map((head) => {
        const h = byKey.get(`L${layer}H${head}`) ?? { layer, head };
        const s = h[metric];
        const ok = s && s.n && Number.isFinite(s.mean);
        const colour = ok ? ramp(HEAT, hi > lo ? (s.mean - lo) / (hi - lo) : 0.5) : null;
        const cell = el(
          "button",
          {
            type: "button",
            class: `ccell${ok ? "" : " none"}${ok && dark(colour) ? " dark" : ""}`,
            dataset: { head: headLabel(h), layer: String(layer), hd: String(head) },
            style: colour ? { background: rgb(colour) } : {},
            tabIndex: -1,
            "aria-label": describeStat(h, metric),
            "aria-pressed": "false",
          },
          ok ? cellText(s.mean) : "–",
        );
        this.cells.set(headLabel(h), cell);
        return cell;
      }),
    ]);
    fill(this.root, header, rows);
    this.#legend(range, metric);
    this.mark(selected);
  }

  /** Frame the selected head (aria-pressed) and make it the cell the Tab key lands on. */
  mark(selected) {
    const key = selected ? headLabel(selected) : null;
    let focusable = null;
    for (const [label, cell] of this.cells) {
      const on = label === key;
      cell.classList.toggle("selected", on);
      cell.setAttribute("aria-pressed", String(on));
      cell.tabIndex = -1;
      if (on) focusable = cell;
    }
    (focusable ?? this.cells.values().next().value)?.setAttribute("tabindex", "0");
  }

  #head(cell) {
    return { layer: Number(cell.dataset.layer), head: Number(cell.dataset.hd) };
  }

  #legend(range, metric) {
    if (!range) return fill(this.legend, el("span", { class: "muted" }, `no head has a ${metricLabel(metric)} value yet`));
    const stops = HEAT.map((c, i) => `${rgb(c)} ${(i / (HEAT.length - 1)) * 100}%`).join(", ");
    fill(
      this.legend,
      el("span", { class: "legend-name" }, `${metricLabel(metric)} mean`),
      el("span", {}, fmt(range[0])),
      el("span", { class: "legend-bar", style: { background: `linear-gradient(90deg, ${stops})` } }),
      el("span", {}, fmt(range[1])),
    );
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

  #onKey(e) {
    const cell = e.target.closest(".ccell");
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
    if (!cell || !step) return;
    e.preventDefault();
    const [nL, nH] = this.shape;
    const { layer, head } = this.#head(cell);
    const next = this.cells.get(
      `L${Math.min(nL - 1, Math.max(0, layer + step[0]))}H${Math.min(nH - 1, Math.max(0, head + step[1]))}`,
    );
    if (next) {
      cell.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
    }
  }
}
