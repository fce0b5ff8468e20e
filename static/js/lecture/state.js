// The Lecture page's state and its round trip through the URL (text or dataset, points, orders, exact point).
import { stateUpdater } from "../lib/urlstate.js";

const DEFAULTS = {
  src: "text", // text | dataset
  text: "The capital of France is",
  dataset: "builtin:stdlib-docs",
  texts: 16, // dataset: the first this many texts
  tokens: 128, // dataset: each cut to this many tokens
  steps: 10,
  seeds: 5,
  exact: true, // bisect each order's 0.1-nat point (text only)
};

const int = (value, lo, hi, fallback) => {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isInteger(n) && n >= lo && n <= hi ? n : fallback;
};

export function defaults() {
  return { ...DEFAULTS };
}

/** State from a query string; unknown or malformed values fall back to the defaults. */
export function fromURL(search = location.search) {
  const q = new URLSearchParams(search);
  const s = defaults();
  if (q.get("src") === "dataset") s.src = "dataset";
  if (q.has("text")) s.text = q.get("text");
  if (q.get("dataset")) s.dataset = q.get("dataset");
  s.texts = int(q.get("texts"), 1, 64, s.texts);
  s.tokens = int(q.get("tokens"), 2, 100000, s.tokens);
  s.steps = int(q.get("steps"), 2, 64, s.steps);
  s.seeds = int(q.get("seeds"), 1, 20, s.seeds);
  if (q.get("exact") === "0") s.exact = false;
  return s;
}

/** The query string: only what differs from the defaults (and only the source in use). */
export function toQuery(s) {
  const q = new URLSearchParams();
  if (s.src === "dataset") {
    q.set("src", "dataset");
    for (const key of ["dataset", "texts", "tokens"]) if (s[key] !== DEFAULTS[key]) q.set(key, String(s[key]));
  } else if (s.text !== DEFAULTS.text) {
    q.set("text", s.text);
  }
  for (const key of ["steps", "seeds"]) if (s[key] !== DEFAULTS[key]) q.set(key, String(s[key]));
  if (!s.exact) q.set("exact", "0");
  return q.toString();
}

/** Change the state: `update(s, patch, {push})` applies the patch and writes the address bar (see lib/urlstate.js). */
export const update = stateUpdater(toQuery);

/** The request body of /api/prune_curve for one order. */
export function curveBody(s, order) {
  const body = { order, steps: s.steps, seeds: s.seeds };
  if (s.src === "dataset") return { ...body, dataset: s.dataset, max_texts: s.texts, max_tokens: s.tokens };
  return { ...body, text: s.text, refine: s.exact };
}
