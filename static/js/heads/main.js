// Entry point of the Heads page: wires the prompt, grid, head view, similarity view and live ablation to one
// state in the URL.
import * as api from "../lib/api.js";
import { hideError, showError, showModel, track, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { SimilarityView } from "../lib/similarity.js";
import { el, fill, headLabel, isAbort, parseHead, sameHead } from "../lib/util.js";
import { Ablation, allButTop, kvGroupHeads, layerHeads, toggleAll } from "./ablation.js";
import { CompositionView } from "./composition.js";
import { exportGrid, exportJSON, exportPlot, slug } from "./export.js";
import { Grid } from "./grid.js";
import { CircuitsView } from "./headcircuits.js";
import { HeadView } from "./heatmap.js";
import { renderModel } from "./modelcard.js";
import { IMPORTANCE, Overlays } from "./overlays.js";
import { Progress } from "./progress.js";
import { saveCompositionHTML, saveHTML } from "./savehtml.js";
import * as store from "./state.js";
import { TokenCounter, plural } from "./tokencount.js";
import { WhyHere } from "./whyhere.js";

const EXAMPLES = [
  ["Repeated phrase", "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you very much. Mr and Mrs Dursley, of number four, Privet Drive"],
  ["Indirect object", "When Mary and John went to the store, John gave a drink to"],
  ["Code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(fibonacci("],
  ["Random words ×2", "tulip orbit 47 marble quiet saxophone lantern drift ember. tulip orbit 47 marble quiet saxophone lantern"],
  ["Facts", "The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of"],
];

const $ = (id) => document.getElementById(id);
const S = store.fromURL();
let model = null;
let ov = null; // the last good /api/overview result, plus .text: everything on screen belongs to it
const runs = new Latest(); // the /api/overview run; its signal also stops the run's importance requests

const grid = new Grid($("grid"), { legend: $("legend"), info: $("grid-info") }, { select, toggle, compare });
const headView = new HeadView({ plot: $("heatmap"), info: $("head-info"), note: $("head-note") });
const similarityView = new SimilarityView({ plot: $("simplot"), collapse: $("collapse"), collapseBox: $("collapse-box") }, pickPair);
const whyHere = new WhyHere($("why"), { onHead: select, onClose: () => step({ why: null }) });
const circuitsView = new CircuitsView($("circuits"), select);
const compositionView = new CompositionView({ plot: $("compplot"), caption: $("comp-caption") }, select);
const counter = new TokenCounter($("token-count"));
const overlays = new Overlays();
const progress = new Progress({
  box: $("progress"),
  text: $("progress-text"),
  run: $("run"),
  stale: ["grid-scroll", "prediction", "view-panel", "ablate-bar"].map($),
});
const ablation = new Ablation(
  { panel: $("prediction"), metrics: $("metrics"), topk: $("topk"), tokens: $("token-text"), caption: $("token-caption") },
  () => {
    markPainted($("prediction"), "hs:predicted", "hs:toggle");
    if (S.view === "head" && S.mode === "diff") track(drawHead(), "loading map…");
  },
);

// -- status and errors ---------------------------------------------------------------------------

// a promise nobody awaited still reaches the user
window.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  if (!isAbort(e.reason)) showError(e.reason);
});

/** Record when a view has been painted (the frame after its DOM changed), for tests and timing. */
function markPainted(node, mark, since) {
  requestAnimationFrame(() =>
    setTimeout(() => {
      performance.mark(mark);
      if (performance.getEntriesByName(since).length) performance.measure(`${mark}-${since}`, since, mark);
      node.dataset.painted = String(Number(node.dataset.painted || 0) + 1);
    }),
  );
}

// -- state → page --------------------------------------------------------------------------------

/** The one way the state changes: apply `patch`, write the address bar (a history entry when `push`), mark the grid. */
function update(patch, { push = false } = {}) {
  store.update(S, patch, { push });
  grid.mark(S);
  syncControls();
}

