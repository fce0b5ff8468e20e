// Entry point of the Trace page: two prompts, activation patching, direct logit attribution, the logit lens
// and the token view, all driven by one state that lives in the URL.
import { headsURL } from "../heads/state.js";
import * as api from "../lib/api.js";
import { hideError, showError, showModel, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { panelTask } from "../lib/paneltask.js";
import { el, fill, fmt, headLabel, isAbort, parseHead, sameHead, signed, visible } from "../lib/util.js";
import { clearDLA, drawHeads, drawLayers, renderSummary } from "./dlaview.js";
import { drawLens, drawLensGrid, renderLensTable } from "./lensview.js";
import { SessionMemo } from "./memo.js";
import { drawPatch, drawResidual, drawRows, rank, renderLegend, renderTopHeads } from "./patchview.js";
import { clear } from "./plot.js";
import { renderPicker, renderStrip, wireStrip } from "./promptview.js";
import * as store from "./state.js";
import { drawLayerHeads, renderControls, renderHighlight } from "./tokenview.js";

const EXAMPLES = [
  {
    name: "Indirect object",
    clean: "When Mary and John went to the store, John gave a drink to",
    corrupted: "When Mary and John went to the store, Mary gave a drink to",
    answer: " Mary",
    wrong: " John",
  },
];

const $ = (id) => document.getElementById(id);
const S = store.fromURL();
let model = null;
let runs = null; // {clean, corrupted}: each prompt's lens result at the read-out position (tokens, top-k)
let att = null; // the token view's /api/attention_from result
const traces = new Latest(); // the trace's requests: lens, attribution, lens grid, patching
const tokenReads = new Latest(); // the token view's requests
let patched = null; // the last /api/patch result drawn

// -- requests: answers are kept for the tab (see memo.js), so toggles, Back/Forward within the page and Back to it
// from another page redraw without asking again

const memo = new SessionMemo();
async function cached(name, body, fn, signal) {
  const key = name + JSON.stringify(body);
  if (memo.has(key)) return memo.get(key);
  const value = await fn(body, { signal });
  memo.set(key, value);
  return value;
}

// -- status, errors, stale panels ----------------------------------------------------------------

/** A panel's work under the status, with a Cancel that stops its requests (`slot`: the trace's, or the token view's). */
const task = (panel, label, work, slot = traces) => panelTask(panel, label, work, ".trace-progress", () => slot.cancel());

// -- state ↔ controls ----------------------------------------------------------------------------

/** The state the form's fields hold (as a patch for store.update). */
function readInputs() {
  const pos = Number.parseInt($("pos").value, 10);
  return {
    clean: $("clean").value,
    corrupted: $("corrupted").value,
    pos: Number.isNaN(pos) ? -1 : pos,
    res: $("residual").checked,
  };
}

function syncInputs() {
  $("clean").value = S.clean;
  $("corrupted").value = S.corrupted;
  $("pos").value = String(S.pos);
  $("residual").checked = S.res;
  $("rows").value = S.rows.map(headLabel).join(", ");
  for (const b of $("direction").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.dir === S.dir));
  $("grid-toggle").setAttribute("aria-pressed", String(S.grid));
}

// -- the trace: lens (and pickers) first, then DLA, the lens grid and patching -------------------

/**
 * Apply `patch` over the form's fields and re-run everything the state asks for; `push` records a history entry
 * (a deliberate step). `edited`: the user typed new prompts, so an answer or wrong token that neither run
 * proposes any more is picked afresh.
 */
