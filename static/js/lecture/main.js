// Entry point of the Lecture page: the pruning curve (importance vs random orders, on a text or a dataset) and the
// head-count trade-off, driven by one state that lives in the URL.
import { headsURL } from "../heads/state.js";
import * as api from "../lib/api.js";
import { showError, showModel, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { panelTask } from "../lib/paneltask.js";
import { el, fill } from "../lib/util.js";
import { drawCurve, headsAt, renderSummary } from "./curve.js";
import { hidePicks, renderPicks } from "./picks.js";
import * as store from "./state.js";
import { drawTradeoff, renderTable, renderTradeoffSummary } from "./tradeoff.js";

const $ = (id) => document.getElementById(id);
const S = store.fromURL();
const prunes = new Latest(); // the pruning curve's requests
let curves = null; // {importance, random, state}: what is drawn

// -- status, errors, stale panels ----------------------------------------------------------------

/** A panel's work under the status; `cancel` puts a Cancel beside it (the pruning curve's: stop its requests). */
const task = (panel, label, work, cancel = null) => panelTask(panel, label, work, ".lprogress", cancel);

// -- state ↔ controls ----------------------------------------------------------------------------

/** The state the form holds (as a patch for store.update): the source pressed and the fields. */
function readInputs() {
  const n = (id, fallback) => (Number.isInteger(Number(id.value)) && id.value !== "" ? Number(id.value) : fallback);
  return {
    src: $("source").querySelector('button[aria-pressed="true"]')?.dataset.src ?? S.src,
    text: $("text").value,
    dataset: $("dataset").value || S.dataset,
    texts: n($("max-texts"), S.texts),
    tokens: n($("max-tokens"), S.tokens),
    steps: n($("steps"), S.steps),
    seeds: n($("seeds"), S.seeds),
    exact: $("exact").disabled ? S.exact : $("exact").checked, // a dataset leaves the text's choice as it was
  };
}

/** Show the state in the form; `src` shows another source than the state's (a toggle not yet run). */
function syncInputs(src = S.src) {
  $("text").value = S.text;
  if (![...$("dataset").options].some((o) => o.value === S.dataset)) {
    $("dataset").append(el("option", { value: S.dataset }, S.dataset));
  }
  $("dataset").value = S.dataset;
  $("max-texts").value = String(S.texts);
  $("max-tokens").value = String(S.tokens);
  $("steps").value = String(S.steps);
  $("seeds").value = String(S.seeds);
  $("exact").checked = S.exact && src !== "dataset"; // bisecting is for a text: never shown ticked on a dataset
  $("exact").disabled = src === "dataset";
  for (const b of $("source").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.src === src));
  $("text-fields").hidden = src !== "text";
  $("dataset-fields").hidden = src !== "dataset";
}

// -- the curve -----------------------------------------------------------------------------------

async function prune(push = false) {
  store.update(S, readInputs(), { push });
  syncInputs();
  const signal = prunes.next();
  const state = { ...S };
  await task($("curve-panel"), "pruning", async () => {
    const [importance, random] = await Promise.all(
      ["importance", "random"].map((order) => api.pruneCurve(store.curveBody(state, order), { signal })),
    );
    if (!prunes.isCurrent(signal)) return;
    curves = { importance, random, state };
    hidePicks($("curve-picks"));
    renderSummary($("curve-summary"), importance, random);
    drawCurve($("curve-plot"), importance, random, pick);
  }, () => prunes.cancel());
}

/** A clicked point: the main page on the text with exactly those heads off; on a dataset, the list of its texts. */
async function pick(order, k, n) {
  if (!curves) return;
  const curve = curves[order];
  const heads = headsAt(curve, k, n);
  const { state } = curves;
  if (state.src !== "dataset") return location.assign(headsURL({ text: state.text, mask: heads }));
  let texts;
  try {
    texts = (await api.datasetTexts(state.dataset, 0, curve.n_texts)).texts;
  } catch (err) {
    return showError(err);
  }
  const loss = curve.points.find((p) => p.n_pruned === n)?.losses[k];
  const seed = order === "random" ? curve.seeds[k] : null;
  renderPicks($("curve-picks"), { heads, loss, order, seed, texts, nTexts: curve.n_texts });
}

// -- start ---------------------------------------------------------------------------------------

async function start() {
  wireChrome();
  $("curve-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    prune(true);
  });
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      prune(true);
    }
  });
  for (const b of $("source").querySelectorAll("button")) {
    b.addEventListener("click", () => syncInputs(b.dataset.src)); // the state takes the source when it is run
  }
  window.addEventListener("popstate", () => {
    store.update(S, store.fromURL());
    syncInputs();
    prune(false);
  });
  syncInputs();
  let model;
  try {
    [model] = await Promise.all([api.model(), loadDatasets()]);
  } catch (err) {
    showError(err);
    return;
  }
  showModel(model, "heads");
  syncInputs();
  document.body.dataset.ready = "1";
  task($("tradeoff-panel"), "counting", async () => {
    const t = await api.headTradeoff();
    renderTradeoffSummary($("tradeoff-summary"), t);
    renderTable($("tradeoff-table"), t);
    drawTradeoff($("tradeoff-plot"), t);
  });
  prune(false);
}

async function loadDatasets() {
  const { datasets } = await api.datasets();
  fill(
    $("dataset"),
    datasets.map((d) => el("option", { value: d.id }, `${d.name} (${d.n_texts} texts)`)),
  );
}

start();
