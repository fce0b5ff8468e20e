// The live token counter under the prompt: counts as the user types (debounced /api/tokenize) and warns near the limit.
import * as api from "../lib/api.js";
import { Latest } from "../lib/latest.js";
import { isAbort } from "../lib/util.js";

const DEBOUNCE_MS = 250;
const NEAR = 0.9; // warn from 90% of the server's limit

export const plural = (n, word) => `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;

export class TokenCounter {
  /** node: where the count goes. */
  constructor(node) {
    this.node = node;
    this.limit = null; // the server's max_tokens, from /api/model
    this.runText = null; // the text the results on screen belong to
    this.count = null; // tokens in the text last counted, when known
    this.requests = new Latest();
    this.timer = 0;
    this.text = "";
  }

  setLimit(limit) {
    this.limit = limit;
  }

  /** The results on screen now belong to `text`. */
  setRunText(text, nTokens) {
    this.runText = text;
    if (text === this.text) this.#show(nTokens, "");
  }

  /** The prompt changed: count it after a pause in typing. */
  update(text) {
    this.text = text;
    this.count = null; // unknown until this text is counted
    clearTimeout(this.timer);
    this.requests.cancel();
    if (!text.trim()) {
      this.count = null;
      this.#show(null, "");
      return;
    }
    this.node.classList.add("counting");
    this.timer = setTimeout(() => this.#count(text), DEBOUNCE_MS);
  }

  async #count(text) {
    const signal = this.requests.next();
    try {
      const res = await api.tokenize(text, { signal });
      if (this.requests.isCurrent(signal)) this.#show(res.n_tokens, "");
    } catch (err) {
      if (isAbort(err) || !this.requests.isCurrent(signal)) return;
      // over the limit the server refuses the text and says how long it is: "text is 6390 tokens; …"
      const m = /text is (\d+) tokens/.exec(err.message || "");
      if (m) this.#show(Number(m[1]), "");
      else this.#show(null, err.message || String(err));
    }
  }

  #show(n, problem) {
    const node = this.node;
    node.classList.remove("counting");
    this.count = n;
    const over = n !== null && this.limit !== null && n > this.limit;
    const near = n !== null && this.limit !== null && !over && n >= NEAR * this.limit;
    let text = "";
    if (problem) text = problem;
    else if (over) text = `${plural(n, "token")}: over this server's limit of ${this.limit.toLocaleString("en-US")}`;
    else if (near) text = `${n.toLocaleString("en-US")} of ${plural(this.limit, "token")}: near the limit`;
    else if (n !== null) text = plural(n, "token");
    const edited = this.runText !== null && this.text !== this.runText && this.text.trim() !== "";
    if (edited && !over && !problem) text += " · not run yet (Enter)";
    node.textContent = text;
    node.classList.toggle("over", over || !!problem);
    node.classList.toggle("near", near);
    node.dataset.tokens = n === null ? "" : String(n);
  }
}
