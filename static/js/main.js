// Entry point: wires the prompt, grid, head view, similarity view and live ablation to one state in the URL.
import { Ablation, allButTop, kvGroupHeads, layerHeads, toggleAll } from "./ablation.js";
import * as api from "./api.js";
import { Grid, ROLE_NAMES } from "./grid.js";
import { HeadView } from "./heatmap.js";
import { renderModel } from "./modelcard.js";
import { SimilarityView } from "./similarity.js";
import * as store from "./state.js";
import { download, el, fill, headLabel, isAbort, parseHead, sameHead } from "./util.js";

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
let ov = null; // the current /api/overview result, plus .text
let runSeq = 0;
let runCtl = null;
const importance = {}; // method → promise of /api/importance result

const grid = new Grid($("grid"), { legend: $("legend"), info: $("grid-info") }, { select, toggle, compare });
const headView = new HeadView({ plot: $("heatmap"), info: $("head-info"), note: $("head-note") });
const similarityView = new SimilarityView({ plot: $("simplot"), collapse: $("collapse") }, pickPair);
const ablation = new Ablation(
  { panel: $("prediction"), metrics: $("metrics"), topk: $("topk"), tokens: $("token-text"), caption: $("token-caption") },
  () => {
    markPainted($("prediction"), "hs:predicted", "hs:toggle");
    if (S.view === "head" && S.mode === "diff") drawHead();
  },
);

// -- status and errors ---------------------------------------------------------------------------

let pending = 0;
function track(promise, label) {
  pending++;
  $("status").classList.add("busy");
  $("status-text").textContent = label;
  return promise
    .catch((err) => {
      if (!isAbort(err)) showError(err);
    })
    .finally(() => {
      pending--;
      if (!pending) {
        $("status").classList.remove("busy");
        $("status-text").textContent = "idle";
      }
    });
}

function showError(err) {
  console.warn(err);
  $("error-text").textContent = err instanceof api.ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
  $("error").hidden = false;
}

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

function commit() {
  store.save(S);
  grid.mark(S);
  syncControls();
}

function syncControls() {
  const seg = (id, attr, value) => {
    for (const b of $(id).querySelectorAll("button")) b.classList.toggle("on", b.dataset[attr] === value);
  };
  seg("head-mode", "mode", S.mode);
  seg("scale", "scale", S.scale);
  seg("metric", "metric", S.metric);
  seg("order", "order", S.order);
  seg("click-mode", "mode", grid.clickMode);
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("on", b.dataset.view === S.view);
  $("view-head").hidden = S.view !== "head";
  $("view-similarity").hidden = S.view !== "similarity";
  $("color-by").value = S.color;
  $("abl-mode").value = S.abl;
  $("scope").value = S.scope;
  $("cmp-label").hidden = $("swap").hidden = S.mode !== "compare";
  if (document.activeElement !== $("cmp-input")) $("cmp-input").value = S.cmp ? headLabel(S.cmp) : "";
  const h = S.head;
  $("ablate-layer").disabled = $("ablate-kv").disabled = !h || !model;
  $("ablate-layer").textContent = h ? `Layer ${h.layer}` : "Layer";
  const g = h && model ? model.kv_groups.findIndex((grp) => grp.includes(h.head)) : -1;
  $("ablate-kv").textContent = h && g >= 0 ? `L${h.layer} KV${g}` : "KV group";
  fill(
    $("mask-chips"),
    S.mask.length ? el("span", { class: "muted" }, `${S.mask.length} off:`) : el("span", { class: "muted" }, "no heads switched off"),
    S.mask.slice(0, 40).map((m) => el("button", { type: "button", class: "chip-off", title: "switch back on", onclick: () => toggle(m) }, `${headLabel(m)} ×`)),
    S.mask.length > 40 ? el("span", { class: "muted" }, `+${S.mask.length - 40} more`) : null,
  );
}

function fillColorOptions() {
  const options = [
    ["none", "nothing"],
    ["importance", "importance (gradient)"],
    ["importance_ablation", "importance (ablation, slow)"],
    ...Object.entries(ROLE_NAMES).filter(([key]) => !ov || ov.stats[key]),
  ];
  fill($("color-by"), options.map(([value, label]) => el("option", { value }, label)));
  if (!options.some(([v]) => v === S.color)) S.color = "none";
  $("color-by").value = S.color;
}

// -- running a text ------------------------------------------------------------------------------

