// The all-heads grid: layers × heads of canvas thumbnails, grouped by KV head, with score overlays.
import { BLUES, HEAT, el, fill, fmt, headLabel, ramp, rgb } from "./util.js";

/** Thumbnail colour table: a gamma-0.4 ramp so faint structure off the attention sink stays visible. */
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let v = 0; v < 256; v++) {
    lut.set([...ramp(BLUES, (v / 255) ** 0.4), 255], v * 4);
  }
  return new Uint32Array(lut.buffer); // one RGBA word per value, in the platform's byte order like ImageData
})();

const THUMB_INSET = 3; // px of cell frame around each thumbnail: KV tint, or the overlay colour

export const ROLE_NAMES = {
  entropy: "entropy",
  entropy_ratio: "entropy ratio",
  confidence: "confidence",
  previous_token: "previous-token",
  self: "self",
  first_token: "first-token (sink)",
  duplicate_token: "duplicate-token",
  induction: "induction",
};

function decode(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export class Grid {
  /** handlers: select(head), toggle(head), compare(head), each given {layer, head}. */
  constructor(root, { legend, info }, handlers) {
    this.root = root;
    this.legend = legend;
    this.info = info;
    this.handlers = handlers;
    this.clickMode = "inspect";
    this.cells = [];
    this.overlay = null;
    root.addEventListener("click", (e) => this.#onClick(e));
    root.addEventListener("mouseover", (e) => this.#onHover(e));
  }

  /** kv_groups from /api/model: per KV head, the query heads that read it. */
  setModel(model) {
    this.kvOf = [];
    model.kv_groups.forEach((group, g) => group.forEach((h) => (this.kvOf[h] = g)));
    this.groups = model.kv_groups;
  }

  /** Draw every head's thumbnail from an /api/overview response. */
  render(ov) {
    this.ov = ov;
    const { n_layers: nL, n_heads: nH } = ov;
    this.pixels = decode(ov.thumbnails);
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
      nodes.push(el("div", { class: "row-label", style: at(1) }, `L${layer}`));
      const row = [];
      for (let head = 0; head < nH; head++) {
        const label = headLabel({ layer, head });
        const cell = el("button", {
          type: "button",
          class: `cell kv-${(this.kvOf?.[head] ?? 0) % 2}`,
          dataset: { head: label, layer: String(layer), h: String(head) },
          "aria-label": label,
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

  cell(h) {
    return this.cells[h.layer]?.[h.head];
  }

  /** Mark switched-off heads, the selected head (A) and the compare head (B). */
  mark({ mask, head, cmp }) {
    const masked = new Set(mask.map(headLabel));
    for (const row of this.cells) {
      for (const cell of row) {
        const label = cell.dataset.head;
        cell.classList.toggle("masked", masked.has(label));
        cell.classList.toggle("selected", !!head && label === headLabel(head));
        cell.classList.toggle("compare", !!cmp && label === headLabel(cmp));
        cell.setAttribute("aria-pressed", String(masked.has(label)));
      }
    }
  }

  /** Colour each cell's frame by a per-head score grid (n_layers × n_heads); null removes the overlay. */
  setOverlay(name, grid) {
    this.overlay = grid ? { name, grid } : null;
    this.#applyOverlay();
  }

  #applyOverlay() {
    const ov = this.overlay;
    this.root.classList.toggle("overlaid", !!ov);
    if (!ov) {
      for (const row of this.cells) for (const cell of row) cell.style.removeProperty("--overlay");
      fill(this.legend);
      return;
    }
    const flat = ov.grid.flat();
    const lo = Math.min(...flat);
    const hi = Math.max(...flat);
    const span = hi - lo || 1;
    this.cells.forEach((row, l) =>
      row.forEach((cell, h) => cell.style.setProperty("--overlay", rgb(ramp(HEAT, (ov.grid[l][h] - lo) / span)))),
    );
    const stops = HEAT.map((c, i) => `${rgb(c)} ${(i / (HEAT.length - 1)) * 100}%`).join(", ");
    fill(
      this.legend,
      el("span", { class: "legend-name" }, ov.name),
      el("span", {}, fmt(lo, 2)),
      el("span", { class: "legend-bar", style: { background: `linear-gradient(90deg, ${stops})` } }),
      el("span", {}, fmt(hi, 2)),
    );
  }

  #headOf(target) {
    const cell = target.closest?.(".cell");
    return cell ? { layer: Number(cell.dataset.layer), head: Number(cell.dataset.h) } : null;
  }

  #onClick(e) {
    const h = this.#headOf(e.target);
    if (!h) return;
    if (e.shiftKey || this.clickMode === "ablate") this.handlers.toggle(h);
    else if (e.altKey || e.ctrlKey || e.metaKey) this.handlers.compare(h);
    else this.handlers.select(h);
  }

  #onHover(e) {
    const h = this.#headOf(e.target);
    if (!h || !this.ov) return;
    const st = this.ov.stats;
    const parts = [headLabel(h), `KV${this.kvOf?.[h.head] ?? h.head}`];
    for (const key of ["entropy", "previous_token", "first_token", "induction"]) {
      if (st[key]) parts.push(`${ROLE_NAMES[key]} ${fmt(st[key][h.layer][h.head], 2)}`);
    }
    if (this.overlay && !(this.overlay.name in ROLE_NAMES)) {
      parts.push(`${this.overlay.name} ${fmt(this.overlay.grid[h.layer][h.head], 3)}`);
    }
    this.info.textContent = parts.join(" · ");
  }

  /** The whole grid as one PNG (thumbnails at 2× with layer and head labels). */
  toBlob() {
    if (!this.ov) return Promise.resolve(null);
    const { n_layers: nL, n_heads: nH } = this.ov;
    const size = 48;
    const pad = 4;
    const left = 40;
    const top = 24;
    const canvas = el("canvas", { width: left + nH * (size + pad), height: top + nL * (size + pad) });
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#374151";
    ctx.font = "12px system-ui, sans-serif";
    for (let h = 0; h < nH; h++) ctx.fillText(`H${h}`, left + h * (size + pad) + 14, 16);
    this.cells.forEach((row, l) => {
      ctx.fillStyle = "#374151";
      ctx.fillText(`L${l}`, 6, top + l * (size + pad) + size / 2 + 4);
      row.forEach((cell, h) => {
        const x = left + h * (size + pad);
        const y = top + l * (size + pad);
        ctx.drawImage(this.#thumb(l, h), x, y, size, size);
        if (cell.classList.contains("masked")) {
          ctx.strokeStyle = "#dc2626";
          ctx.lineWidth = 2;
          ctx.strokeRect(x + 1, y + 1, size - 2, size - 2);
        }
      });
    });
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }
}
