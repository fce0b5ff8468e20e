// Panel work on the Trace and Lecture pages: the panel looks stale, with a seconds counter, until it is drawn.
import { track } from "./chrome.js";
import { isAbort } from "./util.js";

const current = new WeakMap(); // panel → its latest task: an older task's end must not overwrite the newer one's text

/**
 * Run one panel's work under the status dot: the panel looks stale and its `progressSelector` element shows
 * `label` with the elapsed time until it is drawn (then `data-painted` counts up). `cancel` (the request slot's
 * cancel) puts a Cancel beside the status; a cancelled panel says so. An aborted request is otherwise silent; any
 * other error goes to the error bar and the panel says "failed".
 */
export function panelTask(panel, label, work, progressSelector, cancel = null) {
  const progress = panel.querySelector(progressSelector);
  const mine = {};
  current.set(panel, mine);
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
      if (current.get(panel) === mine) progress.textContent = isAbort(err) ? "cancelled" : "failed";
      throw err;
    } finally {
      clearInterval(timer);
    }
  })();
  return track(drawn, label, cancel);
}