async function trace(patch = {}, { push = false, edited = false } = {}) {
  store.update(S, { ...readInputs(), ...patch }, { push });
  syncInputs();
  const signal = traces.next();
  hideError();
  if (!S.clean.trim() || !S.corrupted.trim()) {
    return showError(new Error("type a clean and a corrupted prompt (or pick an example)"));
  }
  for (const id of ["patch-panel", "dla-panel", "token-panel"]) $(id).classList.add("outdated");
  runs = null;
  await task($("lens-panel"), "reading the lens…", async () => {
    const [clean, corrupted] = await Promise.all([
      cached("lens", { text: S.clean, position: S.pos, top_k: 10 }, api.logitLens, signal),
      cached("lens", { text: S.corrupted, position: S.pos, top_k: 10 }, api.logitLens, signal),
    ]);
    store.update(S, pickDefaults(clean, corrupted, edited));
    // the lens of the answer (the first request's target was the model's own top-1)
    const lens =
      clean.target.token === S.answer
        ? clean
        : await cached("lens", { text: S.clean, position: S.pos, top_k: 10, target: S.answer }, api.logitLens, signal);
    runs = { clean, corrupted };
    renderPrompts();
    await drawLensPanel(lens);
  });
  if (!runs || !traces.isCurrent(signal)) return;
  refreshToken();
  await Promise.all([
    task($("dla-panel"), "attributing…", () => drawDLA(signal)),
    task($("lens-panel"), "lens grid…", () => drawGrid(signal)),
    task($("patch-panel"), patchLabel(), () => drawPatching(signal)),
  ]);
}

/** {answer, wrong}: by default the clean run's top-1 and the corrupted run's top-1 (or the clean runner-up). */
function pickDefaults(clean, corrupted, edited) {
  const top = clean.layers.at(-1).top_k;
  const topCorr = corrupted.layers.at(-1).top_k;
  const proposed = (token) => top.some((t) => t.token === token) || topCorr.some((t) => t.token === token);
  let answer = edited && !proposed(S.answer) ? "" : S.answer;
  let wrong = edited && !proposed(S.wrong) ? "" : S.wrong;
  if (!answer) answer = top[0].token;
  if (!wrong || wrong === answer) {
    wrong = (topCorr.find((t) => t.token !== answer) ?? top.find((t) => t.token !== answer)).token;
  }
  renderPicker($("answer"), top, topCorr, answer);
  renderPicker($("wrong"), top, topCorr, wrong);
  return { answer, wrong };
}

function renderPrompts() {
  const a = runs.clean.tokens;
  const b = runs.corrupted.tokens;
  const sel = (which) => (S.tp === which ? S.tok : null);
  const differing = renderStrip($("clean-tokens"), a, b, { selected: sel("clean"), pos: runs.clean.position });
  renderStrip($("corrupted-tokens"), b, a, { selected: sel("corrupted"), pos: runs.corrupted.position });
  fill(
    $("summary"),
    a.length === b.length
      ? `${a.length} tokens each; ${differing} position${differing === 1 ? "" : "s"} differ (marked); read out at position ${runs.clean.position} (${visible(a[runs.clean.position])}).`
      : el("span", { class: "bad" }, `The prompts have ${a.length} and ${b.length} tokens: patching needs the same number.`),
  );
}

async function drawLensPanel(lens) {
  const t = lens.layers.at(-1);
  fill(
    $("lens-summary"),
    `p(${visible(lens.target.token)}) after each block at position ${lens.position}; the last block is the model's output (rank ${t.target_rank}, p ${fmt(t.target_prob)}). Click a layer to open the head view with its heads switched off.`,
  );
  renderLensTable($("lens-table"), { ...lens, layers: lens.layers.map((r) => ({ ...r, top_k: r.top_k.slice(0, 5) })) }, true);
  linkLayers($("lens-table"), S.clean);
  await drawLens($("lens-plot"), lens, 250, (layer, event) => onLayerClick(S.clean, layer, event));
}

async function drawGrid(signal) {
  $("grid-toggle").setAttribute("aria-pressed", String(S.grid));
  if (!S.grid) return clear($("lens-grid"));
  const body = { text: S.clean, position: S.pos, target: S.answer, top_k: 1, grid: true };
  const res = await cached("lens", body, api.logitLens, signal);
  await drawLensGrid($("lens-grid"), res, (layer, event) => onLayerClick(S.clean, layer, event));
}

