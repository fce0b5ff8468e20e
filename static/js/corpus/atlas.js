// The static atlas (python -m app atlas): an index of every head of a job and one page per head, drawn from the
// data scripts beside the pages (window.ATLAS_JOB, window.ATLAS_HEAD) by the corpus page's own modules, with no
// server: links go to the neighbouring files, and nothing is fetched.
import { decodeF16 } from "../lib/decode.js";
import { el, fill, headLabel } from "../lib/util.js";
import { CorpusGrid, metricDescription, metricLabel, setMetricNames } from "./grid.js";
import { drawQK, qkNote, renderHeadPage } from "./headpage.js";

const fileOf = (h) => `${headLabel(h)}.html`;

function header(job, what) {
  return el(
    "div",
    { class: "hp-head atlas-head" },
    el("h1", {}, what),
    el("span", { class: "muted" }, `${job.dataset_name} · ${job.model} · job ${job.id} · HeadScope atlas`),
  );
}

/** index.html: every head in a grid coloured by a metric's mean; a cell opens that head's page. */
export function index() {
  const data = window.ATLAS_JOB;
  setMetricNames(data.roles);
  const root = document.getElementById("atlas");
  const select = el("select", { id: "metric", "aria-label": "colour by" }, data.heads.metrics.map((m) => el("option", { value: m, title: metricDescription(m) || null }, metricLabel(m))));
  const legend = el("div", { id: "legend", class: "legend" });
  const tip = el("div", { id: "ctip", class: "ctip", role: "tooltip", hidden: true });
  const cells = el("div", { id: "cgrid", class: "cgrid", role: "group", "aria-label": "all heads: layers down, heads across" });
  fill(
    root,
    header(data.job, "All heads"),
    el(
      "section",
      { class: "panel", id: "grid-panel" },
      el("div", { class: "panel-head" }, el("h2", {}, `${data.heads.n_texts} texts`), el("label", {}, "Colour by ", select)),
      legend,
      el("div", { class: "cgrid-wrap" }, cells),
      tip,
      el("p", { class: "muted hint" }, "Hover: mean ± 95% CI half-width [CI] · n texts. Click a head for its page: statistics, texts across its distribution, its queries and keys."),
    ),
  );
  const grid = new CorpusGrid(cells, { legend, tip }, (h) => (location.href = fileOf(h)));
  select.value = data.metric;
  select.addEventListener("change", () => grid.render(data.heads, select.value, null));
  grid.render(data.heads, data.metric, null);
  document.body.dataset.ready = "1";
}

/** The Q/K points of this head: its coordinates, with the job's shared sample of positions. */
function qkPoints(sample, qk) {
  const xy = decodeF16(qk.xy_f16);
  const m = sample.position.length;
  const points = [];
  for (let r = 0; r < 2 * m; r++) {
    const i = r % m;
    points.push({ x: xy[2 * r], y: xy[2 * r + 1], kind: r < m ? "query" : "key", text_index: sample.text_index[i], position: sample.position[i], token: sample.token[i], before: sample.before[i] });
  }
  return { ...qk, points, n_positions: m, positions_seen: sample.seen, n_texts: sample.n_texts, max_positions: sample.max_positions, clickable: false };
}

/** L{l}H{h}.html: the head page, as the corpus page's view=head draws it. */
export function head() {
  const data = window.ATLAS_JOB;
  const h = window.ATLAS_HEAD;
  setMetricNames(data.roles);
  const head = { layer: h.layer, head: h.head };
  document.title = `${headLabel(head)} · ${document.title.split(" · ").slice(1).join(" · ")}`;
  const root = document.getElementById("atlas");
  root.classList.add("head-page");
  const qkDiv = renderHeadPage(root, {
    title: `${data.job.dataset_name} · ${data.job.model}`,
    heads: data.heads,
    head,
    metric: h.metric,
    top: h.top,
    deciles: h.deciles,
    similarity: data.similarity,
    headURL: fileOf,
    textURL: null,
    backURL: "index.html",
    onMetric: null,
  });
  const qk = qkPoints(data.sample, h.qk);
  let color = "kind";
  const buttons = document.getElementById("hp-qk-color");
  const draw = () => {
    for (const b of buttons.querySelectorAll("button[data-color]")) b.setAttribute("aria-pressed", String(b.dataset.color === color));
    return drawQK(qkDiv, qk, color, null);
  };
  buttons.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-color]");
    if (b) (color = b.dataset.color), draw();
  });
  document.getElementById("hp-qk-note").textContent = qkNote(qk);
  draw().then(() => (document.body.dataset.ready = "1"));
}
