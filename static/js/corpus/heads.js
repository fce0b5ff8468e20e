// The head panel: one head's statistics for every metric, and the texts where it scores highest, each with the
// query and key tokens marked and a link that opens the one-prompt view of that text on that head.
import { headsURL } from "../heads/state.js";
import { el, fill, fmt, headLabel } from "../lib/util.js";
import { metricLabel } from "./grid.js";

const CONTEXT_BEFORE = 10; // tokens shown before a marked token
const CONTEXT_AFTER = 4;
const LEAD = 40; // tokens shown when the metric marks no position

/** Token ranges [start, end) to show around the marked positions, merged where they overlap. */
export function windows(n, positions) {
  const marks = positions.filter((p) => Number.isInteger(p) && p >= 0 && p < n).sort((a, b) => a - b);
  if (!marks.length) return [[0, Math.min(n, LEAD)]];
  const out = [];
  for (const p of marks) {
    const r = [Math.max(0, p - CONTEXT_BEFORE), Math.min(n, p + CONTEXT_AFTER + 1)];
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 2) last[1] = Math.max(last[1], r[1]);
    else out.push(r);
  }
  return out;
}

function tokenSpan(token, i, ex) {
  const roles = [i === ex.query_pos && "q", i === ex.key_pos && "k"].filter(Boolean);
  const title = roles.length ? `${roles.map((r) => (r === "q" ? "query" : "key")).join(" and ")} token [${i}]` : null;
  return el("span", { class: ["ctok", ...roles].join(" "), title }, token.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅");
}

const defaultTextURL = (ex, head) => headsURL({ text: ex.text, head });

/**
 * One example card: its rank (or decile), score, the marked query and key tokens in context, and a link that opens
 * the text in the one-prompt view (`textURL(ex, head)`; null: no link, as in the static atlas).
 */
export function exampleItem(ex, head, rank, textURL = defaultTextURL) {
  const url = textURL ? textURL(ex, head) : null;
  const parts = [];
  let prev = 0;
  for (const [a, b] of windows(ex.tokens.length, [ex.query_pos, ex.key_pos])) {
    if (a > prev) parts.push(el("span", { class: "gap" }, "…"));
    for (let i = a; i < b; i++) parts.push(tokenSpan(ex.tokens[i], i, ex));
    prev = b;
  }
  if (prev < ex.tokens.length) parts.push(el("span", { class: "gap" }, "…"));
  const where = Number.isInteger(ex.query_pos)
    ? `query [${ex.query_pos}] → key [${ex.key_pos}]`
    : "over the whole text";
  return el(
    "li",
    { class: "cx" },
    el(
      "div",
      { class: "cx-head" },
      Number.isInteger(ex.decile)
        ? el("span", { class: "cx-rank", title: `decile ${ex.decile} of the head's per-text scores (9 = highest)` }, `D${ex.decile}`)
        : el("span", { class: "cx-rank" }, `#${rank + 1}`),
      el("span", { class: "cx-score" }, `score ${fmt(ex.score)}`),
      el("span", { class: "muted" }, `text ${ex.text_index} · ${where}`),
      el("span", { class: "spacer" }),
      url
        ? el(
            "a",
            { class: "btn small cx-open", href: url, title: `Open text ${ex.text_index} on ${headLabel(head)} in the Heads view` },
            `Open on ${headLabel(head)} ↗`,
          )
        : null,
    ),
    el("div", { class: "cx-text" }, parts),
  );
}

export function statTable(h, metrics) {
  const row = (m) => {
    const s = h[m];
    const cells = s && s.n ? [fmt(s.mean), `± ${fmt((s.ci_high - s.ci_low) / 2)}`, `[${fmt(s.ci_low)}, ${fmt(s.ci_high)}]`, String(s.n)] : ["–", "", "", "0"];
    return el("tr", {}, el("th", { scope: "row" }, metricLabel(m)), cells.map((c) => el("td", {}, c)));
  };
  return el(
    "table",
    { class: "hstats" },
    el("thead", {}, el("tr", {}, ["metric", "mean", "CI half", "95% CI", "n"].map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, metrics.map(row)),
  );
}

/**
 * Render the panel. `examples` is the /examples response for `metric`, or null while it loads.
 * @param {HTMLElement} root
 * @param {{data: object, head: {layer: number, head: number} | null, metric: string, examples: object | null}} view
 */
export function renderHead(root, { data, head, metric, examples, pageURL = null }) {
  if (!head) return fill(root, el("p", { class: "empty" }, "Click a head in the grid or the scatter to see its top examples."));
  const h = data.heads.find((x) => x.layer === head.layer && x.head === head.head);
  if (!h) return fill(root, el("p", { class: "empty" }, `${headLabel(head)} is not a head of this model.`));
  const list = examples
    ? examples.examples.length
      ? el("ol", { class: "cx-list" }, examples.examples.map((ex, i) => exampleItem(ex, head, i)))
      : el("p", { class: "muted" }, "No text counts for this metric on this head.")
    : el("p", { class: "muted" }, "loading examples…");
  fill(
    root,
    el(
      "div",
      { class: "hp-title" },
      el("b", {}, headLabel(head)),
      el("span", { class: "muted" }, `KV group ${h.kv_group}`),
      pageURL ? el("a", { class: "btn small hp-page", href: pageURL, title: `everything this job knows of ${headLabel(head)}` }, "Head page →") : null,
    ),
    statTable(h, data.metrics),
    el(
      "h3",
      {},
      `Top texts by ${metricLabel(metric)} `,
      el("span", { class: "legend-q" }, "query"),
      " ",
      el("span", { class: "legend-k" }, "key"),
    ),
    list,
  );
}
