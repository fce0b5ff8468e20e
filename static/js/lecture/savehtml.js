// The Lecture page's "Save as HTML": the pruning curve and the head-count trade-off as Plotly drew them
// (lib/savefigures.js). It only reads the page: a button beside the curve panel's title.
import { drawnFigures, saveButton } from "../lib/savefigures.js";
import { fromURL } from "./state.js";

saveButton(document.querySelector("#curve-panel .panel-head"), "lecture-html", () => {
  const S = fromURL(); // what is drawn: the state the last run put in the URL
  const on = S.src === "dataset" ? `dataset ${S.dataset} (first ${S.texts} texts, ${S.tokens} tokens each)` : S.text;
  return { text: on, title: `Lecture: ${on.slice(0, 60)}`, figures: drawnFigures(document, ".lpanel") };
});
