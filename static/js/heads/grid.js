// The all-heads grid: layers × heads of canvas thumbnails, grouped by KV head, with score overlays.
import { decodeBytes } from "../lib/decode.js";
import { HeadGrid, heatLegend } from "../lib/headgrid.js";
import { BLUES, HEAT, el, fill, fmt, headLabel, ramp, rgb } from "../lib/util.js";

/** Thumbnail colour table: a gamma-0.4 ramp so faint structure off the attention sink stays visible. */
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let v = 0; v < 256; v++) {
    lut.set([...ramp(BLUES, (v / 255) ** 0.4), 255], v * 4);
  }
  return new Uint32Array(lut.buffer); // one RGBA word per value, in the platform's byte order like ImageData
})();

const THUMB_INSET = 3; // px of cell frame around each thumbnail: KV tint, or the overlay colour
const OFF = "#dc2626"; // a switched-off head's cross, in the grid and its exports
const OFF_VEIL = "rgba(243, 244, 246, 0.6)";

export class Grid extends HeadGrid {
  /** handlers: select(head), toggle(head), compare(head), each given {layer, head}. */
  constructor(root, { legend, info }, handlers) {
    super(root, { selector: ".cell", paging: true, onEnter: (h, e) => this.#act(h, e) });
    this.legend = legend;
    this.info = info;
    this.handlers = handlers;
    this.clickMode = "inspect";
    this.overlay = null;
    this.roles = []; // [{name, label, description}] from /api/roles
    root.addEventListener("click", (e) => this.#onClick(e));
    root.addEventListener("mouseover", (e) => this.#onHover(e));
    root.addEventListener("focusin", (e) => this.#onHover(e)); // the keyboard sees what the pointer sees
  }

  /** The role scores the server describes: their labels name the overlay and the hover line. */
  setRoles(roles) {
    this.roles = roles;
  }

  /** kv_groups from /api/model: per KV head, the query heads that read it. */
  setModel(model) {
    this.kvOf = [];
    model.kv_groups.forEach((group, g) => group.forEach((h) => (this.kvOf[h] = g)));
    this.groups = model.kv_groups;
    this.variants = model.layer_variants ?? []; // per layer: a local layer gets a tag beside its label
  }

  /** Draw every head's thumbnail from an /api/overview response. */
  render(ov) {
    this.ov = ov;
    const { n_layers: nL, n_heads: nH } = ov;
    this.pixels = decodeBytes(ov.thumbnails);
    const groups = this.groups?.length ? this.groups : [...Array(nH).keys()].map((h) => [h]);
    const gap = groups.length > 1 && groups.length < nH;
    // columns: layer label, then each KV group's heads with a thin gutter between groups
    const cols = ["auto"];
    const colOf = [];
    groups.forEach((group, g) => {
      if (g > 0 && gap) cols.push("var(--kv-gap)");
      for (const h of group) colOf[h] = cols.push("var(--cell)");
    });
    this.root.style.gridTemplateColumns = cols.join(" ");
    const at = (col) => ({ gridColumn: String(col) });
    const nodes = [el("div", { class: "corner", style: at(1) })];
    if (gap) {
      groups.forEach((group, g) =>
        nodes.push(
          el("div", { class: `kv-head kv-${g % 2}`, style: { gridColumn: `${colOf[group[0]]} / span ${group.length}` } }, `KV${g}`),
        ),
      );
      nodes.push(el("div", { class: "corner second", style: at(1) }));
    }
    this.root.classList.toggle("has-kv", gap); // two sticky header rows instead of one
    for (let h = 0; h < nH; h++) nodes.push(el("div", { class: "col-label", style: at(colOf[h]) }, `H${h}`));
    this.cells = [];
    for (let layer = 0; layer < nL; layer++) {
      const variant = this.variants?.[layer];
      const local = variant?.window != null;
      nodes.push(
        el(
          "div",
          { class: "row-label", style: at(1), title: variant ? `L${layer}: ${variant.label}` : undefined },
          local ? el("span", { class: "layer-tag" }, "local") : null,
          `L${layer}`,
        ),
      );
      const row = [];
      for (let head = 0; head < nH; head++) {
        const label = headLabel({ layer, head });
        const cell = el("button", {
          type: "button",
          class: `cell kv-${(this.kvOf?.[head] ?? 0) % 2}`,
          dataset: { head: label, layer: String(layer), h: String(head) },
          "aria-label": label,
          tabindex: "-1",
          style: at(colOf[head]),
        });
        row.push(cell);
        nodes.push(cell);
      }
      this.cells.push(row);
    }
    // One canvas over the cell backgrounds holds every thumbnail: hundreds of canvases cost more to paint.
    this.canvas = el("canvas", { class: "thumbs", "aria-hidden": "true" });
    nodes.push(this.canvas);
    fill(this.root, nodes);
    this.#paintThumbnails();
    this.root.dataset.cells = String(nL * nH);
    this.keepTabStop();
    this.#applyOverlay();
  }

  /** Each head's s×s thumbnail, scaled (nearest) into the inner square of its cell. */
  #paintThumbnails() {
    const { n_heads: nH, thumb_size: s } = this.ov;
    const canvas = this.canvas;
    const [w, h] = [this.root.scrollWidth, this.root.scrollHeight];
    Object.assign(canvas, { width: w, height: h });
    Object.assign(canvas.style, { width: `${w}px`, height: `${h}px` });
    const img = new ImageData(w, h);
    const words = new Uint32Array(img.data.buffer);
    this.cells.forEach((row, layer) =>
      row.forEach((cell, head) => {
        const inset = THUMB_INSET;
        const side = cell.offsetWidth - 2 * inset;
        const [x0, y0] = [cell.offsetLeft + inset, cell.offsetTop + inset];
        const base = (layer * nH + head) * s * s;
        for (let y = 0; y < side; y++) {
          const src = base + Math.floor((y * s) / side) * s;
          let dst = (y0 + y) * w + x0;
          for (let x = 0; x < side; x++) words[dst++] = LUT[this.pixels[src + Math.floor((x * s) / side)]];
        }
      }),
    );
    canvas.getContext("2d").putImageData(img, 0, 0);
  }

  /** One head's thumbnail as its own small canvas (for the PNG export). */
  #thumb(layer, head) {
    const { n_heads: nH, thumb_size: s } = this.ov;
    const img = new ImageData(s, s);
    const words = new Uint32Array(img.data.buffer);
    const base = (layer * nH + head) * s * s;
    for (let i = 0; i < s * s; i++) words[i] = LUT[this.pixels[base + i]];
    const canvas = el("canvas", { width: s, height: s });
    canvas.getContext("2d").putImageData(img, 0, 0);
    return canvas;
  }

  /**
   * Mark switched-off heads, the selected head (A) and, in compare mode, the compare head (B). A newly selected
   * head out of the grid's view (a shared link's `head=L17H4`) is scrolled into the middle of it.
   */
  mark({ mask, head, cmp, mode }) {
    const masked = new Set(mask.map(headLabel));
    const a = head ? headLabel(head) : "";
    if (a !== this.shown && (!a || this.cell(head))) {
      if (a) this.#reveal(this.cell(head));
      this.shown = a; // once its cell exists: a mark before the first drawing reveals it after
    }
    const b = cmp && mode === "compare" ? headLabel(cmp) : "";
    for (const row of this.cells) {
      for (const cell of row) {
        const label = cell.dataset.head;
        const off = masked.has(label);
        cell.classList.toggle("masked", off);
        cell.classList.toggle("selected", label === a);
        cell.classList.toggle("compare", label === b);
        const states = [off ? "switched off" : "", label === a ? "shown" : "", label === b ? "compared" : ""];
        cell.setAttribute("aria-label", [label, ...states.filter(Boolean)].join(", "));
      }
    }
  }

  /** Scroll the grid's own box (never the page) so that `cell` is in view, in the middle when it was out of it. */
  #reveal(cell) {
    const box = this.root.closest(".grid-scroll");
    if (!cell || !box) return;
    const c = cell.getBoundingClientRect();
    const b = box.getBoundingClientRect();
    const header = 40; // the sticky KV and head labels over the first rows
    if (c.top >= b.top + header && c.bottom <= b.bottom) return;
    box.scrollTop += c.top - b.top - (b.height - c.height) / 2;
  }

  /** Colour each cell's frame by a per-head score grid (n_layers × n_heads); null removes the overlay. */
  setOverlay(name, grid, description = "") {
    this.overlay = grid ? { name, grid, description } : null;
    this.#applyOverlay();
  }

  /** A line in the legend's place (a score on its way, or why there is none); the legend keeps its height. */
  setLegendNote(text) {
    if (!this.overlay) fill(this.legend, text ? el("span", { class: "legend-note" }, text) : null);
  }

  #applyOverlay() {
    const ov = this.overlay;
    this.root.classList.toggle("overlaid", !!ov);
    if (!ov) {
      for (const row of this.cells) for (const cell of row) cell.style.removeProperty("--overlay");
      fill(this.legend);
      return;
    }
    const flat = ov.grid.flat().filter(Number.isFinite);
    const lo = Math.min(...flat);
    const hi = Math.max(...flat);
    const span = hi - lo || 1;
    this.cells.forEach((row, l) =>
      row.forEach((cell, h) => cell.style.setProperty("--overlay", rgb(ramp(HEAT, (ov.grid[l][h] - lo) / span)))),
    );
    heatLegend(this.legend, { name: ov.name, title: ov.description, lo, hi, digits: 2 });
  }

  #onClick(e) {
    const h = this.headOf(e.target);
    if (!h) return;
    this.focus(h, false);
    this.#act(h, e);
  }