function syncControls() {
  const seg = (id, attr, value) => {
    for (const b of $(id).querySelectorAll("button")) {
      b.classList.toggle("on", b.dataset[attr] === value);
      b.setAttribute("aria-pressed", String(b.dataset[attr] === value));
    }
  };
  seg("head-mode", "mode", S.mode);
  seg("scale", "scale", S.scale);
  seg("metric", "metric", S.metric);
  seg("order", "order", S.order);
  seg("click-mode", "mode", grid.clickMode);
  seg("comp-kind", "kind", S.comp);
  for (const b of document.querySelectorAll(".tabs button")) {
    const on = b.dataset.view === S.view;
    b.classList.toggle("on", on);
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
  }
  $("view-head").hidden = S.view !== "head";
  $("view-similarity").hidden = S.view !== "similarity";
  $("view-circuits").hidden = S.view !== "circuits";
  $("view-composition").hidden = S.view !== "composition";
  $("color-by").value = S.color;
  $("abl-mode").value = S.abl;
  $("scope").value = S.scope;
  $("scope-kv").value = S.kv;
  $("scope-kv").disabled = S.scope === "all";
  $("cmp-label").hidden = $("swap").hidden = S.mode !== "compare";
  if (document.activeElement !== $("cmp-input")) $("cmp-input").value = S.cmp ? headLabel(S.cmp) : "";
  const h = S.head;
  $("ablate-layer").disabled = $("ablate-kv").disabled = !h || !model;
  $("ablate-layer").textContent = h ? `Layer ${h.layer}` : "Layer";
  const g = h && model ? model.kv_groups.findIndex((grp) => grp.includes(h.head)) : -1;
  $("ablate-kv").textContent = h && g >= 0 ? `L${h.layer} KV${g}` : "KV group";
  // one line in layer / head order, so the grid below never moves
  const mask = [...S.mask].sort((a, b) => a.layer - b.layer || a.head - b.head);
  fill(
    $("mask-chips"),
    el("span", { class: "muted" }, mask.length ? `${mask.length} off:` : "no heads switched off"),
    mask.map((m) => el("button", { type: "button", class: "chip-off", title: `switch ${headLabel(m)} back on`, onclick: () => toggle(m) }, `${headLabel(m)} ×`)),
  );
}

/** Fill the "Colour by" choices for the run on screen; returns the choice that stands for `wanted` (for update()). */
function colorChoice(wanted) {
  return overlays.fillSelect($("color-by"), wanted);
}

// -- running a text ------------------------------------------------------------------------------

/** Run `text`; on success everything on screen and in the URL moves to it, on failure nothing does. */
async function run(text, { push = true } = {}) {
  if (!text.trim()) {
    showError(new Error("type some text first"));
    return;
  }
  performance.mark("hs:enter");
  const signal = runs.next();
  hideError();
  const known = counter.count !== null && counter.text === text;
  progress.start(known ? plural(counter.count, "token") : plural(text.length, "character"), !!ov);
  let result;
  try {
    result = await api.overview(text, { thumb: 32, topK: 10 }, { signal });
  } catch (err) {
    if (!runs.isCurrent(signal) || isAbort(err)) return;
    const kept = ov ? `The page still shows the last good run (${plural(ov.tokens.length, "token")}); the address bar points to it.` : "";
    showError(err, kept);
    return;
  } finally {
    if (runs.isCurrent(signal)) progress.stop();
  }
  if (!runs.isCurrent(signal)) return;
  const why = !push || ov?.text === text ? S.why : null; // a new text typed in: the open cell was another text's
  ov = { ...result, text };
  overlays.setRun(ov, signal);
  headView.setRun(ov);
  whyHere.setRun(ov);
  similarityView.setRun(ov);
  counter.setRunText(text, ov.tokens.length);
  update({ text, color: colorChoice(S.color), why }, { push });
  grid.render(ov);
  grid.mark(S);
  markPainted($("grid"), "hs:grid", "hs:enter");
  ablation.setRun(ov);
  refreshAblation();
  track(applyOverlay(), "scoring heads…", () => overlays.cancel());
  refreshView();
}

function cancelRun() {
  runs.cancel();
  progress.stop();
}

async function applyOverlay() {
  if (!ov) return;
  const o = overlays.find(S.color);
  if (!o || o.name === "none") {
    grid.setOverlay(null);
    grid.setLegendNote(overlays.note);
    return;
  }
  if (o.name in ov.stats) return grid.setOverlay(o.label, ov.stats[o.name], o.description);
  // fetched: say so where the legend goes, with the time it has taken (the ablation sweep takes a while)
  grid.setOverlay(null);
  const t0 = performance.now();
  const doing = o.method === "ablation" ? "switching off each head in turn" : "computing";
  const say = () => grid.setLegendNote(`${o.label}: ${doing}… ${Math.round((performance.now() - t0) / 1000)} s`);
  say();
  const timer = setInterval(say, 1000);
  const asked = runs.signal; // a run started (or cancelled) since makes this answer stale
  try {
    const g = await overlays.scores(o);
    if (!runs.isCurrent(asked) || S.color !== o.name) return;
    grid.setOverlay(o.label, g, o.description);
  } catch (err) {
    if (runs.isCurrent(asked) && S.color === o.name) grid.setLegendNote(`${o.label}: ${isAbort(err) ? "cancelled" : "not available"}`);
    throw err;
  } finally {
    clearInterval(timer);
  }
}

