// The corpus view's state and its round trip through the URL: which job, which metric, the scatter axes,
// the selected head and the similarity measure. Deliberate steps (open a job, pick a head) add history entries.
import { METRIC as SIMILARITY } from "../lib/similarity.js";
import { stateUpdater } from "../lib/urlstate.js";
import { headLabel, parseHead } from "../lib/util.js";

const DEFAULTS = {
  job: null, // job id
  metric: null, // grid colour and examples; null = the job's first metric
  x: null, // scatter axes; null = chosen from the job's metrics
  y: null,
  head: null, // selected head {layer, head}
  sim: "js", // a similarity measure (lib/similarity.js)
  view: "all", // "all" heads, or the selected "head"'s own page
  color: "kind", // the head page's Q/K points coloured by "kind", "position" or "token"
};
const VIEWS = ["all", "head"];
const COLORS = ["kind", "position", "token"];

const NAME = /^[a-z_]{1,40}$/;
const JOB = /^[A-Za-z0-9_:-]{1,64}$/;

export function defaults() {
  return { ...DEFAULTS };
}

/** State from a query string; unknown or malformed values fall back to the defaults. */
export function fromURL(search = location.search) {
  const q = new URLSearchParams(search);
  const s = defaults();
  if (JOB.test(q.get("job") || "")) s.job = q.get("job");
  for (const key of ["metric", "x", "y"]) if (NAME.test(q.get(key) || "")) s[key] = q.get(key);
  s.head = parseHead(q.get("head"));
  if (Object.hasOwn(SIMILARITY, q.get("sim") ?? "")) s.sim = q.get("sim");
  if (VIEWS.includes(q.get("view")) && s.head) s.view = q.get("view");
  if (COLORS.includes(q.get("color"))) s.color = q.get("color");
  return s;
}

/** The query string for a state: only what differs from the defaults. */
export function toQuery(s) {
  const q = new URLSearchParams();
  if (s.job) q.set("job", s.job);
  for (const key of ["metric", "x", "y"]) if (s[key]) q.set(key, s[key]);
  if (s.head) q.set("head", headLabel(s.head));
  if (s.sim !== DEFAULTS.sim) q.set("sim", s.sim);
  if (s.view !== DEFAULTS.view && s.head) q.set("view", s.view);
  if (s.color !== DEFAULTS.color) q.set("color", s.color);
  return q.toString();
}

/** Change the state: `update(s, patch, {push})` applies the patch and writes the address bar (see lib/urlstate.js). */
export const update = stateUpdater(toQuery);

/** The address of a head's page in a job (and back to all heads with view "all"). */
export const pageURL = (s, head, view = "head") => `/corpus?${toQuery({ ...s, head, view })}`;
