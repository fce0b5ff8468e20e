// Entry point of the Circuit page: edge attribution (EAP / EAP-IG) on one prompt pair, or its mean over a set of
// pairs with 95% bootstrap CIs, drawn as a graph pruned to the top n edges, beside the faithfulness curve (one pair);
// a clicked edge gets its exact path-patching value (one pair) or its spread over the pairs (a set).
import { exportPlot, slug } from "../heads/export.js";
import { headsURL } from "../heads/state.js";
import * as api from "../lib/api.js";
import { hideError, showError, showModel, track, wireChrome } from "../lib/chrome.js";
import { Latest } from "../lib/latest.js";
import { download, el, fill, fmt, parseHead, signed } from "../lib/util.js";
import * as trace from "../trace/state.js";
import { drawFaith, drawGraph, drawSpread, touched } from "./graph.js";
import { describePairs, parsePairs } from "./pairs.js";
import * as store from "./state.js";

const $ = (id) => document.getElementById(id);
const S = store.fromURL();
let model = null;
let sets = { max_pairs: 64, sets: [] }; // GET /api/pair_sets
let uploaded = null; // {name, pairs, total} read from a .jsonl
let result = null; // the last /api/circuit or /api/circuit_pairs answer
let asked = null; // the state fields it was asked with (ASKED), and the pair body path patching reuses
const exact = new Map(); // edge id → its /api/path_patch answer, for this result
const runs = new Latest();
const patches = new Latest();
const FAITH_HINT = $("faith-hint").textContent;

const overSet = () => !!result && result.n_pairs !== undefined;

// -- state ↔ form ---------------------------------------------------------------------------------

function readInputs() {
  const steps = Number.parseInt($("steps").value, 10);
  const pos = Number.parseInt($("position").value, 10);
  return {
    clean: $("clean").value,
    corrupted: $("corrupted").value,
    answer: $("answer").value,
    wrong: $("wrong").value,
    pos: Number.isNaN(pos) ? -1 : pos,
    pair_set: $("pair-set").value,
    method: $("method").value,
    steps: Number.isNaN(steps) ? 5 : Math.min(64, Math.max(1, steps)),
    dir: $("direction").value,
  };
}

function syncInputs() {
  for (const key of ["clean", "corrupted", "answer", "wrong"]) if (S[key]) $(key).value = S[key];
  $("position").value = String(S.pos);
  if ([...$("pair-set").options].some((o) => o.value === S.pair_set)) $("pair-set").value = S.pair_set;
  $("method").value = S.method;
  $("steps").value = String(S.steps);
  $("steps").disabled = S.method !== "eap-ig";
  $("direction").value = S.dir;
  $("topn").value = String(S.n);
  $("topn-out").textContent = String(S.n);
  showPairs();
}

/** The chosen pairs, or null for the one pair of the form. */
function chosenSet() {
  const value = $("pair-set").value;
  if (!value) return null;
  if (value === "upload") return uploaded ? { name: uploaded.name, pairs: uploaded.pairs, total: uploaded.total } : null;
  const found = sets.sets.find((s) => s.id === value);
  return found ? { id: found.id, pairs: found.pairs, total: found.n_pairs } : null;
}

/** The pairs line of the form: while a set is chosen it takes the one pair's place (its fields are hidden). */
function showPairs() {
  const value = $("pair-set").value;
  for (const id of ["clean", "corrupted", "answer", "wrong"]) $(id).disabled = !!value;
  for (const node of [document.querySelector(".pair"), $("answer").parentElement, $("wrong").parentElement]) node.hidden = !!value;
  const chosen = chosenSet();
  $("pairs-note").hidden = !value;
  if (!value) return;
  if (!chosen) return fill($("pairs-note"), "Choose a .jsonl file: one {\"clean\", \"corrupted\", \"answer\", \"wrong\"} object per line.");
  const first = chosen.pairs[0];
  fill(
    $("pairs-note"),
    `${describePairs(chosen)}, the first `,
    el("span", { class: "mono" }, `“${first.clean}” / “${first.corrupted}” → ${first.answer}${first.wrong ? ` vs ${first.wrong}` : ""}`),
    ". The graph draws each edge's mean score over the pairs; its 95% bootstrap CI shows on hover and when clicked.",
  );
}

