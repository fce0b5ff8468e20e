// The Continuation panel: the text continued by the unchanged model and by the model with the grid's
// switched-off heads, side by side (POST /api/generate, streamed). The first token where they part is
// marked; each token is coloured by its log-prob. "Analyse" runs prompt + a continuation as a normal run.
// It reads the view state from the address bar (state.js), where main.js keeps the run's text and the mask.
import * as api from "../lib/api.js";
import { errorText } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { el, fill, fmt, headLabel, isAbort, percent, visible } from "../lib/util.js";
import * as store from "./state.js";

const SCALE = 6; // nats: −log p at which a token's colour is darkest (p ≈ 0.25%)
const MAX_NEW = 256;

const $ = (id) => document.getElementById(id);
const key = (s) => `${s.text}\u0000${s.abl}\u0000${s.mask.map(headLabel).sort().join()}`;

export class ContinuationView {
  constructor(root) {
    this.root = root;
    this.requests = new Latest();
    this.shownFor = null; // key() of the state the continuations on screen were made for
    this.count = el("input", { type: "number", id: "cont-n", min: "1", max: String(MAX_NEW), step: "1", value: "32", "aria-label": "tokens to generate" });
    this.button = el("button", { type: "button", id: "cont-run", class: "btn primary", onclick: () => this.start() }, "Continue");
    this.status = el("span", { id: "cont-status", class: "muted", role: "status", "aria-live": "polite" });
    this.out = el("div", { id: "cont-out", class: "cont-out" });
    fill(
      root,
      el("h2", { id: "continuation-title" }, "Continuation"),
      el("div", { class: "row cont-controls" }, this.button, el("label", {}, this.count, " tokens"), this.status),
      el("p", { class: "muted cont-hint" }, "The text continued by the unchanged model and with the heads switched off in the grid."),
      this.out,
    );
  }

  /** Generate for the run on screen and the grid's mask; a second press cancels the first. */
  async start() {
    const s = store.fromURL();
    if (!s.text) return this.say("run a prompt first", true);
    const n = Number(this.count.value);
    if (!Number.isInteger(n) || n < 1 || n > MAX_NEW) return this.say(`tokens must be a whole number from 1 to ${MAX_NEW}`, true);
    const signal = this.requests.next();
    const mask = [...s.mask].sort((a, b) => a.layer - b.layer || a.head - b.head);
    const cols = this.#columns(s.text, mask, s.abl);
    this.shownFor = key(s);
    this.root.dataset.state = "running";
    delete this.root.dataset.stale;
    this.say("generating…");
    const body = { text: s.text, max_new_tokens: n, ablate: mask, mode: s.abl };
    try {
      const out = await api.generate(body, (step) => this.#step(cols, step), { signal });
      if (!this.requests.isCurrent(signal)) return;
      this.#finish(cols, out);
      this.root.dataset.state = "done";
    } catch (err) {
      if (!this.requests.isCurrent(signal) || isAbort(err)) return;
      this.root.dataset.state = "error";
      this.say(errorText(err), true);
    }
  }

  /** Mark the continuations stale once the text or the mask on the page is no longer theirs. */
  check() {
    if (this.shownFor === null) return;
    const stale = key(store.fromURL()) !== this.shownFor;
    if (stale) this.root.dataset.stale = "1";
    else delete this.root.dataset.stale;
  }

  say(message, error = false) {
    this.status.textContent = message;
    this.status.classList.toggle("field-error", error);
  }

  /** Empty columns: the unchanged model and, with a mask, the ablated one. */
  #columns(text, mask, mode) {
    const names = mask.length ? mask.map(headLabel).join(", ") : "";
    const column = (row, title, note) => {
      const tokens = el("div", { class: "cont-tokens", dataset: { row } });
      const analyse = el("button", { type: "button", class: "btn small", id: `cont-analyse-${row}`, disabled: true }, "Analyse with continuation");
      const node = el("div", { class: "cont-col", dataset: { row } }, el("h3", {}, title, note ? el("span", { class: "muted" }, ` ${note}`) : null), tokens, analyse);
      return { row, node, tokens, analyse, ids: [], text };
    };
    const cols = [column("baseline", "Unchanged model")];
    if (mask.length) cols.push(column("ablated", `${names} off`, `(${mode})`));
    fill(this.out, el("div", { class: `cont-cols n${cols.length}` }, cols.map((c) => c.node)), el("p", { class: "muted cont-legend", id: "cont-legend" }));
    if (!mask.length) this.out.append(el("p", { class: "muted cont-hint" }, "Switch heads off in the grid (shift-click) to see what changes."));
    return cols;
  }

  #step(cols, step) {
    for (const c of cols) {
      const t = step[c.row];
      if (!t) continue;
      c.ids.push(t.id);
      c.tokens.append(tokenSpan(t.token, t.logprob, c.ids.length - 1));
    }
    this.#markParting(cols, parting(cols));
    this.say(`${step.index + 1} token${step.index ? "s" : ""}…`);
  }

  #finish(cols, out) {
    const part = out.ablated ? out.first_difference : null;
    for (const c of cols) {
      const res = out[c.row];
      fill(c.tokens, res.tokens.map((t, i) => tokenSpan(t, res.logprobs[i], i)));
      if (res.stop === "eos") c.tokens.append(el("span", { class: "cont-eos", title: "the model ended the text here" }, "⏹ end"));
      c.analyse.disabled = !res.text;
      c.analyse.onclick = () => analyse(c.text + res.text);
    }
    this.#markParting(cols, part);
    const n = out.baseline.token_ids.length;
    const same = out.ablated && part === null;
    fill(
      $("cont-legend"),
      "colour: −log p of each token under its model (white = sure, dark = ",
      `≥ ${SCALE} nats). `,
      out.ablated ? (same ? el("b", {}, `The two are the same for all ${n} tokens.`) : el("b", {}, `They part at token ${part + 1}`)) : null,
      out.ablated && !same ? " (outlined)." : null,
    );
    this.say(`${n} token${n === 1 ? "" : "s"}`);
  }

  #markParting(cols, index) {
    for (const c of cols) {
      for (const s of c.tokens.querySelectorAll(".part")) s.classList.remove("part");
      if (index !== null && index !== undefined) c.tokens.querySelector(`[data-i="${index}"]`)?.classList.add("part");
    }
  }
}

/** The first index where the two columns' ids differ so far (null: none yet, or a single column). */
function parting(cols) {
  if (cols.length < 2) return null;
  const [a, b] = cols.map((c) => c.ids);
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return null;
}

function tokenSpan(token, logprob, i) {
  const alpha = Math.min(1, -logprob / SCALE) * 0.8;
  return el(
    "span",
    { class: "t", dataset: { i: String(i) }, title: `#${i + 1} ${JSON.stringify(token)}\nlog p ${fmt(logprob)} (p ${percent(Math.exp(logprob))})`, style: { background: `rgba(245, 158, 11, ${alpha})` } },
    visible(token),
  );
}

/** Run prompt + continuation as a normal run, through the prompt form (main.js owns running). */
function analyse(text) {
  const prompt = $("prompt");
  prompt.value = text;
  prompt.dispatchEvent(new Event("input", { bubbles: true }));
  $("prompt-form").requestSubmit();
}

const root = $("continuation");
if (root) {
  const view = new ContinuationView(root);
  // main.js rewrites the mask chips and the token text after each change of the mask or the run
  const watch = new MutationObserver(() => view.check());
  for (const id of ["mask-chips", "token-text"]) if ($(id)) watch.observe($(id), { childList: true });
  window.addEventListener("popstate", () => view.check());
}