async function drawDLA(signal) {
  const body = { text: S.clean, position: S.pos, target: S.answer, contrast: S.wrong };
  const nodes = { summary: $("dla-summary"), heads: $("dla-heads"), layers: $("dla-layers") };
  let res;
  try {
    res = await cached("dla", body, api.dla, signal);
  } catch (err) {
    if (!isAbort(err)) clearDLA(nodes, "no attribution (see the error above)");
    throw err;
  }
  renderSummary(nodes.summary, res);
  await drawHeads(nodes.heads, res, onHeadClick);
  await drawLayers(nodes.layers, res);
}

function patchLabel() {
  const heads = model ? `${model.n_layers * model.n_heads} heads` : "every head";
  const extra = [S.res ? "the residual stream" : "", S.rows.length ? `${S.rows.length} heads per position` : ""].filter(Boolean);
  return `patching ${heads}${extra.length ? ` + ${extra.join(" + ")}` : ""}…`;
}

async function drawPatching(signal) {
  const body = {
    clean: S.clean,
    corrupted: S.corrupted,
    answer: S.answer,
    wrong: S.wrong,
    position: S.pos,
    direction: S.dir,
    residual: S.res,
    by_position: S.rows,
  };
  let res;
  try {
    res = await cached("patch", body, api.patch, signal);
  } catch (err) {
    if (!isAbort(err)) {
      clear($("patch-plot"), "no patching result (see the error above)");
      fill($("top-heads"));
      fill($("patch-legend"));
      clear($("rows-plot"));
      clear($("residual-plot"));
    }
    throw err;
  }
  const note =
    res.direction === "denoise"
      ? "Denoise: each head's clean output patched into the corrupted run."
      : "Noise: each head's corrupted output patched into the clean run.";
  fill(
    $("patch-hint"),
    `logit[${visible(res.answer.token)}] − logit[${visible(res.wrong.token)}]: clean ${signed(res.clean_logit_diff, 2)}, corrupted ${signed(res.corrupted_logit_diff, 2)}. ${note} Heads rank by their distance from "no change". Click a head to open it in the head view (switched off); Shift-click adds a per-position row.`,
  );
  patched = res;
  for (const [table, text] of layerLinks) linkLayers(table, text); // each layer's head to open follows patching
  renderLegend($("patch-legend"), res.direction);
  await drawPatch($("patch-plot"), res, onHeadClick);
  renderTopHeads($("top-heads"), res, S.clean);
  await drawRows($("rows-plot"), res);
  $("residual-title").hidden = !res.residual_scores;
  await drawResidual($("residual-plot"), res);
}

function onHeadClick(h, event) {
  if (event?.shiftKey) {
    const rows = S.rows.some((r) => sameHead(r, h)) ? S.rows.filter((r) => !sameHead(r, h)) : [...S.rows, h];
    return trace({ rows }, { push: true });
  }
  location.assign(headsURL({ text: S.clean, head: h, mask: [h] }));
}

// -- a layer of the lens, clicked: what a patching cell's click does, for the layer's heads --------------------

const layerHeads = (layer) => Array.from({ length: model.n_heads }, (_, head) => ({ layer, head }));

/** The head view on `text` with every head of `layer` off, showing its head of largest patching effect (or H0). */
function layerURL(text, layer) {
  const top = patched?.scores[layer] ? rank([patched.scores[layer]], 1, patched.direction)[0].head : 0;
  return headsURL({ text, head: { layer, head: top }, mask: layerHeads(layer) });
}

/** Open the head view with `layer` switched off; Shift: add its heads to the per-position rows (or take them out). */
function onLayerClick(text, layer, event) {
  if (event?.shiftKey) {
    const heads = layerHeads(layer);
    const shown = heads.every((h) => S.rows.some((r) => sameHead(r, h)));
    const rest = S.rows.filter((r) => r.layer !== layer);
    return trace({ rows: shown ? rest : [...rest, ...heads] }, { push: true });
  }
  location.assign(layerURL(text, layer));
}

