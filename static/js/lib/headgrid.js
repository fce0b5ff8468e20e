// What the two layers × heads grids (the Heads page's and the Corpus page's) share: cell buttons indexed by
// head, one tab stop that the keyboard moves (roving tabindex), and the score legend under the grid.
import { HEAT, el, fill, fmt, rgb } from "./util.js";

const ARROWS = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
const PAGES = { PageUp: [-5, 0], PageDown: [5, 0] };

/**
 * Where key event `e` moves the tab stop from head `h` in an nL × nH grid, or null for a key that does not move
 * it: the arrows by one cell; with `paging` also PageUp / PageDown by five layers, Home / End to the ends of
 * the row and Ctrl+Home / Ctrl+End to the corners.
 */
export function keyTarget(e, h, [nL, nH], paging) {
  const step = ARROWS[e.key] ?? (paging ? PAGES[e.key] : undefined);
  if (step) return { layer: Math.min(nL - 1, Math.max(0, h.layer + step[0])), head: Math.min(nH - 1, Math.max(0, h.head + step[1])) };
  if (!paging) return null;
  if (e.key === "Home") return e.ctrlKey ? { layer: 0, head: 0 } : { layer: h.layer, head: 0 };
  if (e.key === "End") return e.ctrlKey ? { layer: nL - 1, head: nH - 1 } : { layer: h.layer, head: nH - 1 };
  return null;
}

/** The base of both grids: `cells[layer][head]` are buttons with data-layer and data-h, each tabindex -1 but one. */
export class HeadGrid {
  /**
   * root: the grid element; selector: its cell buttons; paging: the keys keyTarget() takes with it;
   * onEnter(head, event): Enter on a cell, in place of the button's own click (absent: the click happens).
   */
  constructor(root, { selector, paging = false, onEnter = null }) {
    Object.assign(this, { root, selector, paging, onEnter });
    this.cells = [];
    this.focused = { layer: 0, head: 0 }; // the grid's one tab stop
    root.addEventListener("keydown", (e) => this.#onKey(e));
  }

  cell(h) {
    return this.cells[h.layer]?.[h.head];
  }

  /** The head of the cell `target` is in, or null. */
  headOf(target) {
    const cell = target.closest?.(this.selector);
    return cell ? { layer: Number(cell.dataset.layer), head: Number(cell.dataset.h) } : null;
  }

  /** After drawing new cells: the tab stop stays on its head where the grid still has it, else goes to L0H0. */
  keepTabStop() {
    if (!this.cell(this.focused)) this.focused = { layer: 0, head: 0 };
    this.cell(this.focused)?.setAttribute("tabindex", "0");
  }

  /** Move the grid's one tab stop to `h` (and focus it when `move`). */
  focus(h, move = true) {
    const cell = this.cell(h);
    if (!cell) return;
    this.cell(this.focused)?.setAttribute("tabindex", "-1");
    cell.tabIndex = 0;
    this.focused = h;
    if (move) cell.focus();
  }

  #onKey(e) {
    const h = this.headOf(e.target);
    if (!h) return;
    if (e.key === "Enter" && this.onEnter) {
      e.preventDefault(); // not the button's own click as well (Space keeps it: a plain click)
      this.onEnter(h, e);
      return;
    }
    const to = keyTarget(e, h, [this.cells.length, this.cells[0]?.length ?? 0], this.paging);
    if (to) {
      e.preventDefault();
      this.focus(to);
    }
  }
}

/** The legend of a per-head score: its name (with `title` on hover), the low end, the colour ramp, the high end. */
export function heatLegend(node, { name, title, lo, hi, digits = 3 }) {
  const stops = HEAT.map((c, i) => `${rgb(c)} ${(i / (HEAT.length - 1)) * 100}%`).join(", ");
  fill(
    node,
    el("span", { class: "legend-name", title }, name),
    el("span", {}, fmt(lo, digits)),
    el("span", { class: "legend-bar", style: { background: `linear-gradient(90deg, ${stops})` } }),
    el("span", {}, fmt(hi, digits)),
  );
}