function refreshAblation() {
  const wantMap = S.view === "head" && S.mode === "diff" && S.head;
  track(ablation.update(S.mask, S.abl, wantMap ? [S.head] : []), "ablating…", () => ablation.cancel());
  if (wantMap && !S.mask.length) track(drawHead(), "loading map…");
}

// -- grid actions --------------------------------------------------------------------------------

function setMask(mask) {
  performance.mark("hs:toggle");
  update({ mask }, { push: true });
  refreshAblation();
  if (S.why && S.view === "head") track(drawWhy(), "explaining the score…"); // its note counts the heads off
}

function toggle(h) {
  setMask(toggleAll(S.mask, [h]));
}

function select(h) {
  performance.mark("hs:select");
  const cmp = sameHead(S.cmp, h) && S.mode === "compare" ? null : S.cmp;
  update({ head: h, cmp, view: S.view === "circuits" ? "circuits" : "head" }, { push: true });
  refreshView().then(revealView);
  if (S.mode === "diff") refreshAblation();
}

function compare(h) {
  if (!S.head) return select(h);
  update({ cmp: h, mode: "compare", view: "head" }, { push: true });
  refreshView().then(revealView);
}

function pickPair(a, b) {
  update({ head: a, cmp: sameHead(a, b) ? null : b, mode: "compare", view: "head" }, { push: true });
  refreshView().then(revealView);
}

/** In the one-column layout the map is drawn far below the grid: bring it into sight. */
function revealView() {
  const top = $({ head: "heatmap", circuits: "circuits", composition: "compplot" }[S.view] ?? "simplot").getBoundingClientRect().top;
  if (top > window.innerHeight - 150 || top < 0) $("view-panel").scrollIntoView({ block: "start", behavior: "smooth" });
}

// -- views ---------------------------------------------------------------------------------------

function refreshView() {
  if (!ov) return Promise.resolve();
  if (S.view === "head") return track(drawHead(), "loading map…");
  if (S.view === "circuits") return track(drawCircuits(), "reading the head's weights…");
  if (S.view === "composition") return track(drawComposition(), "composition scores…");
  return track(drawSimilarityView(), "comparing heads…");
}

const plotHeight = (div) => Math.max(420, window.innerHeight - div.getBoundingClientRect().top - 24);

async function drawHead() {
  const plot = $("heatmap");
  const painted = await headView.draw(S, ablation.result, plotHeight(plot));
  $("why-hint").hidden = !S.head || !!S.why;
  if (painted) {
    whyHere.bindMap(plot, mapHead, openWhy);
    await whyHere.markCell(plot, S.why, mapHead);
    markPainted(plot, "hs:heatmap", "hs:select");
  }
  await drawWhy();
}

/** The head whose unchanged map panel `i` of the head view draws (null: an ablated or difference panel). */
function mapHead(i) {
  if (i === 0) return S.head;
  return i === 1 && S.mode === "compare" ? S.cmp : null;
}

function openWhy(h, q, k) {
  update({ why: { layer: h.layer, head: h.head, q, k } }, { push: true });
  $("why-hint").hidden = true;
  whyHere.markCell($("heatmap"), S.why, mapHead);
  track(drawWhy().then((ok) => ok && $("why").scrollIntoView({ block: "start", behavior: "smooth" })), "explaining the score…");
}

/** Draw the open "Why here?" cell (or hide the panel); resolves to true when painted. */
async function drawWhy() {
  const painted = await whyHere.draw(S.why, S.mask.length);
  if (painted) markPainted($("why"), "hs:why", "hs:enter");
  return painted;
}

async function drawCircuits() {
  if (await circuitsView.draw(S.head)) markPainted($("circuits"), "hs:circuits", "hs:select");
}

async function drawComposition() {
  const plot = $("compplot");
  if (await compositionView.draw(S.comp, S.head, plotHeight(plot))) markPainted(plot, "hs:composition", "hs:enter");
}

async function drawSimilarityView() {
  const plot = $("simplot");
  if (await similarityView.draw(S, plotHeight(plot) - 40)) markPainted(plot, "hs:similarity", "hs:enter");
}

// -- history -------------------------------------------------------------------------------------

/** Back / Forward: the state of that entry, re-running only what it changes. */
const maskKey = (s) => `${s.abl}:${s.mask.map(headLabel).sort().join()}`;