const layerLinks = new Map(); // a lens table → the text its rows open in the head view

/** Point a lens table's layer links at the head view on `text` (again once patching says which head to show). */
function linkLayers(table, text) {
  layerLinks.set(table, text);
  for (const a of table.querySelectorAll("a[data-layer]")) a.href = layerURL(text, Number(a.dataset.layer));
}

/** A click in a lens table's block row: its link, or the row (Shift: the per-position rows, as in patching). */
function onLensRow(event) {
  const row = event.target.closest("tr[data-layer]");
  if (!row) return;
  if (event.shiftKey) event.preventDefault(); // a link's Shift-click would open a window
  else if (event.target.closest("a")) return; // the link goes there itself (Ctrl-click: a new tab)
  onLayerClick(layerLinks.get(event.currentTarget), Number(row.dataset.layer), event);
}

// -- the token view -------------------------------------------------------------------------------

const tokenNodes = () => ({ layer: $("token-layer"), heads: $("token-heads") });

function refreshToken() {
  const signal = tokenReads.next();
  if (S.tok === null || !runs) {
    $("token-body").hidden = true;
    $("token-panel").classList.remove("outdated");
    return;
  }
  const run = runs[S.tp];
  if (S.tok >= run.tokens.length) store.update(S, { tok: run.tokens.length - 1 });
  renderPrompts();
  return task($("token-panel"), "reading attention…", async () => {
    const text = run === runs.clean ? S.clean : S.corrupted;
    const next = run.token_ids[S.tok + 1];
    const lensBody = { text, position: S.tok, top_k: 5 };
    if (next !== undefined) lensBody.target_id = next;
    const [from, lens] = await Promise.all([
      cached("from", { text, query_pos: S.tok }, (b, o) => api.attentionFrom(b.text, b.query_pos, o), signal),
      cached("lens", lensBody, api.logitLens, signal),
    ]);
    att = from;
    const th = S.th !== null && S.th >= att.weights[0].length ? null : S.th;
    store.update(S, { tl: Math.min(S.tl, att.weights.length - 1), th });
    $("token-body").hidden = false;
    fill(
      $("token-caption"),
      `Attention from ${visible(att.tokens[S.tok])} [${S.tok}] in the ${S.tp} prompt: each token shaded by the weight it gets. ← → move the token; the chips say where each head looks most.`,
    );
    drawTokenAttention();
    fill($("token-lens-caption"), next === undefined ? "(target: the model's top-1)" : `(target: the next token, ${visible(lens.target.token)})`);
    renderLensTable($("token-lens-table"), lens, true);
    linkLayers($("token-lens-table"), text);
    await drawLens($("token-lens-plot"), lens, 200, (layer, event) => onLayerClick(text, layer, event));
  }, tokenReads);
}

function drawTokenAttention() {
  if (!att) return;
  renderControls(tokenNodes(), att, S.tl, S.th);
  renderHighlight($("token-text"), att, S.tl, S.th);
  drawLayerHeads($("token-layer-plot"), att, S.tl, S.th, (h) => setTokenHead(S.tl, h));
  $("layer-prev").disabled = S.tl === 0;
  $("layer-next").disabled = S.tl === att.weights.length - 1;
}

function pickToken(which, i, push) {
  store.update(S, { tok: i, tp: which }, { push });
  refreshToken();
}

function setTokenHead(layer, head) {
  store.update(S, { tl: layer, th: head });
  drawTokenAttention();
}

/** What the main trace depends on (everything but the token view). */
const traceKey = () => JSON.stringify([S.clean, S.corrupted, S.answer, S.wrong, S.pos, S.dir, S.res, S.rows, S.grid]);

// -- wiring ----------------------------------------------------------------------------------------

