// "Save as HTML": the server writes one self-contained file of what a view shows (POST /api/snapshot): the data,
// the page's view code and plotly.js, so it opens from disk with no network and no server.
import { ApiError } from "../lib/api.js";
import { authHeaders } from "../lib/auth.js";
import { saveFigures } from "../lib/savefigures.js";
import { download } from "../lib/util.js";

/**
 * What the file holds for `view` ("grid", "heat" or "sim"): the grid always, the shown heads' maps, the matrix,
 * and with heads switched off the next-token predictions with and without them (the server runs both).
 */
export function snapshotBody(text, S, view) {
  const heads = [S.head, S.mode === "compare" ? S.cmp : null].filter(Boolean);
  return {
    text,
    heads,
    cmp: heads[1] ?? null,
    thumbnails: true,
    similarity: view === "sim" ? S.metric : null,
    scale: S.scale,
    ablate: S.mask,
    mode: S.abl,
  };
}

/** Ask the server for the file and download it under the name it gives. */
export async function saveHTML(text, S, view) {
  const res = await fetch("/api/snapshot", {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify(snapshotBody(text, S, view)),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error ?? `http_${res.status}`, data?.detail);
  }
  const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1] ?? "headscope.html";
  download(name, await res.blob());
}

/**
 * The Composition tab's matrix as drawn (POST /api/snapshot with `figures`): it comes from the weights, so the
 * file names the kind and, for context only, the prompt on the page (or says there was none).
 */
export function saveCompositionHTML(plot, kind, text) {
  if (!plot?.data?.length) return Promise.reject(new Error("the composition matrix is not drawn yet"));
  const title = `${kind.toUpperCase()}-composition of every head pair, from the weights`;
  const figure = { title, data: plot.data, layout: plot.layout ?? {} };
  return saveFigures({ text: text || "(no prompt: composition scores come from the weights)", title, figures: [figure] });
}
