// Entry point of the corpus view: texts → job → progress → every head's dataset-level statistics (grid, scatter,
// head panel with top examples, similarity matrix), with the view (job, metric, axes, head) held in the URL.
import * as api from "../lib/api.js";
import { hideError, showError, showModel, track, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { drawSimilarity } from "../lib/similarity.js";
import { download, el, fill, headLabel, isAbort, sameHead } from "../lib/util.js";
import { headsURL } from "../heads/state.js";
import { DatasetForm } from "./data.js";
import { CorpusGrid, metricDescription, metricLabel, setMetricNames } from "./grid.js";
import { drawQK, qkNote, renderHeadPage } from "./headpage.js";
import { renderHead } from "./heads.js";
import { RESUMABLE, RUNNING, renderJobList, renderProgress, watchJob } from "./jobs.js";
import { drawScatter } from "./scatter.js";
import * as store from "./state.js";

const $ = (id) => document.getElementById(id);
const HEADS_EVERY_MS = 1500; // while a job runs, partial statistics are re-read at most this often
const EXAMPLES_K = 5;

const S = store.fromURL();
let model = null;
let job = null; // the open job (GET /api/jobs/{id})
let heads = null; // its statistics (GET /api/jobs/{id}/heads), null before the first batch
let examples = null; // the shown head's /examples response, with .key
const watching = new Latest(); // the open job's progress events (one job followed at a time)
let headsAt = 0;

const form = new DatasetForm({
  source: $("source"),
  panes: { pick: $("src-pick"), upload: $("src-upload"), paste: $("src-paste") },
  select: $("dataset"),
  info: $("dataset-info"),
  file: $("file"),
  name: $("ds-name"),
  paste: $("paste"),
  pasteInfo: $("paste-info"),
});
const grid = new CorpusGrid($("cgrid"), { legend: $("legend"), tip: $("ctip") }, (h) => selectHead(h));

// -- stale answers -------------------------------------------------------------------------------

// each kind of request aborts the one before; a superseded answer rejects as an AbortError (Latest.run)

const jobReads = new Latest();
const headsReads = new Latest();
const examplesReads = new Latest();
const similarityReads = new Latest();
const pageReads = new Latest();
let qkShown = null; // the head page's Q/K embedding, with .key (job|head)

function painted(node) {
  requestAnimationFrame(() => (node.dataset.painted = String(Number(node.dataset.painted || 0) + 1)));
}

// -- jobs ----------------------------------------------------------------------------------------

async function refreshJobs() {
  const { jobs, backend } = await api.jobs();
  $("jobs-backend").textContent = backendText(backend);
  renderJobList($("jobs"), jobs, { current: S.job, names: form.names, onOpen: (id) => track(openJob(id, true), "opening job…"), onResume: (id) => track(resume(id), "resuming…") });
}

/** Where jobs run, in words: the server's own model worker, or a Ray cluster's actors and their state. */
function backendText(b) {
  if (b.backend !== "ray") return "Jobs run on this server's model worker, between interactive requests.";
  const state = b.state === "ready" ? "" : b.state === "failed" ? ` — failed: ${b.error}` : " — starting";
  return `Jobs run on Ray (${b.address}): ${b.workers} actor${b.workers === 1 ? "" : "s"} holding the model${state}.`;
}

/** Open a job: show its progress, follow it while it runs, and show its statistics once there are any. */
async function openJob(id, push) {
  watching.cancel();
  if (id !== job?.id) {
    heads = null;
    examples = null;
    window.Plotly?.purge($("simplot"));
  }
  store.update(S, { job: id }, { push });
  try {
    job = await jobReads.run((signal) => api.job(id, { signal }));
  } catch (err) {
    if (!isAbort(err)) closeJob(); // e.g. an unknown id in a shared link: show nothing rather than the last job
    throw err;
  }
  showJob();
  if (RUNNING.has(job.state)) {
    watchJob(id, watching.next(), {
      onProgress: (j) => {
        if (j.id !== S.job) return;
        job = j;
        showJob();
        if (Date.now() - headsAt > HEADS_EVERY_MS) track(Promise.all([loadResults(), refreshJobs()]), "reading statistics…");
      },
      onEnd: (j) => {
        if (j.id !== S.job) return;
        job = j;
        showJob();
        track(Promise.all([loadResults(), refreshJobs()]), "reading statistics…");
      },
      onError: showError,
    });
  }
  await Promise.all([loadResults(), refreshJobs()]);
}

/** No job open: empty progress panel and results. */
function closeJob() {
  watching.cancel();
  job = heads = examples = null;
  store.update(S, { job: null });
  $("job-title").textContent = "No job open.";
  renderProgress({ bar: $("job-bar"), text: $("job-progress"), state: $("job-state") }, { state: "none", progress: {} });
  $("job-progress").textContent = "";
  fill($("job-state"));
  $("cancel").disabled = true;
  $("resume").hidden = true;
  $("results-title").textContent = "Corpus statistics";
  showResults();
}

function showJob() {
  const name = form.names.get(job.dataset) ?? job.dataset;
  const how = job.analyses.map((a) => (a === "importance" ? `importance (${job.importance})` : a)).join(" + ");
  fill($("job-title"), el("b", {}, name), el("span", { class: "muted" }, ` · ${how} · ≤${job.max_tokens} tokens`));
  $("job-title").title = job.id;
  renderProgress({ bar: $("job-bar"), text: $("job-progress"), state: $("job-state") }, job);
  $("cancel").disabled = !RUNNING.has(job.state);
  $("resume").hidden = !RESUMABLE.has(job.state);
  $("results-title").textContent = `${name} · ${job.analyses.join(" + ")}`;
}

async function startJob() {
  const analyses = [...document.querySelectorAll('input[name="analysis"]:checked')].map((c) => c.value);
  if (!analyses.length) throw new Error("tick at least one analysis");
  const maxTokens = Number($("max-tokens").value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new Error("max tokens must be a whole number ≥ 1");
  const importance = $("imp-method").querySelector('[aria-pressed="true"]').dataset.method;
  const dataset = await form.resolve();
  hideError();
  const started = await api.startJob({ dataset, analyses, importance, max_tokens: maxTokens });
  await openJob(started.id, true);
}

async function cancel() {
  if (!job || !RUNNING.has(job.state)) return;
  const id = job.id;
  const j = await api.cancelJob(id);
  if (S.job !== id) return;
  watching.cancel();
  job = j;
  showJob();
  await Promise.all([loadResults(), refreshJobs()]);
}

/** Download the open job's statistics as a file: fetched with the API key, saved from a Blob. */
async function exportAs(format) {
  if (!S.job) return;
  const { blob, filename } = await api.jobExport(S.job, format);
  download(filename, blob);
}

/** Download the open, finished job's static atlas (the server builds it: the Q/K sample's forwards, then files). */
async function exportAtlas() {
  if (!S.job) return;
  const { blob, filename } = await api.jobAtlas(S.job);
  download(filename, blob);
}

async function resume(id) {
  await api.resumeJob(id);
  await openJob(id, id !== S.job);
}

// -- results -------------------------------------------------------------------------------------

/** Re-read the open job's statistics (partial while it runs) and everything drawn from them. */
async function loadResults() {
  const id = S.job;
  headsAt = Date.now();
  if (!(job?.progress?.done > 0)) heads = null; // statistics exist from the first finished batch on
  else {
    try {
      heads = await headsReads.run((signal) => api.jobHeads(id, { signal }));
    } catch (err) {
      if (err.status !== 409) throw err;
      heads = null;
    }
  }
  showResults();
  if (!heads) return;
  await Promise.all([loadExamples(), loadSimilarity()]);
}

function pick(value, options, fallback) {
  return options.includes(value) ? value : fallback;
}

/** Choose metric and axes the job has; fill the selects; draw grid, reliability and scatter. */
function showResults() {
  const res = $("results");
  if (!S.job) res.dataset.state = "empty";
  else if (!heads) res.dataset.state = "waiting";
  else res.dataset.state = "ready";
  $("results-empty").textContent =
    res.dataset.state === "waiting"
      ? "Statistics appear here after the first batch of texts."
      : "Pick a dataset, choose the analyses and start a job, or reopen one from Recent jobs.";
  $("partial").hidden = !heads?.partial;
  for (const format of ["csv", "json", "parquet"]) $(`export-${format}`).disabled = !heads;
  $("export-atlas").disabled = !heads || job?.state !== "done";
  if (!heads) return;
  const metrics = heads.metrics;
  const x = pick(S.x, metrics, metrics.includes("previous_token") ? "previous_token" : metrics[0]);
  const yDefault = metrics.find((m) => m === "importance" && m !== x) ?? metrics.find((m) => m === "text_induction" && m !== x) ?? metrics.find((m) => m !== x) ?? x;
  const head = S.head && heads.heads.some((h) => sameHead(h, S.head)) ? S.head : null;
  store.update(S, { metric: pick(S.metric, metrics, metrics[0]), x, y: pick(S.y, metrics, yDefault), head });
  for (const [id, value] of [["metric", S.metric], ["sx", S.x], ["sy", S.y]]) {
    fill($(id), metrics.map((m) => el("option", { value: m, title: metricDescription(m) || null }, metricLabel(m))));
    $(id).value = value;
  }
  grid.render(heads, S.metric, S.head);
  painted($("cgrid"));
  showReliability();
  drawScatterView();
  showHead();
  showView();
}

/** All heads, or the selected head's own page. */
function showView() {
  const page = S.view === "head" && !!heads && !!S.head;
  document.querySelector("main.corpus").dataset.view = page ? "head" : "all";
  $("head-page").hidden = !page;
  if (page) track(loadHeadPage(), "reading the head…");
}

/** The split-half reliability of the grid's metric, with what it means. */
function reliabilityText(rho, nTexts) {
  if (rho === null || rho === undefined || !Number.isFinite(rho)) {
    return { level: "none", text: `split-half reliability: too few texts (${nTexts}) to tell` };
  }
  const r = `ρ=${rho.toFixed(2)}`;
  if (rho >= 0.9) return { level: "good", text: `rankings agree between halves: ${r}` };
  if (rho >= 0.7) return { level: "fair", text: `rankings mostly agree between halves: ${r}` };
  if (rho >= 0.4) return { level: "weak", text: `rankings agree only loosely between halves: ${r} — more texts would help` };
  return { level: "poor", text: `rankings disagree between halves: ${r} — use more texts` };
}

function showReliability() {
  const { level, text } = reliabilityText(heads.reliability?.[S.metric], heads.n_texts);
  const node = $("reliability");
  node.dataset.level = level;
  fill(node, el("b", {}, `${metricLabel(S.metric)}: `), text, heads.partial ? el("span", { class: "muted" }, ` · ${heads.n_texts} texts so far`) : el("span", { class: "muted" }, ` · ${heads.n_texts} texts`));
}

function drawScatterView() {
  if (!heads) return;
  drawScatter($("scatter"), heads, S.x, S.y, S.head, (h) => selectHead(h)).then(() => painted($("scatter")));
}

function showHead() {
  const key = S.head ? `${S.job}|${headLabel(S.head)}|${S.metric}` : null;
  const pageURL = S.head ? store.pageURL(S, S.head) : null;
  renderHead($("head-body"), { data: heads, head: S.head, metric: S.metric, examples: examples?.key === key ? examples : null, pageURL });
  $("head-h").textContent = S.head ? `Head ${headLabel(S.head)}` : "Head";
}

async function loadExamples() {
  if (!heads || !S.head) return showHead();
  const key = `${S.job}|${headLabel(S.head)}|${S.metric}`;
  const [id, head, metric] = [S.job, S.head, S.metric];
  if (examples?.key !== key) showHead(); // "loading examples…" for a new head or metric
  const res = await examplesReads.run((signal) => api.jobExamples(id, head, metric, EXAMPLES_K, { signal }));
  examples = { ...res, key };
  showHead();
  painted($("head-body"));
}

async function loadSimilarity() {
  if (!heads) return;
  if (!job.analyses.includes("similarity")) {
    window.Plotly?.purge($("simplot"));
    $("sim-note").textContent = "Not computed for this job: tick “similarity” before starting one.";
    return;
  }
  const [id, metric] = [S.job, S.sim];
  const data = await similarityReads.run((signal) => api.jobSimilarity(id, metric, { signal }));
  $("sim-note").textContent = `${metric === "js" ? "Jensen–Shannon divergence (low = alike)" : "cosine similarity (high = alike)"} between heads' attention maps, averaged over ${data.n_texts} texts. Click a cell to select its row head.`;
  const maxHeight = Math.min(720, Math.max(360, $("sim-panel").clientWidth));
  await drawSimilarity($("simplot"), { ...data, metric, order: "layer" }, (a) => selectHead(a), { maxHeight });
  painted($("simplot"));
}

/** The head page: statistics, nearest heads and examples first, then the Q/K embedding (computed on demand). */
async function loadHeadPage() {
  const [id, head, metric] = [S.job, S.head, S.metric];
  const headKey = `${id}|${headLabel(head)}`;
  const withSimilarity = job.analyses.includes("similarity");
  const [top, deciles, similarity] = await pageReads.run((signal) =>
    Promise.all([
      api.jobExamples(id, head, metric, EXAMPLES_K, { signal }),
      api.jobDecileExamples(id, head, metric, 1, { signal }),
      withSimilarity ? api.jobSimilarity(id, "js", { signal }).then((d) => ({ ...d, metric: "js" })) : null,
    ]),
  );
  const name = form.names.get(job.dataset) ?? job.dataset;
  const qkDiv = renderHeadPage($("head-page"), {
    title: `${name} · job ${id}`,
    heads,
    head,
    metric,
    top,
    deciles,
    similarity,
    headURL: (h) => store.pageURL(S, h),
    backURL: store.pageURL(S, head, "all"),
    textURL: (ex, h) => headsURL({ text: ex.text, head: h }),
    onMetric: (m) => setMetric(m),
  });
  if (!$("hp-qk-color")) return; // not a head of this model: the page says so
  $("hp-qk-color").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-color]");
    if (!b || b.dataset.color === S.color) return;
    store.update(S, { color: b.dataset.color });
    drawQKView(qkDiv);
  });
  painted($("head-page"));
  if (qkShown?.key !== headKey) {
    const found = await api.jobQKEmbedding(id, head);
    if (`${S.job}|${headLabel(S.head)}` !== headKey) return;
    qkShown = { ...found, key: headKey, clickable: true };
  }
  await drawQKView(qkDiv);
}