/** The prompt pair as the endpoints read it. */
function pairBody() {
  const body = { clean: S.clean, corrupted: S.corrupted, answer: S.answer, direction: S.dir, position: S.pos };
  if (S.wrong) body.wrong = S.wrong;
  return body;
}

const askedFields = () => Object.fromEntries(store.ASKED.map((k) => [k, S[k]]));

// -- run ------------------------------------------------------------------------------------------

async function run({ push = true } = {}) {
  store.update(S, readInputs(), { push });
  syncInputs();
  hideError();
  const chosen = chosenSet();
  if (S.pair_set && !chosen) return showError(new Error(S.pair_set === "upload" ? "choose a .jsonl file of pairs first" : `no pair set ${S.pair_set} on this server`));
  const method = { method: S.method, steps: S.steps, top_n: store.MAX_EDGES };
  const fields = askedFields();
  const pair = pairBody();
  const body = chosen
    ? { ...method, direction: S.dir, position: S.pos, ...(chosen.id ? { pair_set: chosen.id } : { pairs: chosen.pairs }) }
    : { ...pair, ...method, faithfulness: true };
  $("graph-panel").classList.add("outdated");
  const how = S.method === "eap" ? "EAP" : `EAP-IG, ${S.steps} steps`;
  const label = chosen ? `attributing edges over ${chosen.pairs.length} pairs (${how})…` : `attributing edges (${how})…`;
  await track(
    runs.run(async (signal) => {
      result = chosen ? await api.circuitPairs(body, { signal }) : await api.circuit(body, { signal });
      asked = { fields, pair };
      exact.clear();
      delete $("detail").dataset.exact;
      delete $("detail").dataset.spread;
      $("export").disabled = false;
      render();
      if (S.edge) await showEdge(S.edge);
      else fill($("detail"), "Click an edge or a node of the graph.");
    }),
    label,
    () => runs.cancel(),
  );
}

/** The kept edges: the top n of the answer (largest |score| first; over a set, |mean score|). */
const kept = () => (result ? result.edges.slice(0, S.n) : []);

function render() {
  if (!result) return;
  $("topn").max = String(Math.max(1, result.edges.length));
  const edges = kept();
  const nodes = new Map(result.node_scores.map((n) => [n.id, n]));
  drawGraph($("graph"), model, edges, nodes, S.edge);
  $("graph-panel").classList.remove("outdated");
  $("graph").dataset.painted = String(Number($("graph").dataset.painted || 0) + 1);
  const how = `${result.method.toUpperCase()}${result.method === "eap-ig" ? ` (${result.steps} steps)` : ""}, ${result.direction}`;
  const shown = `Showing ${edges.length} of ${result.n_edges.toLocaleString()} edges, ${touched(edges).length} nodes. ${result.wiring}.`;
  $("faith").hidden = overSet();
  if (overSet()) {
    Plotly.purge($("faith"));
    $("faith-hint").textContent = "The faithfulness curve patches one pair exactly: choose “one pair” to see it.";
    const m = result.metric;
    const ci = (s) => `${signed(s.score)} [${fmt(s.ci_low)}, ${fmt(s.ci_high)}]`;
    return fill(
      $("summary"),
      `${how}, mean over ${result.n_pairs} pairs: logit difference ${ci(m.clean)} clean, ${ci(m.corrupted)} corrupted (95% CI). `,
      `Edges ranked by |mean score|. ${shown}`,
    );
  }
  $("faith-hint").textContent = FAITH_HINT;
  if (result.faithfulness) drawFaith($("faith"), result.faithfulness, edges.length);
  const m = result.metric;
  fill($("summary"), `${how}: `, `logit difference ${signed(m.clean)} clean, ${signed(m.corrupted)} corrupted at “${result.tokens_clean[result.position]}” (position ${result.position}). `, shown);
}

// -- selection: an edge's exact value (one pair) or its spread (a set), a node's links -------------------