function restore() {
  if (!$("progress").hidden) cancelRun(); // Back during a run: the run is not wanted either
  const before = { color: S.color, mask: maskKey(S) };
  const next = model ? validHeads(store.fromURL()) : store.fromURL();
  update({ ...next, color: colorChoice(next.color) });
  if (S.text && S.text !== ov?.text) {
    $("prompt").value = S.text;
    counter.update(S.text);
    track(run(S.text, { push: false }), "running…");
    return;
  }
  if (before.mask !== maskKey(S)) refreshAblation();
  if (before.color !== S.color) track(applyOverlay(), "scoring heads…");
  refreshView();
}

// -- export --------------------------------------------------------------------------------------

/** The data behind what is on screen: the run, the overlay and scores shown, the ablation, the open view. */
function exportData() {
  const overlay = S.color === "none" ? null : overlays.find(S.color);
  const { text, ...state } = S;
  return {
    model: model?.name ?? null,
    url: location.href,
    text: ov?.text ?? null,
    state,
    tokens: ov?.tokens ?? null,
    token_ids: ov?.token_ids ?? null,
    prediction: ov?.prediction ?? null,
    stats: ov?.stats ?? null,
    overlay: overlay && grid.overlay ? { name: overlay.name, label: overlay.label, description: overlay.description, scores: grid.overlay.grid } : null,
    scores: overlays.arrived,
    ablation: S.mask.length ? ablation.result : null,
    heatmap: S.view === "head" ? headView.shown : null,
    why_here: S.view === "head" ? whyHere.shown : null,
    circuits: S.view === "circuits" ? circuitsView.shown : null,
    composition: S.view === "composition" ? compositionView.shown : null,
    similarity: S.view === "similarity" ? similarityView.shown : null,
  };
}

function plotExport(div, name, format) {
  if (!exportPlot(div, name, format)) showError(new Error("nothing to export yet"));
}

// -- wiring --------------------------------------------------------------------------------------

function onSeg(id, attr, apply) {
  $(id).addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b?.dataset[attr]) apply(b.dataset[attr]);
  });
}

/** A change of one state key, as a history entry, then whatever it needs redrawn. */
function step(patch, after = refreshView) {
  update(patch, { push: true });
  after();
}

function keepTop() {
  const n = model.n_layers * model.n_heads;
  const raw = $("keep-k").value.trim();
  const k = Number(raw);
  const ok = /^\d+$/.test(raw) && k >= 1 && k <= n;
  $("keep-k").setAttribute("aria-invalid", String(!ok));
  $("keep-msg").textContent = ok ? "important heads" : `k must be a whole number from 1 to ${n}`;
  $("keep-msg").classList.toggle("field-error", !ok);
  if (!ok) return;
  if (!ov) return showError(new Error("run a prompt first"));
  track(
    overlays.scores(IMPORTANCE[0]).then((g) => setMask(allButTop(g, k))),
    "scoring heads…",
    () => overlays.cancel(),
  );
}

