// Entry point of the Circuit page: edge attribution (EAP / EAP-IG) on one prompt pair drawn as a graph, pruned to
// the top n edges, beside the faithfulness curve; a clicked edge gets its exact path-patching value.
import { headsURL } from "../heads/state.js";
import * as api from "../lib/api.js";
import { hideError, showError, showModel, track, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { download, el, fill, fmt, parseHead, signed } from "../lib/util.js";
import { drawFaith, drawGraph, touched } from "./graph.js";
import * as store from "./state.js";

const $ = (id) => document.getElementById(id);
const S = store.fromURL();
let model = null;
let result = null; // the last /api/circuit answer
let asked = null; // the pair fields it was asked with (path patching reuses them)
const exact = new Map(); // edge id → its /api/path_patch answer, for this result
const runs = new Latest();
const patches = new Latest();

// -- state ↔ form ---------------------------------------------------------------------------------

function readInputs() {
  const steps = Number.parseInt($("steps").value, 10);
  return {
    clean: $("clean").value,
    corrupted: $("corrupted").value,
    answer: $("answer").value,
    wrong: $("wrong").value,
    method: $("method").value,
    steps: Number.isNaN(steps) ? 5 : Math.min(64, Math.max(1, steps)),
    dir: $("direction").value,
  };
}

function syncInputs() {
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (S[key]) $(key).value = S[key];
  $("method").value = S.method;
  $("steps").value = String(S.steps);
  $("steps").disabled = S.method !== "eap-ig";
  $("direction").value = S.dir;
  $("topn").value = String(S.n);
  $("topn-out").textContent = String(S.n);
}

/** The prompt pair as the endpoints read it. */
function pairBody() {
  const body = { clean: S.clean, corrupted: S.corrupted, answer: S.answer, direction: S.dir };
  if (S.wrong) body.wrong = S.wrong;
  return body;
}

// -- run ------------------------------------------------------------------------------------------

async function run({ push = true } = {}) {
  store.update(S, readInputs(), { push });
  syncInputs();
  hideError();
  asked = pairBody();
  const body = { ...asked, method: S.method, steps: S.steps, top_n: store.MAX_EDGES, faithfulness: true };
  $("graph-panel").classList.add("outdated");
  const label = S.method === "eap" ? "attributing edges (EAP)…" : `attributing edges (EAP-IG, ${S.steps} steps)…`;
  await track(
    runs.run(async (signal) => {
      result = await api.circuit(body, { signal });
      exact.clear();
      $("export").disabled = false;
      render();
      if (S.edge) await showEdge(S.edge);
    }),
    label,
    () => runs.cancel(),
  );
}

/** The kept edges: the top n of the answer (largest |score| first). */
const kept = () => (result ? result.edges.slice(0, S.n) : []);

function render() {
  if (!result) return;
  $("topn").max = String(Math.max(1, result.edges.length));
  const edges = kept();
  const scores = new Map(result.node_scores.map((n) => [n.id, n.score]));
  drawGraph($("graph"), model, edges, scores, S.edge);
  $("graph-panel").classList.remove("outdated");
  $("graph").dataset.painted = String(Number($("graph").dataset.painted || 0) + 1);
  if (result.faithfulness) drawFaith($("faith"), result.faithfulness, edges.length);
  const m = result.metric;
  fill(
    $("summary"),
    `${result.method.toUpperCase()}${result.method === "eap-ig" ? ` (${result.steps} steps)` : ""}, ${result.direction}: `,
    `logit difference ${signed(m.clean)} clean, ${signed(m.corrupted)} corrupted at “${result.tokens_clean[result.position]}”. `,
    `Showing ${edges.length} of ${result.n_edges.toLocaleString()} edges, ${touched(edges).length} nodes. ${result.wiring}.`,
  );
}

// -- selection: an edge's exact value, a node's links -----------------------------------------------

async function showEdge(id) {
  const edge = result?.edges.find((e) => store.edgeId(e) === id);
  if (!edge) return fill($("detail"), "That edge is not among the answer's top edges.");
  const rows = (answer) => [
    ["estimate (attribution)", signed(edge.score, 4)],
    ["exact Δ metric (path patching)", answer ? signed(answer.metric - base(answer), 4) : "…"],
    ["metric with the edge patched", answer ? signed(answer.metric, 4) : "…"],
    ["share of the full patch", answer?.recovered == null ? "–" : fmt(answer.recovered, 4)],
  ];
  const paint = (answer) =>
    fill(
      $("detail"),
      el("div", { class: "edge-name" }, `${edge.source} → ${edge.target}`, el("span", { class: "muted" }, ` (${edge.channel})`)),
      el("table", { id: "edge-table" }, rows(answer).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, v)))),
      nodeLinks(edge.source),
      nodeLinks(edge.target),
    );
  paint(exact.get(id));
  if (exact.has(id)) return;
  const body = { ...asked, edges: [{ source: edge.source, target: edge.target, channel: edge.channel }] };
  await track(
    patches.run(async (signal) => {
      const answer = await api.pathPatch(body, { signal });
      exact.set(id, answer);
      if (S.edge === id) paint(answer);
      $("detail").dataset.exact = id;
    }),
    `patching ${edge.source} → ${edge.target} exactly…`,
    () => patches.cancel(),
  );
}

