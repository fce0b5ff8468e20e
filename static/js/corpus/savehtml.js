// The Corpus page's "Save as HTML": the job's figures on screen (heads by two metrics, similarity across the
// dataset) as Plotly drew them (lib/savefigures.js). It only reads the page: a button beside the grid's title.
import { drawnFigures, saveButton } from "../lib/savefigures.js";

saveButton(document.querySelector("#grid-panel .panel-head"), "corpus-html", () => {
  const job = new URLSearchParams(location.search).get("job") ?? "";
  return { text: `Corpus job ${job}`, title: `Corpus job ${job}`, figures: drawnFigures(document, ".panel") };
});
