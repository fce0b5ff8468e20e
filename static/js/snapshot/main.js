// A saved view, offline: what a snapshot file (or a notebook output) carries, drawn with the page's own views
// (the grid, the head view's maps, the similarity matrix). It never makes a request: the data, plotly.js and
// this code are all in the file (app/snapshot/page.py writes it; app/snapshot/bundle.py links these modules).
// Every figure exports SVG the way the page does: Plotly's own SVG in the browser (the grid: its own SVG).
// Heads switched off: the next-token panel before and after, drawn by the Heads page's own Ablation view.
import { Ablation } from "../heads/ablation.js";
import { exportGrid, exportPlot, slug } from "../heads/export.js";
import { Grid } from "../heads/grid.js";
import { drawMaps } from "../heads/heatmap.js";
import { decodeBytes, f16Values } from "../lib/decode.js";
import { drawSimilarity } from "../lib/similarity.js";
import { el, fill, headLabel, sameHead } from "../lib/util.js";

/** The bytes of base64 gzip `b64`, inflated by the browser itself (DecompressionStream). */
export async function inflate(b64) {
  const stream = new Blob([decodeBytes(b64)]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * window.Plotly: already there (an earlier notebook output), or run once from a gzipped copy (`b64`). An output
 * without a copy waits for the one that has it. Run with `define`, `module` and `exports` hidden, so that
 * plotly.js makes a global even where a page has an AMD loader (the classic notebook's require.js).
 */
function plotlyReady(b64) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__headscopePlotly && b64) {
    window.__headscopePlotly = inflate(b64).then((bytes) => {
      // eslint-disable-next-line no-new-func
      new Function("define", "module", "exports", new TextDecoder().decode(bytes)).call(window);
      return window.Plotly;
    });
  }
  if (window.__headscopePlotly) return window.__headscopePlotly;
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = setInterval(() => {
      const ready = window.Plotly ?? (window.__headscopePlotly && "pending");
      if (ready) {
        clearInterval(poll);
        resolve(window.Plotly ?? window.__headscopePlotly);
      } else if (Date.now() - started > 30_000) {
        clearInterval(poll);
        reject(new Error("plotly.js is not loaded: run the cell of the first HeadScope output again"));
      }
    }, 50);
  });
}

/** Maps stored as the lower triangles (row q keeps keys 0..q) of n×n float16 maps, back to full rows. */
function mapRows(values, n, count) {
  const per = (n * (n + 1)) / 2;
  return Array.from({ length: count }, (_, i) => {
    let at = i * per;
    return Array.from({ length: n }, (_, q) => {
      const row = new Array(n).fill(0);
      for (let k = 0; k <= q; k++) row[k] = values[at++];
      return row;
    });
  });
}

/** A small "SVG" button that saves a figure as a vector file. */
const svgButton = (save) => el("button", { type: "button", class: "btn small hs-svg", title: "Download as SVG (vector)", onclick: save }, "SVG");

/** Wait until `node` is in a laid-out document (a notebook may run an output's script before showing it). */
function laidOut(node) {
  return new Promise((resolve) => {
    const check = () => (node.isConnected && node.offsetWidth > 0 ? resolve() : requestAnimationFrame(check));
    check();
  });
}

const held = (maps, h) => maps.heads.findIndex((m) => sameHead(m, h));

/** The next-token predictions with and without the heads a snapshot switched off, as the Heads page shows them. */
function ablationPanel(data) {
  const a = data.ablation;
  const nodes = {
    panel: el("section", { class: "hs-ablation" }),
    metrics: el("div", { class: "metrics" }),
    topk: el("div", { class: "topk" }),
    tokens: el("div", { class: "token-text" }),
    caption: el("span", { class: "muted" }),
  };
  const off = a.ablate.map(headLabel).join(", ");
  fill(nodes.panel, el("h3", {}, `Next token, ${off} switched off (${a.mode})`), nodes.metrics, nodes.topk, el("h3", { class: "sub" }, "Text ", nodes.caption), nodes.tokens);
  const view = new Ablation(nodes, () => {});
  view.run = { text: data.text, tokens: a.tokens, token_ids: a.token_ids, prediction: a.baseline };
  view.result = { ...a, n: a.ablate.length, mode: a.mode };
  view.render();
  return nodes.panel;
}