async function showEdge(id) {
  const edge = result?.edges.find((e) => store.edgeId(e) === id);
  if (!edge) return fill($("detail"), "That edge is not among the answer's top edges.");
  if (overSet()) return showSetEdge(edge);
  const rows = (answer) => [
    ["estimate (attribution)", signed(edge.score, 4)],
    ["exact Δ metric (path patching)", answer ? signed(answer.metric - base(answer), 4) : "…"],
    ["metric with the edge patched", answer ? signed(answer.metric, 4) : "…"],
    ["share of the full patch", answer?.recovered == null ? "–" : fmt(answer.recovered, 4)],
  ];
  const here = { ...asked.pair, position: result.position };
  const paint = (answer) =>
    fill(
      $("detail"),
      edgeName(edge),
      el("table", { id: "edge-table" }, rows(answer).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, v)))),
      nodeLinks(edge.source, here),
      nodeLinks(edge.target, here),
    );
  paint(exact.get(id));
  if (exact.has(id)) return;
  const body = { ...asked.pair, edges: [{ source: edge.source, target: edge.target, channel: edge.channel }] };
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

const edgeName = (edge) => el("div", { class: "edge-name" }, `${edge.source} → ${edge.target}`, el("span", { class: "muted" }, ` (${edge.channel})`));

/** The pair of a set on which `scores` (one per pair) is largest in magnitude, as the endpoints read a pair. */
function strongestPair(scores) {
  let k = 0;
  scores.forEach((v, i) => Math.abs(v) > Math.abs(scores[k]) && (k = i));
  const p = result.pairs[k];
  return { index: k, clean: p.clean, corrupted: p.corrupted, answer: p.answer.token, wrong: p.wrong?.token ?? "", position: p.position, direction: result.direction };
}

function showSetEdge(edge) {
  const positive = edge.scores.filter((v) => v > 0).length;
  const strongest = strongestPair(edge.scores);
  const rows = [
    ["mean score", signed(edge.score, 4)],
    ["95% bootstrap CI", `[${fmt(edge.ci_low, 3)}, ${fmt(edge.ci_high, 3)}]`],
    ["pairs", String(edge.n)],
    ["helps (score > 0) on", `${positive} of ${edge.n}`],
    [`largest, on pair ${strongest.index + 1}`, signed(edge.scores[strongest.index], 4)],
  ];
  fill(
    $("detail"),
    edgeName(edge),
    el("table", { id: "edge-table" }, rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, v)))),
    el("div", { id: "pair-spread", class: "plot spread" }),
    el("p", { class: "muted" }, "Each dot is one pair's score; the band is the CI, the line the mean. Exact path patching is per pair: ", openPairButton(strongest)),
    nodeLinks(edge.source, strongest),
    nodeLinks(edge.target, strongest),
  );
  drawSpread($("pair-spread"), edge, result.pairs);
  $("detail").dataset.spread = store.edgeId(edge);
}

/** A button that runs one pair of the set on its own (faithfulness, exact values). */
function openPairButton(pair) {
  const button = el("button", { type: "button", class: "btn small", id: "open-pair" }, `open pair ${pair.index + 1} alone`);
  button.addEventListener("click", () => {
    for (const key of ["clean", "corrupted", "answer", "wrong"]) $(key).value = pair[key];
    $("pair-set").value = "";
    $("position").value = String(S.pos);
    store.update(S, { edge: "" });
    run();
  });
  return button;
}

/** The metric of the run patched into: the corrupted run when denoising, the clean run when noising. */
const base = (answer) => (answer.direction === "noise" ? answer.metric_clean : answer.metric_corrupted);

/** A head's links: the Heads view on either prompt with the head selected, and the Trace token view at the position
 * read, on either prompt, with that head's attention from it. */
function nodeLinks(id, pair) {
  const head = parseHead(id);
  if (!head) return null;
  const tokenView = (tp) =>
    `/trace?${trace.toQuery({
      ...trace.defaults(),
      clean: pair.clean,
      corrupted: pair.corrupted,
      answer: pair.answer,
      wrong: pair.wrong || "",
      dir: pair.direction ?? S.dir,
      tok: pair.position,
      tp,
      tl: head.layer,
      th: head.head,
    })}`;
  return el(
    "p",
    { class: "node-links" },
    el("b", {}, id),
    " head view: ",
    el("a", { href: headsURL({ text: pair.clean, head }), class: "head-link" }, "clean"),
    " · ",
    el("a", { href: headsURL({ text: pair.corrupted, head }) }, "corrupted"),
    "; token view: ",
    el("a", { href: tokenView("clean"), class: "token-link" }, "clean"),
    " · ",
    el("a", { href: tokenView("corrupted"), class: "token-link" }, "corrupted"),
  );
}