function wire() {
  fill($("examples"), EXAMPLES.map(([name, text]) => el("button", { type: "button", class: "example", title: text, onclick: () => {
    $("prompt").value = text;
    counter.update(text);
    track(run(text), "running…");
  } }, name)));
  const submit = () => track(run($("prompt").value), "running…");
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!$("run").disabled || $("prompt").value !== ov?.text) submit();
    }
  });
  $("prompt").addEventListener("input", () => counter.update($("prompt").value));
  $("progress-cancel").addEventListener("click", cancelRun);
  wireChrome();
  onSeg("click-mode", "mode", (m) => {
    grid.clickMode = m;
    $("grid").classList.toggle("ablate-mode", m === "ablate");
    syncControls();
  });
  onSeg("head-mode", "mode", (m) => step({ mode: m }, () => {
    if (m === "diff") refreshAblation();
    refreshView();
  }));
  onSeg("scale", "scale", (s) => step({ scale: s }));
  onSeg("metric", "metric", (m) => step({ metric: m }));
  onSeg("order", "order", (o) => step({ order: o }));
  onSeg("comp-kind", "kind", (k) => step({ comp: k }));
  const tabs = [...document.querySelectorAll(".tabs button")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => step({ view: tab.dataset.view }));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab) + (e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0);
      if (i === tabs.indexOf(tab)) return;
      const next = tabs[(i + tabs.length) % tabs.length];
      next.focus();
      next.click();
    });
  }
  $("scope").addEventListener("change", () => step({ scope: $("scope").value, kv: "all" }));
  $("scope-kv").addEventListener("change", () => step({ kv: $("scope-kv").value }));
  $("color-by").addEventListener("change", () => {
    overlays.note = "";
    step({ color: $("color-by").value }, () =>
      track(applyOverlay(), S.color === "importance_ablation" ? "switching off each head…" : "scoring heads…", () => overlays.cancel()),
    );
  });
  $("show-maps").addEventListener("change", () => $("grid").classList.toggle("no-maps", !$("show-maps").checked));
  $("abl-mode").addEventListener("change", () => step({ abl: $("abl-mode").value }, refreshAblation));
  $("cmp-input").addEventListener("change", () => {
    const h = parseHead($("cmp-input").value);
    if (h && model && h.layer < model.n_layers && h.head < model.n_heads) compare(h);
    else showError(new Error(`not a head of this model: ${$("cmp-input").value} (write it as L4H1)`));
  });
  $("swap").addEventListener("click", () => S.cmp && S.head && step({ head: S.cmp, cmp: S.head }));
  $("reset").addEventListener("click", () => setMask([]));
  $("ablate-layer").addEventListener("click", () => S.head && setMask(toggleAll(S.mask, layerHeads(S.head.layer, model.n_heads))));
  $("ablate-kv").addEventListener("click", () => S.head && setMask(toggleAll(S.mask, kvGroupHeads(S.head, model.kv_groups))));
  $("keep-top").addEventListener("click", keepTop);
  $("keep-k").addEventListener("keydown", (e) => e.key === "Enter" && keepTop());
  for (const format of ["png", "svg"]) {
    $(`grid-${format}`).addEventListener("click", () =>
      track(exportGrid(grid, format).then((ok) => ok || showError(new Error("run a prompt first"))), "exporting…"),
    );
    $(`heat-${format}`).addEventListener("click", () =>
      plotExport($("heatmap"), `headscope-${headView.shown?.panels.map((p) => slug(p.title)).join("-") ?? "map"}`, format),
    );
    $(`sim-${format}`).addEventListener("click", () => plotExport($("simplot"), `headscope-similarity-${S.metric}`, format));
    $(`collapse-${format}`).addEventListener("click", () => plotExport($("collapse"), `headscope-within-layer-${S.metric}`, format));
    $(`comp-${format}`).addEventListener("click", () => plotExport($("compplot"), `headscope-composition-${S.comp}`, format));
  }
  $("export-json").addEventListener("click", () => exportJSON(exportData()));
  for (const view of ["grid", "heat", "sim"]) {
    $(`${view}-html`).addEventListener("click", () =>
      ov ? track(saveHTML(ov.text, S, view), "saving HTML…") : showError(new Error("run a prompt first")),
    );
  }
  $("comp-html").addEventListener("click", () => track(saveCompositionHTML($("compplot"), S.comp, ov?.text), "saving HTML…"));
  window.addEventListener("popstate", restore);
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(refreshView, 200);
  });
}

/** State `s` with only heads this model has (a shared URL may come from another model). */
function validHeads(s) {
  const ok = (h) => h && h.layer < model.n_layers && h.head < model.n_heads;
  const scope = s.scope !== "all" && Number(s.scope) >= model.n_layers ? "all" : s.scope;
  const kv = scope === "all" || Number(s.kv) >= model.n_kv_heads ? "all" : s.kv;
  const why = ok(s.why) ? s.why : null;
  return { ...s, mask: s.mask.filter(ok), head: ok(s.head) ? s.head : null, cmp: ok(s.cmp) ? s.cmp : null, scope, kv, why };
}

async function start() {
  wire();
  $("prompt").value = S.text || EXAMPLES[0][1];
  syncControls();
  let roles;
  [model, { roles }] = await Promise.all([api.model(), api.roles()]);
  overlays.setRoles(roles);
  showModel(model, "full");
  renderModel($("model-body"), model);
  grid.setModel(model);
  grid.setRoles(roles);
  headView.setModel(model);
  headView.setRoles(roles);
  counter.setLimit(model.max_tokens);
  counter.update($("prompt").value);
  $("keep-k").max = String(model.n_layers * model.n_heads);
  fill($("scope"), el("option", { value: "all" }, "all layers"), [...Array(model.n_layers).keys()].map((l) => el("option", { value: String(l) }, `layer ${l}`)));
  fill($("scope-kv"), el("option", { value: "all" }, "all its heads"), model.kv_groups.map((g, i) => el("option", { value: String(i) }, `KV${i} (H${g.join(", H")})`)));
  const valid = validHeads(S);
  update({ ...valid, color: colorChoice(valid.color) });
  await run($("prompt").value, { push: false }); // cheap, and the page is not an empty box on arrival
  requestAnimationFrame(() => setTimeout(() => (document.body.dataset.ready = "1")));
}

track(start(), "loading…");
