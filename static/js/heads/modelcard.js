// The model card: shape, each layer's attention variant, KV groups (which query heads share each KV head)
// and the KV-cache cost per token.
import { bytes, el, fill } from "../lib/util.js";

function params(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${(n / 1e3).toFixed(0)}K`;
}

/** "local 4 ×2 / global ×1" from /api/model's layer_variants, in order of first appearance. */
export function variantSummary(variants) {
  const counts = new Map();
  for (const v of variants) counts.set(v.label, (counts.get(v.label) ?? 0) + 1);
  if (counts.size === 1) return `${[...counts.keys()][0]} (every layer)`;
  return [...counts].map(([label, n]) => `${label} ×${n}`).join(" / ");
}

function variantsBlock(variants) {
  if (!variants?.length) return null;
  return el(
    "details",
    { class: "variants" },
    el("summary", {}, "attention: ", el("span", { class: "variant-summary" }, variantSummary(variants))),
    el(
      "ol",
      { class: "variant-list", start: "0" },
      variants.map((v) => el("li", { dataset: { layer: String(v.layer) } }, `L${v.layer} ${v.label}`)),
    ),
    variants.some((v) => v.sinks) ? el("p", { class: "muted" }, "with sinks a row of the map sums to less than 1: the rest went to the sink") : null,
  );
}

export function renderModel(node, m) {
  const facts = [
    ["architecture", m.architecture],
    ["parameters", params(m.n_params)],
    ["layers", m.n_layers],
    ["query heads / layer", m.n_heads],
    ["KV heads / layer", m.n_kv_heads],
    ["head dim · d_model", `${m.head_dim} · ${m.d_model}`],
    ["max tokens", m.max_tokens],
    ["device · dtype", `${m.device} · ${m.dtype}`],
  ];
  const kv = m.kv_cache ?? { this_model: m.kv_cache_bytes_per_token };
  const worst = Math.max(kv.this_model, kv.mha ?? 0, kv.mqa ?? 0) || 1;
  const bar = (label, value, cls) =>
    el(
      "div",
      { class: `kv-row ${cls}` },
      el("span", { class: "kv-name" }, label),
      el("span", { class: "kv-bar" }, el("span", { style: { width: `${(value / worst) * 100}%` } })),
      el("span", { class: "kv-val" }, bytes(value)),
    );
  const kind = m.n_kv_heads === m.n_heads ? "MHA" : m.n_kv_heads === 1 ? "MQA" : `GQA, ${m.n_heads / m.n_kv_heads} query heads per KV head`;
  fill(
    node,
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    variantsBlock(m.layer_variants),
    el("h3", { class: "sub" }, "KV groups ", el("span", { class: "muted" }, kind)),
    el(
      "div",
      { class: "kv-groups" },
      m.kv_groups.map((g, i) => el("div", { class: `kv-group kv-${i % 2}` }, el("b", {}, `KV${i}`), " ← ", g.map((h) => `H${h}`).join(" "))),
    ),
    el("h3", { class: "sub" }, "KV cache per token ", el("span", { class: "muted" }, `all layers, ${m.dtype}`)),
    el(
      "div",
      { class: "kv-cost" },
      bar("this model", kv.this_model, "this"),
      kv.mha !== undefined ? bar("MHA", kv.mha, "") : null,
      kv.mqa !== undefined ? bar("MQA", kv.mqa, "") : null,
    ),
    kv.saving_vs_mha !== undefined ? el("p", { class: "muted" }, `${Math.round(kv.saving_vs_mha * 100)}% smaller than MHA`) : null,
  );
}
