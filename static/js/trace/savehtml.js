// The Trace page's "Save as HTML": every trace figure on screen (patching, DLA, logit lens, token view) as Plotly
// drew it (lib/savefigures.js). It only reads the page: a button beside the patching panel's title.
import { drawnFigures, saveButton } from "../lib/savefigures.js";

saveButton(document.querySelector("#patch-panel .panel-head"), "trace-html", () => {
  const clean = document.getElementById("clean").value;
  const corrupted = document.getElementById("corrupted").value;
  return { text: clean, title: `Trace: ${clean.slice(0, 60)} / ${corrupted.slice(0, 60)}`, figures: drawnFigures(document, ".tpanel") };
});
