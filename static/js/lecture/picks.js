// A clicked point of a dataset's curve: its loss is a mean over the texts, so the click lists them and each opens
// the Heads view on that one text with exactly those heads switched off.
import { headsURL } from "../heads/state.js";
import { el, fill, fmt, headLabel } from "../lib/util.js";

const PREVIEW = 90; // characters of each text shown in the list

const ORDER = { importance: () => "importance order", random: (seed) => `random order, seed ${seed}` };

/**
 * Show the texts a dataset point was measured on.
 * @param {HTMLElement} node the list's box (hidden until a point is picked)
 * @param {{heads: object[], loss: number, order: string, seed: number|null, texts: {index: number, text: string}[], nTexts: number}} pick
 */
export function renderPicks(node, { heads, loss, order, seed, texts, nTexts }) {
  const n = heads.length;
  const shown = heads.length > 8 ? `${heads.slice(0, 8).map(headLabel).join(", ")}, …` : heads.map(headLabel).join(", ") || "none";
  node.hidden = false;
  fill(
    node,
    el(
      "div",
      { class: "picks-head" },
      el("b", {}, `${n} head${n === 1 ? "" : "s"} off`),
      ` (${ORDER[order](seed)}: ${shown}) · loss ${fmt(loss)} nats, the mean over ${nTexts} text${nTexts === 1 ? "" : "s"}. Each text has a loss of its own: open one in the Heads view with these heads switched off.`,
      el("button", { type: "button", class: "btn small picks-close", "aria-label": "close the list", onclick: () => hidePicks(node) }, "×"),
    ),
    el(
      "ol",
      { class: "picks-list" },
      texts.map((t) =>
        el(
          "li",
          {},
          el("span", { class: "muted" }, `text ${t.index}`),
          el("a", { href: headsURL({ text: t.text, mask: heads }), title: t.text }, t.text.length > PREVIEW ? `${t.text.slice(0, PREVIEW - 1)}…` : t.text),
        ),
      ),
    ),
  );
  node.scrollIntoView({ block: "nearest" });
}

export function hidePicks(node) {
  node.hidden = true;
  fill(node);
}
