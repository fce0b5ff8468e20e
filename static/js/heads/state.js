// The view state, and its round trip through the URL query string so a view can be shared or reloaded.
import { METRIC as SIMILARITY } from "../lib/similarity.js";
import { stateUpdater } from "../lib/urlstate.js";
import { headLabel, parseHead } from "../lib/util.js";

const DEFAULTS = {
  text: "",
  mask: [], // heads switched off
  head: null, // selected head (heatmap A)
  cmp: null, // compare head (heatmap B)
  view: "head", // head | circuits | composition | similarity
  mode: "single", // single | compare | diff
  scale: "linear", // linear | log
  color: "none", // grid overlay
  abl: "zero", // ablation mode: zero | mean
  metric: "js",
  order: "layer",
  scope: "all", // similarity scope: all | a layer number
  kv: "all", // with a layer: all its heads | the query heads of one KV head
  why: null, // the open "Why here?" cell: {layer, head, q, k}
  comp: "k", // the composition heatmap's kind: q | k | v
};

const CHOICES = {
  view: ["head", "circuits", "composition", "similarity"],
  mode: ["single", "compare", "diff"],
  scale: ["linear", "log"],
  abl: ["zero", "mean"],
  metric: Object.keys(SIMILARITY),
  order: ["layer", "cluster"],
  comp: ["q", "k", "v"],
};

export function defaults() {
  return { ...DEFAULTS, mask: [] };
}

/** State from a query string; unknown or malformed values fall back to the defaults. */
export function fromURL(search = location.search) {
  const q = new URLSearchParams(search);
  const s = defaults();
  if (q.has("text")) s.text = q.get("text");
  if (q.has("mask")) s.mask = q.get("mask").split(",").map(parseHead).filter(Boolean);
  s.head = parseHead(q.get("head"));
  s.cmp = parseHead(q.get("cmp"));
  for (const [key, allowed] of Object.entries(CHOICES)) {
    if (allowed.includes(q.get(key))) s[key] = q.get(key);
  }
  if (/^[a-z_:]+$/.test(q.get("color") || "")) s.color = q.get("color");
  if (/^(all|\d+)$/.test(q.get("scope") || "")) s.scope = q.get("scope");
  if (/^(all|\d+)$/.test(q.get("kv") || "")) s.kv = q.get("kv");
  const why = /^L(\d+)H(\d+):(\d+):(\d+)$/i.exec(q.get("why") || "");
  if (why && Number(why[4]) <= Number(why[3])) s.why = { layer: Number(why[1]), head: Number(why[2]), q: Number(why[3]), k: Number(why[4]) };
  return s;
}

/** The query string for a state: only what differs from the defaults. */
export function toQuery(s) {
  const q = new URLSearchParams();
  if (s.text) q.set("text", s.text);
  if (s.mask.length) q.set("mask", s.mask.map(headLabel).join(","));
  if (s.head) q.set("head", headLabel(s.head));
  if (s.cmp) q.set("cmp", headLabel(s.cmp));
  if (s.why) q.set("why", `${headLabel(s.why)}:${s.why.q}:${s.why.k}`);
  for (const key of ["view", "mode", "scale", "color", "abl", "metric", "order", "scope", "kv", "comp"]) {
    if (s[key] !== DEFAULTS[key]) q.set(key, s[key]);
  }
  return q.toString();
}

/** The Heads page's address for `patch` over the defaults, e.g. {text, head, mask}: how other pages link to it. */
export const headsURL = (patch) => `/?${toQuery({ ...defaults(), ...patch })}`;

/** Change the state: `update(s, patch, {push})` applies the patch and writes the address bar (see lib/urlstate.js). */
export const update = stateUpdater(toQuery);