async function drawQKView(div) {
  if (!div.isConnected || !qkShown) return;
  toggleGroup($("hp-qk-color"), "color", S.color);
  $("hp-qk-note").textContent = qkNote(qkShown);
  const texts = new Map(); // a clicked point's text, read once
  await drawQK(div, qkShown, S.color, (p) =>
    track(
      (async () => {
        if (!texts.has(p.text_index)) texts.set(p.text_index, (await api.datasetTexts(job.dataset, p.text_index, 1)).texts[0].text);
        location.href = headsURL({ text: texts.get(p.text_index), head: S.head });
      })(),
      "opening the text…",
    ),
  );
  painted(div);
}

// -- view changes --------------------------------------------------------------------------------

function selectHead(h) {
  if (sameHead(h, S.head)) return;
  store.update(S, { head: h }, { push: true });
  grid.mark(S.head);
  drawScatterView();
  track(loadExamples(), "reading examples…");
}

function setMetric(metric) {
  store.update(S, { metric });
  grid.render(heads, S.metric, S.head);
  painted($("cgrid"));
  showReliability();
  track(loadExamples(), "reading examples…");
  if (S.view === "head") track(loadHeadPage(), "reading the head…");
}

/** Back / forward: show the view the URL now holds. */
function onPopState() {
  const next = store.fromURL();
  const other = next.job !== S.job;
  store.update(S, next);
  if (!S.job) return closeJob();
  if (other) return track(openJob(S.job, false), "opening job…");
  showResults();
  track(Promise.all([loadExamples(), loadSimilarity()]), "reading…");
}

