// The page chrome every page shares: the status dot (busy while any tracked work runs, with what it is doing, for
// how long, and a Cancel for work that can be cancelled), the error bar (the one error shape's message, its code in
// data-code) and the model chip.
import { ApiError } from "./api.js";
import { isAbort } from "./util.js";

const $ = (id) => document.getElementById(id);
const pending = new Set(); // tracked work still running: {label, t0, cancel}
let ticking = 0;

/** The model chip's text, as each page has always shown it (the Heads page adds device and dtype). */
const CHIP = {
  full: (m) => `${m.name} · ${m.n_layers}L × ${m.n_heads}H · ${m.device} ${m.dtype}`,
  shape: (m) => `${m.name} · ${m.n_layers}L × ${m.n_heads}H`,
  heads: (m) => `${m.name} · ${m.n_layers}×${m.n_heads} heads`,
};

/** Wire the error bar's close button and the status Cancel; call once when the page starts. */
export function wireChrome() {
  $("error-close").addEventListener("click", hideError);
  $("status-cancel").addEventListener("click", () => {
    for (const work of pending) work.cancel?.();
  });
}

/** Name the model in the top bar: `form` is "full", "shape" or "heads" (see CHIP). */
export function showModel(model, form) {
  $("model-chip").textContent = CHIP[form](model);
}

/**
 * Show `label` while `promise` runs, with the seconds it has taken; with `cancel` (e.g. a request slot's cancel),
 * a Cancel button beside it calls it. Any failure but a cancellation lands in the error bar.
 */
export function track(promise, label, cancel = null) {
  const work = { label, t0: performance.now(), cancel };
  pending.add(work);
  showStatus();
  return promise
    .catch((err) => {
      if (!isAbort(err)) showError(err);
    })
    .finally(() => {
      pending.delete(work);
      showStatus();
    });
}

/** The status: the latest tracked work's label and seconds (ticking), Cancel while any of them can be cancelled. */
function showStatus() {
  const latest = [...pending].at(-1);
  clearInterval(ticking);
  $("status").classList.toggle("busy", !!latest);
  $("status-text").textContent = latest ? latest.label : "idle";
  $("status-cancel").hidden = ![...pending].some((w) => w.cancel);
  const tick = () => ($("status-time").textContent = latest ? ` ${((performance.now() - latest.t0) / 1000).toFixed(1)} s` : "");
  tick();
  if (latest) ticking = setInterval(tick, 100);
}

/** An error as the pages show it: its message in words (an API error's code only when it has no message). */
export const errorText = (err) => String(err?.message || err?.code || err);

/** Show an error in the error bar, with an optional `note` on a line of its own. */
export function showError(err, note = "") {
  console.warn(err);
  const message = errorText(err);
  $("error-text").textContent = note ? `${message}\n${note}` : message;
  $("error").dataset.code = err instanceof ApiError ? err.code : ""; // the API's code, for a test or a script
  $("error").hidden = false;
}

export function hideError() {
  $("error").hidden = true;
}
