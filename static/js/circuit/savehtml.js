// The Circuit page's "Save as HTML": the graph, the faithfulness curve and a selected edge's spread over pairs, as
// Plotly drew them (lib/savefigures.js). It only reads the page: a button beside the graph's SVG export.
import { drawnFigures, saveButton } from "../lib/savefigures.js";

saveButton(document.querySelector("#graph-panel .exports"), "circuit-html", () => {
  const set = document.getElementById("pair-set");
  const clean = document.getElementById("clean").value;
  const corrupted = document.getElementById("corrupted").value;
  const over = set.value ? set.selectedOptions[0].textContent : "";
  const text = over ? `Circuit over ${over}` : clean;
  const title = over ? `Circuit: mean over ${over}` : `Circuit: ${clean.slice(0, 60)} / ${corrupted.slice(0, 60)}`;
  return { text, title, figures: drawnFigures(document, ".panel") };
});