/** Draw the snapshot whose data sits in `root` (its script.hs-data, and script.hs-plotly when it carries one). */
export async function mount(root) {
  const data = JSON.parse(root.querySelector("script.hs-data").textContent);
  const Plotly = plotlyReady(root.querySelector("script.hs-plotly")?.textContent.trim());
  const meta = el("p", { class: "muted hs-meta" }, [data.model, data.date, `HeadScope ${data.version}`].join(" · "));
  const body = el("div", { class: "hs-body" });
  fill(root.querySelector(".hs-view"), el("h2", { class: "hs-title" }, data.title), meta, el("p", { class: "hs-text" }, data.text), body);
  await laidOut(root);
  await Plotly;
  const weights = data.maps ? mapRows(f16Values(await inflate(data.maps.f16_gz)), data.maps.n, data.maps.heads.length) : [];
  const state = { head: data.show?.head ?? data.maps?.heads[0] ?? null, cmp: data.show?.cmp ?? null, scale: data.show?.scale ?? "linear" };
  const parts = { info: el("div", { class: "hs-info muted" }), heatmap: el("div", { class: "plot hs-heatmap" }) };
  let grid = null;
  if (data.overview) {
    const legend = el("div", { class: "legend" });
    const gridInfo = el("div", { class: "grid-info muted" }, "Click: show a head · Alt-click: compare");
    const gridNode = el("div", { class: "grid", role: "group", "aria-label": "all heads" });
    const save = svgButton(() => exportGrid(grid, "svg"));
    body.append(el("section", { class: "hs-grid" }, el("div", { class: "controls" }, save), legend, el("div", { class: "grid-scroll" }, gridNode), gridInfo));
    grid = new Grid(gridNode, { legend, info: gridInfo }, { select: (h) => show({ head: h }), toggle: (h) => show({ head: h }), compare: (h) => show({ cmp: h }) });
    if (data.model_info) grid.setModel(data.model_info);
    grid.setRoles(data.roles ?? []);
    grid.render(data.overview);
  }
  if (data.maps) {
    const options = (none) => [none ? el("option", { value: "" }, "—") : null, ...data.maps.heads.map((h) => el("option", { value: headLabel(h) }, headLabel(h)))];
    const pickA = el("select", { class: "hs-pick", "aria-label": "head" }, options(false));
    const pickB = el("select", { class: "hs-pick-cmp", "aria-label": "compare with" }, options(true));
    const byLabel = (v) => data.maps.heads.find((h) => headLabel(h) === v) ?? null;
    pickA.addEventListener("change", () => show({ head: byLabel(pickA.value) }));
    pickB.addEventListener("change", () => show({ cmp: byLabel(pickB.value) }));
    const scale = el("select", { class: "hs-scale", "aria-label": "colour scale" }, el("option", {}, "linear"), el("option", {}, "log"));
    scale.addEventListener("change", () => show({ scale: scale.value }));
    Object.assign(parts, { pickA, pickB, scale });
    const label = (text, node) => el("label", {}, text, node);
    const save = svgButton(() => exportPlot(parts.heatmap, `headscope-${slug(parts.heatmap.dataset.heads ?? "map")}`, "svg"));
    const controls = el("div", { class: "controls" }, label("Head", pickA), label("vs", pickB), label("Scale", scale), save);
    body.append(el("section", { class: "hs-maps" }, controls, parts.info, parts.heatmap));
  }
  const figures = (data.figures ?? []).map((fig) => {
    const div = el("div", { class: "plot hs-figure" });
    const save = svgButton(() => exportPlot(div, `headscope-${slug(fig.title)}`, "svg"));
    body.append(el("section", { class: "hs-fig" }, el("div", { class: "controls" }, el("h3", {}, fig.title), save), div));
    return [div, fig];
  });
  if (data.ablation) body.append(ablationPanel(data));
  let sim = null;
  if (data.similarity) {
    sim = el("div", { class: "plot hs-similarity" });
    const save = svgButton(() => exportPlot(sim, `headscope-similarity-${data.similarity.metric}`, "svg"));
    body.append(el("section", { class: "hs-sim" }, el("div", { class: "controls" }, save), sim));
  }
  // every section is in place before anything is drawn, so each plot takes its section's final width
  for (const [div, fig] of figures) {
    const { width, ...layout } = fig.layout ?? {}; // the page's width need not fit here: fill the section
    await window.Plotly.react(div, fig.data, layout, { displaylogo: false, responsive: true });
  }
  if (sim) await drawSimilarity(sim, data.similarity, (a, b) => show({ head: a, cmp: b }));

  const mask = data.ablation?.ablate ?? [];
  /** Change what is shown: a head the snapshot holds is drawn; any other is named as missing. */
  async function show(patch) {
    Object.assign(state, patch);
    if (!data.maps) {
      grid?.mark({ mask, head: null, cmp: null, mode: "compare" });
      return;
    }
    const heads = [state.head, state.cmp].filter((h) => h && held(data.maps, h) >= 0);
    const missing = [state.head, state.cmp].filter((h) => h && held(data.maps, h) < 0).map(headLabel);
    parts.info.textContent = missing.length ? `${missing.join(", ")}: not in this snapshot (it holds ${data.maps.heads.map(headLabel).join(", ")})` : "";
    if (!heads.length) return;
    const shown = sameHead(heads[0], heads[1]) ? heads.slice(0, 1) : heads;
    parts.pickA.value = headLabel(shown[0]);
    parts.pickB.value = shown[1] ? headLabel(shown[1]) : "";
    parts.scale.value = state.scale;
    grid?.mark({ mask, head: shown[0], cmp: shown[1] ?? null, mode: "compare" });
    const panels = shown.map((h) => ({ title: headLabel(h), weights: weights[held(data.maps, h)] }));
    await drawMaps(parts.heatmap, data.tokens, panels, { scale: state.scale, maxHeight: 700 });
    parts.heatmap.dataset.heads = panels.map((p) => p.title).join(",");
  }

  await show({});
  root.dataset.ready = "1";
}