async function run() {
  const text = $("prompt").value;
  if (!text.trim()) {
    showError(new Error("type some text first"));
    return;
  }
  performance.mark("hs:enter");
  runCtl?.abort();
  runCtl = new AbortController();
  const seq = ++runSeq;
  S.text = text;
  commit();
  $("error").hidden = true;
  const result = await api.overview(text, { thumb: 32, topK: 10 }, { signal: runCtl.signal });
  if (seq !== runSeq) return;
  ov = { ...result, text };
  headView.setRun(ov);
  similarityView.setRun(ov);
  for (const key of Object.keys(importance)) delete importance[key];
  $("token-count").textContent = `${ov.tokens.length} tokens`;
  fillColorOptions();
  grid.render(ov);
  grid.mark(S);
  markPainted($("grid"), "hs:grid", "hs:enter");
  ablation.setRun(ov);
  refreshAblation();
  applyOverlay();
  refreshView();
}

function getImportance(method) {
  if (!ov) return Promise.reject(new Error("run a prompt first"));
  if (!importance[method]) {
    const seq = runSeq;
    importance[method] = api.importance(ov.text, method, { signal: runCtl.signal });
    importance[method].catch(() => seq === runSeq && delete importance[method]);
  }
  return importance[method];
}

async function applyOverlay() {
  if (!ov) return;
  const key = S.color;
  if (key === "none") return grid.setOverlay(null);
  if (ROLE_NAMES[key]) return grid.setOverlay(ROLE_NAMES[key], ov.stats[key]);
  const method = key === "importance" ? "gradient" : "ablation";
  const seq = runSeq;
  const res = await getImportance(method);
  if (seq === runSeq && S.color === key) grid.setOverlay(`importance (${method})`, res.scores);
}

function refreshAblation() {
  const wantMap = S.view === "head" && S.mode === "diff" && S.head;
  track(ablation.update(S.mask, S.abl, wantMap ? [S.head] : []), "ablating…");
  if (wantMap && !S.mask.length) drawHead();
}

// -- grid actions --------------------------------------------------------------------------------

function setMask(mask) {
  performance.mark("hs:toggle");
  S.mask = mask;
  commit();
  refreshAblation();
}

function toggle(h) {
  setMask(toggleAll(S.mask, [h]));
}

function select(h) {
  performance.mark("hs:select");
  S.head = h;
  S.view = "head";
  if (sameHead(S.cmp, h) && S.mode === "compare") S.cmp = null;
  commit();
  refreshView();
  if (S.mode === "diff") refreshAblation();
}

function compare(h) {
  if (!S.head) return select(h);
  S.cmp = h;
  S.mode = "compare";
  S.view = "head";
  commit();
  refreshView();
}

// -- views ---------------------------------------------------------------------------------------

function refreshView() {
  if (!ov) return;
  if (S.view === "head") track(drawHead(), "loading map…");
  else track(drawSimilarityView(), "comparing heads…");
}

const plotHeight = (div) => Math.max(420, window.innerHeight - div.getBoundingClientRect().top - 24);

async function drawHead() {
  const plot = $("heatmap");
  if (await headView.draw(S, ablation.result, plotHeight(plot))) markPainted(plot, "hs:heatmap", "hs:select");
}

async function drawSimilarityView() {
  const plot = $("simplot");
  if (await similarityView.draw(S, plotHeight(plot) - 40)) markPainted(plot, "hs:similarity", "hs:enter");
}

function pickPair(a, b) {
  S.head = a;
  S.cmp = sameHead(a, b) ? null : b;
  S.mode = "compare";
  S.view = "head";
  commit();
  refreshView();
}

// -- export --------------------------------------------------------------------------------------

function exportJSON() {
  const data = {
    model: model?.name ?? null,
    text: S.text,
    state: { mask: S.mask, head: S.head, compare: S.cmp, view: S.view, mode: S.mode, scale: S.scale, ablation_mode: S.abl },
    url: location.href,
    tokens: ov?.tokens ?? null,
    token_ids: ov?.token_ids ?? null,
    prediction: ov?.prediction ?? null,
    stats: ov?.stats ?? null,
    ablation: ablation.result,
    heatmap: headView.shown,
    similarity: similarityView.shown,
  };
  download(`headscope-${Date.now()}.json`, new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
}

function exportPlot(div, name) {
  if (!div.querySelector(".main-svg")) return showError(new Error("nothing to export yet"));
  window.Plotly.downloadImage(div, { format: "png", filename: name, scale: 2, width: div.clientWidth, height: div.clientHeight });
}

// -- wiring --------------------------------------------------------------------------------------

function onSeg(id, attr, apply) {
  $(id).addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b?.dataset[attr]) apply(b.dataset[attr]);
  });
}

