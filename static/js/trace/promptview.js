// The two prompts as token strips (positions where they differ marked, a token clickable for the token
// view) and the answer / wrong pickers filled from both runs' next-token top-k.
import { el, fill, percent, visible } from "../lib/util.js";

/**
 * One prompt's tokens as a strip. `other` is the other prompt's tokens (same length: differing positions
 * get the class "diff"); `selected` is the chosen query position or null; `pos` the read-out position.
 */
export function renderStrip(node, tokens, other, { selected = null, pos = null, weights = null } = {}) {
  const comparable = other && other.length === tokens.length;
  fill(
    node,
    tokens.map((t, i) => {
      const cls = ["t"];
      if (comparable && other[i] !== t) cls.push("diff");
      if (i === selected) cls.push("query");
      if (i === pos) cls.push("readout");
      if (weights && i > selected) cls.push("future");
      return el("span", { class: cls.join(" "), role: "option", "aria-selected": String(i === selected), dataset: { i: String(i) } }, visible(t));
    }),
  );
  return comparable ? tokens.reduce((n, t, i) => n + Number(other[i] !== t), 0) : null;
}

/** A strip's clicks and keys: click a token, or ←/→/Home/End with the strip focused, to pick a position. */
export function wireStrip(node, count, current, pick) {
  node.addEventListener("click", (e) => {
    const t = e.target.closest(".t");
    if (t) pick(Number(t.dataset.i), true);
  });
  node.addEventListener("keydown", (e) => {
    const n = count();
    if (!n) return;
    const at = current() ?? n - 1;
    const step = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: n - 1 }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    pick(Math.min(n - 1, Math.max(0, step)), false);
  });
}

/**
 * Fill a <select> with candidate tokens: the clean run's top-k, then the corrupted run's, each labelled
 * with its probability in both runs. `chosen` stays selectable even when it is in neither list.
 */
export function renderPicker(select, clean, corrupted, chosen) {
  const probs = new Map();
  for (const t of clean) probs.set(t.token, [t.prob, null]);
  for (const t of corrupted) probs.set(t.token, [probs.get(t.token)?.[0] ?? null, t.prob]);
  if (chosen && !probs.has(chosen)) probs.set(chosen, [null, null]);
  const p = (x) => (x === null ? "–" : percent(x));
  fill(
    select,
    [...probs].map(([token, [a, b]]) => el("option", { value: token, selected: token === chosen }, `${visible(token)}  (${p(a)} | ${p(b)})`)),
  );
  select.value = chosen;
}
