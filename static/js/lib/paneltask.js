// Panel work on the Trace and Lecture pages: the panel looks stale, with a seconds counter, until it is drawn.
import { track } from "./chrome.js";
import { isAbort } from "./util.js";

/**
 * Run one panel's work under the status dot: the panel looks stale and its `progressSelector` element shows
 * `label` with the elapsed time until it is drawn (then `data-painted` counts up). An aborted request is
 * silent; any other error goes to the error bar and the panel says "failed".
 */
export function panelTask(panel, label, work, progressSelector) {
  const progress = panel.querySelector(progressSelector);
  const t0 = performance.now();
  const tick = () => (progress.textContent = `${label} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  panel.classList.add("outdated");
  tick();
  const timer = setInterval(tick, 250);
  const drawn = (async () => {
    try {
      await work();
      panel.classList.remove("outdated");
      progress.textContent = "";
      requestAnimationFrame(() => (panel.dataset.painted = String(Number(panel.dataset.painted || 0) + 1)));
    } catch (err) {
      if (!isAbort(err)) progress.textContent = "failed";
      throw err;
    } finally {
      clearInterval(timer);
    }
  })();
  return track(drawn, label);
}