function wire() {
  $("trace-form").addEventListener("submit", (e) => {
    e.preventDefault();
    trace({}, { push: true, edited: true });
  });
  for (const id of ["clean", "corrupted"]) {
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        trace({}, { push: true, edited: true });
      }
    });
  }
  fill(
    $("examples"),
    EXAMPLES.map((ex) =>
      el("button", { type: "button", class: "example", title: `${ex.clean}\n${ex.corrupted}`, onclick: () => {
        const { clean, corrupted, answer, wrong } = ex;
        trace({ clean, corrupted, answer, wrong, pos: -1 }, { push: true });
      } }, ex.name),
    ),
  );
  wireChrome();
  for (const id of ["answer", "wrong"]) {
    $(id).addEventListener("change", () => {
      trace({ [id]: $(id).value }, { push: true });
    });
  }
  $("pos").addEventListener("change", () => trace({}, { push: true }));
  $("residual").addEventListener("change", () => trace({}, { push: true }));
  $("direction").addEventListener("click", (e) => {
    const dir = e.target.closest("button")?.dataset.dir;
    if (!dir || dir === S.dir) return;
    trace({ dir }, { push: true });
  });
  $("grid-toggle").addEventListener("click", () => {
    trace({ grid: !S.grid }, { push: true });
  });
  $("rows").addEventListener("change", () => {
    const parts = $("rows").value.split(/[\s,]+/).filter(Boolean);
    const heads = parts.map(parseHead);
    const bad = parts.filter((_, i) => !heads[i] || (model && (heads[i].layer >= model.n_layers || heads[i].head >= model.n_heads)));
    if (bad.length) return showError(new Error(`not a head of this model: ${bad.join(", ")} (write heads as L9H6)`));
    trace({ rows: heads }, { push: true });
  });
  $("rows-top").addEventListener("click", () => {
    if (!patched) return showError(new Error("trace first: the top heads come from the patching result"));
    trace({ rows: rank(patched.scores, 5, patched.direction).map(({ layer, head }) => ({ layer, head })) }, { push: true });
  });
  $("rows-clear").addEventListener("click", () => {
    trace({ rows: [] }, { push: true });
  });
  for (const id of ["lens-table", "token-lens-table"]) $(id).addEventListener("click", onLensRow);
  wireStrip($("clean-tokens"), () => runs?.clean.tokens.length ?? 0, () => (S.tp === "clean" ? S.tok : null), (i, push) => pickToken("clean", i, push));
  wireStrip($("corrupted-tokens"), () => runs?.corrupted.tokens.length ?? 0, () => (S.tp === "corrupted" ? S.tok : null), (i, push) => pickToken("corrupted", i, push));
  wireStrip($("token-text"), () => att?.tokens.length ?? 0, () => S.tok, (i, push) => pickToken(S.tp, i, push));
  $("token-layer").addEventListener("change", () => setTokenHead(Number($("token-layer").value), S.th));
  $("layer-prev").addEventListener("click", () => setTokenHead(Math.max(0, S.tl - 1), S.th));
  $("layer-next").addEventListener("click", () => setTokenHead(Math.min((att?.weights.length ?? 1) - 1, S.tl + 1), S.th));
  $("token-heads").addEventListener("click", (e) => {
    const chip = e.target.closest(".head-chip");
    if (chip) setTokenHead(S.tl, chip.dataset.head === "mean" ? null : Number(chip.dataset.head));
  });
  window.addEventListener("popstate", () => {
    const before = traceKey();
    store.update(S, store.fromURL());
    syncInputs();
    if (runs && traceKey() === before) refreshToken(); // only the token view moved
    else if (S.clean && S.corrupted) trace();
  });
}

async function start() {
  wire();
  if (!S.clean && !S.corrupted) {
    const ex = EXAMPLES[0];
    $("clean").value = ex.clean;
    $("corrupted").value = ex.corrupted;
  } else syncInputs();
  model = await api.model();
  memo.open([model.name, model.dtype, model.device, model.n_params].join("|"));
  showModel(model, "heads");
  document.body.dataset.ready = "1";
  if (S.clean && S.corrupted) await trace();
}

start().catch(showError);