  /** Click or Enter: switch off (Shift, or the Switch off mode), compare (Alt/Ctrl/⌘), else inspect. */
  #act(h, e) {
    if (e.shiftKey || this.clickMode === "ablate") this.handlers.toggle(h);
    else if (e.altKey || e.ctrlKey || e.metaKey) this.handlers.compare(h);
    else this.handlers.select(h);
  }

  #onHover(e) {
    const h = this.headOf(e.target);
    if (!h || !this.ov) return;
    const st = this.ov.stats;
    const parts = [headLabel(h), `KV${this.kvOf?.[h.head] ?? h.head}`];
    for (const role of this.roles) {
      if (role.summary && st[role.name]) {
        parts.push(`${role.label} ${fmt(st[role.name][h.layer][h.head], 2)}`);
      }
    }
    const ov = this.overlay;
    if (ov && !parts.some((p) => p.startsWith(`${ov.name} `))) parts.push(`${ov.name} ${fmt(ov.grid[h.layer][h.head], 3)}`);
    this.info.textContent = parts.join(" · ");
  }

  /** Where each head goes in an exported picture: thumbnails at 48 px with layer and head labels. */
  #picture() {
    const { n_layers: nL, n_heads: nH } = this.ov;
    const [size, pad, left, top] = [48, 4, 40, 24];
    const place = (l, h) => ({ x: left + h * (size + pad), y: top + l * (size + pad) });
    return { nL, nH, size, left, top, place, width: left + nH * (size + pad), height: top + nL * (size + pad) };
  }

  /** The whole grid as one PNG (thumbnails at 48 px, overlay frames, switched-off heads outlined in red). */
  toBlob() {
    if (!this.ov) return Promise.resolve(null);
    const { nH, size, left, place, width, height } = this.#picture();
    const canvas = el("canvas", { width, height });
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = false;
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#374151";
    for (let h = 0; h < nH; h++) ctx.fillText(`H${h}`, left + h * (size + 4) + 14, 16);
    this.cells.forEach((row, l) => {
      ctx.fillStyle = "#374151";
      ctx.fillText(`L${l}`, 6, place(l, 0).y + size / 2 + 4);
      row.forEach((cell, h) => {
        const { x, y } = place(l, h);
        if (this.overlay) {
          ctx.fillStyle = cell.style.getPropertyValue("--overlay");
          ctx.fillRect(x - 2, y - 2, size + 4, size + 4);
        }
        ctx.drawImage(this.#thumb(l, h), x, y, size, size);
        if (cell.classList.contains("masked")) {
          // as on screen: the map veiled and crossed out in red, inside a red frame
          ctx.fillStyle = OFF_VEIL;
          ctx.fillRect(x, y, size, size);
          ctx.strokeStyle = OFF;
          ctx.lineWidth = 2;
          ctx.strokeRect(x + 1, y + 1, size - 2, size - 2);
          ctx.beginPath();
          ctx.moveTo(x + 4, y + 4);
          ctx.lineTo(x + size - 4, y + size - 4);
          ctx.moveTo(x + size - 4, y + 4);
          ctx.lineTo(x + 4, y + size - 4);
          ctx.stroke();
        }
      });
    });
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  /** The same picture as SVG: labels, frames and outlines as vectors, each thumbnail an embedded PNG. */
  toSVG() {
    if (!this.ov) return null;
    const { nH, size, left, place, width, height } = this.#picture();
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    const add = (parent, tag, attrs, text) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      parent.append(node);
      return node;
    };
    Object.entries({ xmlns: NS, width, height, viewBox: `0 0 ${width} ${height}` }).forEach(([k, v]) => svg.setAttribute(k, String(v)));
    add(svg, "rect", { width, height, fill: "#fff" });
    const font = { "font-family": "system-ui, sans-serif", "font-size": 12, fill: "#374151" };
    for (let h = 0; h < nH; h++) add(svg, "text", { ...font, x: left + h * (size + 4) + 14, y: 16 }, `H${h}`);
    this.cells.forEach((row, l) => {
      add(svg, "text", { ...font, x: 6, y: place(l, 0).y + size / 2 + 4 }, `L${l}`);
      row.forEach((cell, h) => {
        const { x, y } = place(l, h);
        const g = add(svg, "g", { "data-head": cell.dataset.head });
        if (this.overlay) add(g, "rect", { x: x - 2, y: y - 2, width: size + 4, height: size + 4, fill: cell.style.getPropertyValue("--overlay") });
        add(g, "image", { x, y, width: size, height: size, href: this.#thumb(l, h).toDataURL("image/png"), style: "image-rendering: pixelated" });
        if (cell.classList.contains("masked")) {
          g.setAttribute("class", "off");
          add(g, "rect", { x, y, width: size, height: size, fill: OFF_VEIL });
          add(g, "rect", { x: x + 1, y: y + 1, width: size - 2, height: size - 2, fill: "none", stroke: OFF, "stroke-width": 2 });
          const [a, z] = [4, size - 4];
          add(g, "path", { d: `M${x + a} ${y + a}L${x + z} ${y + z}M${x + z} ${y + a}L${x + a} ${y + z}`, stroke: OFF, "stroke-width": 2 });
        }
      });
    });
    return new Blob([new XMLSerializer().serializeToString(svg)], { type: "image/svg+xml" });
  }
}
