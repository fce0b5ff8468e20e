// The Trace page's view state and its round trip through the URL, so a link reproduces the view.
import { stateUpdater } from "../lib/urlstate.js";
import { headLabel, parseHead } from "../lib/util.js";

const DEFAULTS = {
  clean: "",
  corrupted: "",
  answer: "", // token string; "" = the clean run's top-1
  wrong: "", // token string; "" = the corrupted run's top-1 (or the clean runner-up)
  pos: -1, // query position read out (negative counts from the end)
  dir: "denoise", // denoise | noise
  res: false, // also patch the residual stream per layer and position
  rows: [], // heads patched per position
  grid: false, // the logit lens's layers × positions grid
  tok: null, // token view: selected query position (non-negative) or null
  tp: "clean", // token view: which prompt the token belongs to
  tl: 0, // token view: layer shown
  th: null, // token view: head shown, null = mean over the layer's heads
};

const int = (v) => (v !== null && /^-?\d+$/.test(v) ? Number(v) : null);

export function defaults() {
  return { ...DEFAULTS, rows: [] };
}

/** State from a query string; unknown or malformed values fall back to the defaults. */
export function fromURL(search = location.search) {
  const q = new URLSearchParams(search);
  const s = defaults();
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (q.has(key)) s[key] = q.get(key);
  s.pos = int(q.get("pos")) ?? DEFAULTS.pos;
  if (q.get("dir") === "noise") s.dir = "noise";
  s.res = q.get("res") === "1";
  s.grid = q.get("grid") === "1";
  if (q.has("rows")) s.rows = q.get("rows").split(",").map(parseHead).filter(Boolean);
  const tok = int(q.get("tok"));
  s.tok = tok !== null && tok >= 0 ? tok : null;
  if (q.get("tp") === "corrupted") s.tp = "corrupted";
  s.tl = Math.max(0, int(q.get("tl")) ?? 0);
  const th = int(q.get("th"));
  s.th = th !== null && th >= 0 ? th : null;
  return s;
}

/** The query string for a state: only what differs from the defaults. */
export function toQuery(s) {
  const q = new URLSearchParams();
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (s[key]) q.set(key, s[key]);
  if (s.pos !== DEFAULTS.pos) q.set("pos", String(s.pos));
  if (s.dir !== DEFAULTS.dir) q.set("dir", s.dir);
  if (s.res) q.set("res", "1");
  if (s.rows.length) q.set("rows", s.rows.map(headLabel).join(","));
  if (s.grid) q.set("grid", "1");
  if (s.tok !== null) {
    q.set("tok", String(s.tok));
    if (s.tp !== DEFAULTS.tp) q.set("tp", s.tp);
    if (s.tl) q.set("tl", String(s.tl));
    if (s.th !== null) q.set("th", String(s.th));
  }
  return q.toString();
}

/** Change the state: `update(s, patch, {push})` applies the patch and writes the address bar (see lib/urlstate.js). */
export const update = stateUpdater(toQuery);