function showNode(id) {
  const node = result.node_scores.find((n) => n.id === id);
  const set = overSet() && node;
  const pair = set ? strongestPair(node.scores) : { ...asked.pair, position: result.position };
  const score = node === undefined ? null : set ? `mean node score ${signed(node.score, 4)} [${fmt(node.ci_low, 4)}, ${fmt(node.ci_high, 4)}] over ${node.n} pairs (its outgoing edges summed)` : `node score ${signed(node.score, 4)} (its outgoing edges summed)`;
  fill($("detail"), el("div", { class: "edge-name" }, id), score === null ? null : el("p", {}, score), set ? el("p", { class: "muted" }, `Links open pair ${pair.index + 1}, where its score is largest.`) : null, nodeLinks(id, pair));
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

// -- pairs: the built-in sets and an uploaded .jsonl ----------------------------------------------------

async function loadSets() {
  sets = await api.pairSets();
  const upload = $("pair-set").querySelector('option[value="upload"]');
  for (const set of sets.sets) upload.before(el("option", { value: set.id, title: set.description }, `${set.id} (${set.n_pairs} pairs)`));
  upload.textContent = `upload .jsonl… (≤ ${sets.max_pairs} pairs)`;
}

async function readUpload(file) {
  const text = await file.text();
  const { pairs, total } = parsePairs(text, sets.max_pairs);
  uploaded = { name: file.name, pairs, total };
}

function wirePairs() {
  $("pair-set").addEventListener("change", () => {
    if ($("pair-set").value === "upload") $("pairs-file").click();
    showPairs();
  });
  $("pairs-file").addEventListener("change", async () => {
    const file = $("pairs-file").files[0];
    if (!file) return;
    try {
      hideError();
      await readUpload(file);
    } catch (err) {
      uploaded = null;
      showError(new Error(`${file.name}: ${err.message}`));
    }
    $("pairs-file").value = "";
    showPairs();
  });
}

// -- export -----------------------------------------------------------------------------------------

function exportJSON() {
  const data = { state: { ...S }, circuit: result, kept_edges: kept(), exact: Object.fromEntries(exact) };
  download("headscope-circuit.json", new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
}

function exportSVG(div, what) {
  const name = `headscope-circuit-${what}-${slug(overSet() ? result.pair_set || "pairs" : S.clean)}`;
  if (exportPlot(div, name, "svg")) return;
  const why = overSet() && what === "faithfulness" ? "the faithfulness curve is one pair's: choose “one pair”" : "nothing drawn yet: press Run";
  showError(new Error(why));
}

// -- history: Back and Forward show the state in the URL, asking the server again when its question changed --

function onPopState() {
  Object.assign(S, store.fromURL());
  syncInputs();
  const runnable = S.pair_set || (S.clean && S.corrupted);
  const same = asked && store.ASKED.every((k) => asked.fields[k] === S[k]);
  if (runnable && !same) return run({ push: false });
  render();
  if (result && S.edge) showEdge(S.edge);
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
  $("graph-svg").addEventListener("click", () => exportSVG($("graph"), "graph"));
  $("faith-svg").addEventListener("click", () => exportSVG($("faith"), "faithfulness"));
  wirePairs();
  window.addEventListener("popstate", () => Promise.resolve(onPopState()).catch(showError));
  [model] = await Promise.all([api.model(), loadSets()]);
  showModel(model, "shape");
  syncInputs(); // the built-in sets are options now
  // Plotly gives the div its .on() once it has drawn into it: an empty figure first, so the clicks can be wired now
  Plotly.newPlot($("graph"), [], { xaxis: { visible: false }, yaxis: { visible: false } }, { displayModeBar: false });
  wireGraph();
  document.body.dataset.ready = "1";
  if ((S.clean && S.corrupted && !S.pair_set) || (S.pair_set && S.pair_set !== "upload")) await run({ push: false });
  else if (S.pair_set === "upload") showError(new Error("the uploaded pairs are not in the link: choose the .jsonl file again"));
}

start().catch(showError);
