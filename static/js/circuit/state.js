// The Circuit page's view state and its round trip through the URL, so a link reproduces the view.
import { stateUpdater } from "../lib/urlstate.js";

const DEFAULTS = {
  clean: "",
  corrupted: "",
  answer: "",
  wrong: "",
  pos: -1, // the query position read (negative counts from the end)
  pair_set: "", // "" = the one pair above; a built-in set's id (GET /api/pair_sets); "upload" = pairs from a .jsonl
  method: "eap-ig", // eap-ig | eap
  steps: 5, // EAP-IG interpolation steps
  dir: "denoise", // denoise | noise
  n: 30, // edges kept in the graph (the top n by |score|)
  edge: "", // the selected edge, "source>target:channel", or ""
};

/** Edges the page asks the API for; the slider prunes among them. */
export const MAX_EDGES = 300;

/** The fields whose change asks the server again (the rest only redraws). */
export const ASKED = ["clean", "corrupted", "answer", "wrong", "pos", "pair_set", "method", "steps", "dir"];

const int = (v) => (v !== null && /^\d+$/.test(v) ? Number(v) : null);
const signedInt = (v) => (v !== null && /^-?\d+$/.test(v) ? Number(v) : null);

export const defaults = () => ({ ...DEFAULTS });

/** An edge's id in the URL and in the plot: "L3H5>L7H1:k". */
export const edgeId = (e) => `${e.source}>${e.target}:${e.channel}`;

/** State from a query string; unknown or malformed values fall back to the defaults. */
export function fromURL(search = location.search) {
  const q = new URLSearchParams(search);
  const s = defaults();
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (q.has(key)) s[key] = q.get(key);
  s.pos = signedInt(q.get("pos")) ?? DEFAULTS.pos;
  if (/^(builtin:[\w-]+|upload)$/.test(q.get("pair_set") || "")) s.pair_set = q.get("pair_set");
  if (q.get("method") === "eap") s.method = "eap";
  if (q.get("dir") === "noise") s.dir = "noise";
  const steps = int(q.get("steps"));
  if (steps !== null) s.steps = Math.min(64, Math.max(1, steps));
  const n = int(q.get("n"));
  if (n !== null) s.n = Math.min(MAX_EDGES, Math.max(1, n));
  if (/^[\w]+>[\w]+:\w+$/.test(q.get("edge") || "")) s.edge = q.get("edge");
  return s;
}

/** The query string for a state: only what differs from the defaults. */
export function toQuery(s) {
  const q = new URLSearchParams();
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (s[key]) q.set(key, s[key]);
  if (s.pos !== DEFAULTS.pos) q.set("pos", String(s.pos));
  if (s.pair_set) q.set("pair_set", s.pair_set);
  if (s.method !== DEFAULTS.method) q.set("method", s.method);
  if (s.steps !== DEFAULTS.steps) q.set("steps", String(s.steps));
  if (s.dir !== DEFAULTS.dir) q.set("dir", s.dir);
  if (s.n !== DEFAULTS.n) q.set("n", String(s.n));
  if (s.edge) q.set("edge", s.edge);
  return q.toString();
}

/** Change the state: `update(s, patch, {push})` applies the patch and writes the address bar (see lib/urlstate.js). */
export const update = stateUpdater(toQuery);