function toggleGroup(group, attr, value) {
  for (const b of group.querySelectorAll(`button[data-${attr}]`)) b.setAttribute("aria-pressed", String(b.dataset[attr] === value));
}

function wire() {
  wireChrome();
  $("start").addEventListener("click", () => track(startJob(), "starting job…"));
  $("cancel").addEventListener("click", () => track(cancel(), "cancelling…"));
  $("resume").addEventListener("click", () => job && track(resume(job.id), "resuming…"));
  $("jobs-refresh").addEventListener("click", () => track(refreshJobs(), "reading jobs…"));
  for (const b of document.querySelectorAll("button[data-format]")) {
    b.addEventListener("click", () => track(exportAs(b.dataset.format), `exporting ${b.dataset.format}…`));
  }
  $("export-atlas").addEventListener("click", () => track(exportAtlas(), "building the atlas (the Q/K sample's forwards over the job's texts)…"));
  $("imp-method").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-method]");
    if (b) toggleGroup($("imp-method"), "method", b.dataset.method);
  });
  $("sim-metric").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-sim]");
    if (!b || b.dataset.sim === S.sim) return;
    store.update(S, { sim: b.dataset.sim });
    toggleGroup($("sim-metric"), "sim", S.sim);
    track(loadSimilarity(), "reading similarity…");
  });
  $("metric").addEventListener("change", () => setMetric($("metric").value));
  for (const [id, key] of [["sx", "x"], ["sy", "y"]]) {
    $(id).addEventListener("change", () => {
      store.update(S, { [key]: $(id).value });
      drawScatterView();
    });
  }
  window.addEventListener("popstate", onPopState);
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => heads && (drawScatterView(), track(loadSimilarity(), "drawing…")), 250);
  });
}

async function start() {
  wire();
  form.setSource("pick");
  toggleGroup($("sim-metric"), "sim", S.sim);
  showResults();
  model = await api.model();
  showModel(model, "shape");
  $("max-tokens").max = String(model.max_tokens);
  setMetricNames((await api.roles()).roles);
  await form.refresh();
  if (S.job) await openJob(S.job, false);
  else await refreshJobs();
  document.body.dataset.ready = "1";
}

track(start(), "loading…").finally(() => (document.body.dataset.ready = "1"));
