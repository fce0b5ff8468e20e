// Direct logit attribution, drawn: the heads that push the target's logit most (sign-coloured bars),
// attention vs MLP per layer, and the sum that checks the parts.
import { el, fill, fmt, signed, visible } from "../lib/util.js";
import { clear, draw, layout, signColor } from "./plot.js";

const ATTN = "#6366f1";
const MLP = "#f59e0b";

/** What the logit is, and its parts: "logit[·Mary] − logit[·John] = 3.2 = heads … + MLPs … + …". */
export function renderSummary(node, res) {
  const heads = res.heads.flat().reduce((a, b) => a + b, 0);
  const mlp = res.mlp.reduce((a, b) => a + b, 0);
  node.dataset.logit = String(res.logit);
  const what = `logit[${visible(res.target.token)}]` + (res.contrast ? ` − logit[${visible(res.contrast.token)}]` : "");
  fill(
    node,
    el("span", { class: "mono" }, what),
    " = ",
    el("b", {}, fmt(res.logit)),
    el("span", { class: "muted" }, ` = heads ${signed(heads, 2)} · MLPs ${signed(mlp, 2)} · embed ${signed(res.embed, 2)} · biases ${signed(res.other, 2)}`),
  );
  if (res.final_softcap != null) {
    // the cap is not linear: the parts explain the logit before it, and the page says which number is which
    node.append(
      el("span", { class: "muted softcap" }, ` · the parts explain the logit before the final soft-cap ${res.final_softcap}·tanh(z/${res.final_softcap}); after it, as the model outputs: ${fmt(res.model_logit)}`),
    );
  }
}

/**
 * Horizontal bars of the k heads with the largest |direct effect|, largest on top. Clicking a bar calls
 * onHead({layer, head}, mouseEvent), as a patching cell does.
 */
export function drawHeads(div, res, onHead = null, k = 12) {
  const ranked = res.heads
    .flatMap((row, layer) => row.map((value, head) => ({ label: `L${layer}H${head}`, layer, head, value })))
    .sort((a, b) => Math.abs(b.value) - Math.abs(a.value))
    .slice(0, k)
    .reverse();
  const trace = {
    type: "bar",
    orientation: "h",
    x: ranked.map((r) => r.value),
    y: ranked.map((r) => r.label),
    marker: { color: ranked.map((r) => signColor(r.value)) },
    customdata: ranked.map((r) => [r.layer, r.head]),
    hovertemplate: `%{y}: %{x:.3f}${onHead ? "<br>click: open it in the head view, switched off" : ""}<extra>direct effect</extra>`,
  };
  const lay = layout(Math.max(200, ranked.length * 19 + 50), {
    xaxis: { zeroline: true, zerolinecolor: "#9ca3af", gridcolor: "#eef0f4", fixedrange: true, title: { text: "direct effect on the logit", standoff: 4 } },
    yaxis: { type: "category", fixedrange: true, tickfont: { family: "ui-monospace, 'DejaVu Sans Mono', monospace" } },
    margin: { l: 56, r: 10, t: 4, b: 40 },
    bargap: 0.25,
  });
  return draw(div, [trace], lay).then(() => {
    div.dataset.bars = String(ranked.length);
    div.removeAllListeners?.("plotly_click");
    if (onHead) {
      div.on("plotly_click", (ev) => {
        const [layer, head] = ev.points[0].customdata;
        onHead({ layer, head }, ev.event);
      });
    }
  });
}

/** Per layer: the sum of its heads' direct effects next to its MLP's. */
export function drawLayers(div, res) {
  const layers = res.mlp.map((_, l) => `L${l}`);
  const attn = res.heads.map((row) => row.reduce((a, b) => a + b, 0));
  const bar = (name, y, color) => ({
    type: "bar",
    name,
    x: layers,
    y,
    marker: { color },
    hovertemplate: `%{x} ${name}: %{y:.3f}<extra></extra>`,
  });
  const lay = layout(230, {
    barmode: "group",
    bargap: 0.2,
    xaxis: { type: "category", fixedrange: true, tickfont: { size: 9 } },
    yaxis: { zeroline: true, zerolinecolor: "#9ca3af", gridcolor: "#eef0f4", fixedrange: true },
    legend: { orientation: "h", x: 0, y: 1.12, font: { size: 11 } },
    margin: { l: 40, r: 8, t: 22, b: 30 },
  });
  return draw(div, [bar("attention", attn, ATTN), bar("MLP", res.mlp, MLP)], lay);
}

export function clearDLA(nodes, message) {
  fill(nodes.summary);
  clear(nodes.heads, message);
  clear(nodes.layers);
}
