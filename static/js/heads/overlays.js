// "Colour by": which per-head scores can frame the grid for this text, fetching them once per text.
import * as api from "../lib/api.js";
import { el, fill } from "../lib/util.js";

/** Overlays that are not role scores: head importance, fetched from /api/importance. */
export const IMPORTANCE = [
  { name: "importance", label: "importance (gradient)", method: "gradient", description: "|∂loss/∂gate|: how much the loss on this text moves when the head's output is scaled" },
  { name: "importance_ablation", label: "importance (ablation, slow)", method: "ablation", description: "the loss increase on this text when the head alone is switched off: one model run per head" },
];

const NONE = { name: "none", label: "nothing", description: "" };

export class Overlays {
  constructor() {
    this.roles = []; // [{name, label, description}] from /api/roles
    this.run = null; // the /api/overview result (plus .text) the scores belong to
    this.pending = {}; // overlay name → promise of its n_layers × n_heads grid
    this.arrived = {}; // the same, once they arrived (for the JSON export)
    this.note = ""; // why the overlay fell back to nothing
    this.asking = new Set(); // AbortControllers of the score requests under way (cancel())
  }

  setRoles(roles) {
    this.roles = roles;
  }

  /** A new text: forget its scores; requests for it stop when `signal` aborts (the next run). */
  setRun(run, signal) {
    Object.assign(this, { run, signal, pending: {}, arrived: {} });
  }

  /** Every overlay the page knows: nothing, importance, then the server's role scores. */
  list() {
    return [NONE, ...IMPORTANCE, ...this.roles];
  }

  find(name) {
    return this.list().find((o) => o.name === name);
  }

  /** Why an overlay cannot be shown for this text ("" when it can). */
  unavailable(o) {
    const run = this.run;
    if (!run || o === NONE) return "";
    if (o.method) return run.tokens.length < 2 ? "needs two tokens" : "";
    if (!(o.name in run.stats)) return "not computed";
    return run.stats[o.name] === null ? "no token repeats" : ""; // the scores that need a repeated token
  }

  /**
   * Fill the <select>; a choice this text cannot show falls back to "nothing", with a note saying why.
   * Returns the choice that stands (the caller puts it in the state and the address bar).
   */
  fillSelect(select, wanted) {
    fill(
      select,
      this.list().map((o) => {
        const why = this.unavailable(o);
        return el("option", { value: o.name, title: o.description, disabled: !!why }, why ? `${o.label} (${why})` : o.label);
      }),
    );
    const current = this.find(wanted);
    const why = current ? this.unavailable(current) : "unknown";
    this.note = current && why ? `${current.label}: ${why} in this text, so the grid is not coloured` : "";
    const name = why ? "none" : wanted;
    select.value = name;
    return name;
  }

  /** An importance overlay's n_layers × n_heads scores for this text (role scores come with the overview). */
  scores(o) {
    if (!this.pending[o.name]) {
      const asked = new AbortController(); // cancel() stops it; so does the run's signal (a newer run)
      this.asking.add(asked);
      const signal = AbortSignal.any([this.signal, asked.signal].filter(Boolean));
      const p = api.importance(this.run.text, o.method, { signal }).then((res) => res.scores);
      const pending = (this.pending[o.name] = p);
      const arrived = this.arrived;
      p.then(
        (g) => (arrived[o.name] = g),
        () => this.pending[o.name] === pending && delete this.pending[o.name], // a failure is not kept: asking again retries
      ).finally(() => this.asking.delete(asked));
    }
    return this.pending[o.name];
  }

  /** Stop the score requests under way (the status bar's Cancel); asking again starts them afresh. */
  cancel() {
    for (const asked of this.asking) asked.abort();
  }
}
