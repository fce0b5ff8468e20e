// "Save as HTML" for a page's Plotly figures: every plot drawn under a root, as the page drew it, in one
// self-contained file the server writes (POST /api/snapshot with `figures`): it opens offline with hover and zoom.
import { ApiError } from "./api.js";
import { authHeaders } from "./auth.js";
import { showError } from "./chrome.js";
import { download, el } from "./util.js";

/** {title, data, layout} of every visible drawn plot under `root`, titled by its panel's h2 and its own id. */
export function drawnFigures(root, panelSelector) {
  return [...root.querySelectorAll(`${panelSelector} .js-plotly-plot`)]
    .filter((div) => div.data?.length && div.offsetParent !== null)
    .map((div) => {
      const panel = div.closest(panelSelector)?.querySelector("h2")?.textContent ?? "figure";
      return { title: `${panel} · ${div.id.replace(/-/g, " ")}`, data: div.data, layout: div.layout ?? {} };
    });
}

/** Ask the server for the file of `figures` (plain JSON copies) about `text`, and download it. */
export async function saveFigures({ text, title, figures }) {
  if (!figures.length) throw new Error("nothing is drawn yet");
  const body = { text, title, thumbnails: false, figures: JSON.parse(JSON.stringify(figures)) };
  const res = await fetch("/api/snapshot", {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error ?? `http_${res.status}`, data?.detail);
  }
  const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1] ?? "headscope.html";
  download(name, await res.blob());
}

/** A "Save as HTML" button appended to `container`; `describe()` gives {text, title, figures} when clicked. */
export function saveButton(container, id, describe) {
  const button = el("button", { type: "button", class: "btn small", id, title: "Save these figures as one HTML file that opens offline" }, "Save as HTML");
  button.addEventListener("click", () => saveFigures(describe()).catch(showError));
  container?.append(button);
  return button;
}
