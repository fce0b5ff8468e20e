// Downloads: every plot as PNG or SVG, the grid as PNG or SVG, and the data behind the current view as JSON.
import { download } from "../lib/util.js";

/** A Plotly plot as an image file; false when nothing is drawn there yet. */
export function exportPlot(div, name, format) {
  if (!div.querySelector(".main-svg")) return false;
  const scale = format === "png" ? 2 : 1;
  window.Plotly.downloadImage(div, { format, filename: name, scale, width: div.clientWidth, height: div.clientHeight });
  return true;
}

/** The grid picture (grid.toBlob() for PNG, grid.toSVG() for SVG); false before the first run. */
export async function exportGrid(grid, format) {
  const blob = format === "png" ? await grid.toBlob() : grid.toSVG();
  if (!blob) return false;
  download(`headscope-grid.${format}`, blob);
  return true;
}

/** A file name part from a text: letters, digits and dashes only. */
export const slug = (s) => s.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "view";

export function exportJSON(data) {
  download(`headscope-${Date.now()}.json`, new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }));
}
