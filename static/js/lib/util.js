// Small helpers shared by the views: DOM building (text only), head labels, token display, number formats,
// colour ramps, downloads.

/** Properties that would parse a string as markup: el() refuses them. */
const MARKUP = new Set(["innerHTML", "outerHTML", "srcdoc"]);

/** Build an element. Strings and numbers become text nodes: user text never reaches the DOM as HTML. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (MARKUP.has(key)) throw new TypeError(`el(): ${key} is not allowed; pass text or nodes as children`);
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const headLabel = (h) => `L${h.layer}H${h.head}`;

export function parseHead(text) {
  const m = /^\s*L(\d+)\s*H(\d+)\s*$/i.exec(text || "");
  return m ? { layer: Number(m[1]), head: Number(m[2]) } : null;
}

export const sameHead = (a, b) => !!a && !!b && a.layer === b.layer && a.head === b.head;

/** A token as the tokenizer gives it, with whitespace made visible. */
export function visible(token) {
  if (token === "") return "∅";
  return token.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");
}

/** Plotly renders a subset of HTML in labels: escape so a token shows exactly as written. */
export const plotlyText = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x !== 0 && Math.abs(x) < 10 ** -digits) return x.toExponential(1);
  return x.toFixed(digits);
}

export const signed = (x, digits = 3) => (x > 0 ? "+" : "") + fmt(x, digits);

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(2)} MiB`;
}

export function percent(p) {
  if (p >= 0.1) return `${(p * 100).toFixed(1)}%`;
  if (p >= 0.0001) return `${(p * 100).toFixed(2)}%`;
  return p.toExponential(1);
}

/** Interpolate a list of [r, g, b] stops at t in [0, 1]. */
export function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

export const rgb = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

/** The attention colour map (white → deep blue), used by the grid and the heatmaps alike. */
export const BLUES = [
  [255, 255, 255],
  [198, 219, 239],
  [107, 174, 214],
  [33, 113, 181],
  [8, 48, 107],
];

/** Overlay colour map for per-head scores (near-white → amber → red → wine): only high scores catch the eye. */
export const HEAT = [
  [243, 244, 246],
  [254, 217, 118],
  [253, 141, 60],
  [227, 26, 28],
  [128, 0, 38],
];

export function download(filename, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export const isAbort = (err) => !!err && err.name === "AbortError";