function wire() {
  fill($("examples"), EXAMPLES.map(([name, text]) => el("button", { type: "button", class: "example", title: text, onclick: () => {
    $("prompt").value = text;
    track(run(), "running…");
  } }, name)));
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    track(run(), "running…");
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      track(run(), "running…");
    }
  });
  $("error-close").addEventListener("click", () => ($("error").hidden = true));
  onSeg("click-mode", "mode", (m) => {
    grid.clickMode = m;
    $("grid").classList.toggle("ablate-mode", m === "ablate");
    syncControls();
  });
  onSeg("head-mode", "mode", (m) => {
    S.mode = m;
    commit();
    if (m === "diff") refreshAblation();
    refreshView();
  });
  onSeg("scale", "scale", (s) => {
    S.scale = s;
    commit();
    refreshView();
  });
  onSeg("metric", "metric", (m) => {
    S.metric = m;
    commit();
    refreshView();
  });
  onSeg("order", "order", (o) => {
    S.order = o;
    commit();
    refreshView();
  });
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => {
      S.view = tab.dataset.view;
      commit();
      refreshView();
    });
  }
  $("scope").addEventListener("change", () => {
    S.scope = $("scope").value;
    commit();
    refreshView();
  });
  $("color-by").addEventListener("change", () => {
    S.color = $("color-by").value;
    commit();
    track(applyOverlay(), S.color === "importance_ablation" ? "ablating each head…" : "scoring heads…");
  });
  $("show-maps").addEventListener("change", () => $("grid").classList.toggle("no-maps", !$("show-maps").checked));
  $("abl-mode").addEventListener("change", () => {
    S.abl = $("abl-mode").value;
    commit();
    refreshAblation();
  });
  $("cmp-input").addEventListener("change", () => {
    const h = parseHead($("cmp-input").value);
    if (h && model && h.layer < model.n_layers && h.head < model.n_heads) compare(h);
    else showError(new Error(`not a head of this model: ${$("cmp-input").value} (write it as L4H1)`));
  });
  $("swap").addEventListener("click", () => {
    if (!S.cmp || !S.head) return;
    [S.head, S.cmp] = [S.cmp, S.head];
    commit();
    refreshView();
  });
  $("reset").addEventListener("click", () => setMask([]));
  $("ablate-layer").addEventListener("click", () => S.head && setMask(toggleAll(S.mask, layerHeads(S.head.layer, model.n_heads))));
  $("ablate-kv").addEventListener("click", () => S.head && setMask(toggleAll(S.mask, kvGroupHeads(S.head, model.kv_groups))));
  $("keep-top").addEventListener("click", () =>
    track(
      getImportance("gradient").then((res) => setMask(allButTop(res.scores, Math.max(1, Number($("keep-k").value) || 10)))),
      "scoring heads…",
    ),
  );
  $("grid-png").addEventListener("click", async () => {
    const blob = await grid.toBlob();
    if (blob) download("headscope-grid.png", blob);
  });
  $("heat-png").addEventListener("click", () => exportPlot($("heatmap"), `headscope-${headView.shown?.panels.map((p) => p.title).join("-") ?? "map"}`));
  $("sim-png").addEventListener("click", () => exportPlot($("simplot"), `headscope-similarity-${S.metric}`));
  $("export-json").addEventListener("click", exportJSON);
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(refreshView, 200);
  });
}

/** Keep only heads this model has (a shared URL may come from another model). */
function validHeads() {
  const ok = (h) => h && h.layer < model.n_layers && h.head < model.n_heads;
  S.mask = S.mask.filter(ok);
  if (!ok(S.head)) S.head = null;
  if (!ok(S.cmp)) S.cmp = null;
  if (S.scope !== "all" && Number(S.scope) >= model.n_layers) S.scope = "all";
}

async function start() {
  wire();
  fillColorOptions();
  $("prompt").value = S.text || EXAMPLES[0][1];
  syncControls();
  model = await api.model();
  renderModel($("model-body"), $("model-chip"), model);
  grid.setModel(model);
  headView.setModel(model);
  fill($("scope"), el("option", { value: "all" }, "all layers"), [...Array(model.n_layers).keys()].map((l) => el("option", { value: String(l) }, `layer ${l}`)));
  validHeads();
  commit();
  document.body.dataset.ready = "1";
  if (S.text) await run();
}

track(start(), "loading…");
