// Page chrome shared by the Trace and Lecture pages: the error bar, the status dot, and panel work that
// looks stale (with a seconds counter) until it is drawn.
import * as api from "./api.js";
import { isAbort } from "./util.js";

const $ = (id) => document.getElementById(id);
let pending = 0;

/** Show an error in the page's error bar (the one error shape: "code: message"). */
export function showError(err) {
  console.warn(err);
  $("error-text").textContent = err instanceof api.ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
  $("error").hidden = false;
}

/**
 * Run one panel's work: the panel looks stale and its `progressSelector` element shows `label` with the
 * elapsed time until it is drawn (then `data-painted` counts up); an aborted request is silent, any other
 * error goes to the error bar.
 */
export async function panelTask(panel, label, work, progressSelector) {
  const progress = panel.querySelector(progressSelector);
  const t0 = performance.now();
  const tick = () => (progress.textContent = `${label} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  panel.classList.add("outdated");
  tick();
  const timer = setInterval(tick, 250);
  pending++;
  $("status").classList.add("busy");
  $("status-text").textContent = label;
  try {
    await work();
    panel.classList.remove("outdated");
    progress.textContent = "";
    requestAnimationFrame(() => (panel.dataset.painted = String(Number(panel.dataset.painted || 0) + 1)));
  } catch (err) {
    if (!isAbort(err)) {
      showError(err);
      progress.textContent = "failed";
    }
  } finally {
    clearInterval(timer);
    if (!--pending) {
      $("status").classList.remove("busy");
      $("status-text").textContent = "idle";
    }
  }
}
