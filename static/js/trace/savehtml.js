// The Trace page's "Save as HTML": every trace figure on screen (patching, DLA, logit lens, token view) as Plotly
// drew it, in one self-contained file the server writes (POST /api/snapshot with `figures`). It only reads the
// page: a button beside the patching panel's title, and the plots' own data.
import { ApiError } from "../lib/api.js";
import { authHeaders } from "../lib/auth.js";
import { showError } from "../lib/chrome.js";
import { download, el } from "../lib/util.js";

/** {title, data, layout} of every drawn plot of the trace panels, titled by its panel (and its own id). */
export function traceFigures(root = document) {
  return [...root.querySelectorAll(".tpanel .js-plotly-plot")]
    .filter((div) => div.data?.length && div.offsetParent !== null)
    .map((div) => {
      const panel = div.closest(".tpanel")?.querySelector("h2")?.textContent ?? "figure";
      return { title: `${panel} · ${div.id.replace(/-/g, " ")}`, data: div.data, layout: div.layout ?? {} };
    });
}

async function save() {
  const figures = JSON.parse(JSON.stringify(traceFigures())); // plain JSON: Plotly keeps private keys on traces
  if (!figures.length) throw new Error("trace something first");
  const text = document.getElementById("clean").value;
  const corrupted = document.getElementById("corrupted").value;
  const body = { text, figures, thumbnails: false, title: `Trace: ${text.slice(0, 60)}${corrupted ? ` / ${corrupted.slice(0, 60)}` : ""}` };
  const res = await fetch("/api/snapshot", {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error ?? `http_${res.status}`, data?.detail);
  }
  const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1] ?? "headscope-trace.html";
  download(name, await res.blob());
}

const button = el("button", { type: "button", class: "btn small", id: "trace-html", title: "Save every trace figure as one HTML file that opens offline" }, "Save as HTML");
button.addEventListener("click", () => save().catch(showError));
document.querySelector("#patch-panel .panel-head")?.append(button);