/** The metric of the run patched into: the corrupted run when denoising, the clean run when noising. */
const base = (answer) => (answer.direction === "noise" ? answer.metric_clean : answer.metric_corrupted);

/** A head's links to the Heads view, on either prompt, with that head selected. */
function nodeLinks(id) {
  const head = parseHead(id);
  if (!head) return null;
  return el(
    "p",
    {},
    el("b", {}, id),
    " in the head view: ",
    el("a", { href: headsURL({ text: S.clean, head }), class: "head-link" }, "clean"),
    " · ",
    el("a", { href: headsURL({ text: S.corrupted, head }) }, "corrupted"),
  );
}

function showNode(id) {
  const score = result.node_scores.find((n) => n.id === id)?.score;
  fill($("detail"), el("div", { class: "edge-name" }, id), score === undefined ? null : el("p", {}, `node score ${signed(score, 4)} (its outgoing edges summed)`), nodeLinks(id));
}

function wireGraph() {
  $("graph").on("plotly_click", (ev) => {
    const point = ev.points[0];
    if (point.data.name === "edge handles") {
      const id = store.edgeId(kept()[point.customdata]);
      store.update(S, { edge: id }, { push: true });
      render();
      showEdge(id);
    } else if (point.data.name === "nodes") {
      showNode(point.customdata);
    }
  });
}

// -- export -----------------------------------------------------------------------------------------

function exportJSON() {
  const data = { state: { ...S }, circuit: result, kept_edges: kept(), exact: Object.fromEntries(exact) };
  download("headscope-circuit.json", new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
}

// -- start ------------------------------------------------------------------------------------------

async function start() {
  wireChrome();
  syncInputs();
  $("circuit-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    run();
  });
  $("method").addEventListener("change", () => ($("steps").disabled = $("method").value !== "eap-ig"));
  $("topn").addEventListener("input", () => {
    store.update(S, { n: Number($("topn").value) });
    $("topn-out").textContent = String(S.n);
    render();
  });
  $("export").addEventListener("click", exportJSON);
  window.addEventListener("popstate", () => {
    Object.assign(S, store.fromURL());
    syncInputs();
    render();
  });
  model = await api.model();
  showModel(model, "shape");
  // Plotly gives the div its .on() once it has drawn into it: an empty figure first, so the clicks can be wired now
  Plotly.newPlot($("graph"), [], { xaxis: { visible: false }, yaxis: { visible: false } }, { displayModeBar: false });
  wireGraph();
  document.body.dataset.ready = "1";
  if (S.clean && S.corrupted) await run({ push: false });
}

start().catch(showError);
