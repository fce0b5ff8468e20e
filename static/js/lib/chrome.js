// The page chrome every page shares: the status dot (busy while any tracked work runs, with what it is doing),
// the error bar (the one error shape, "code: message") and the model chip.
import { ApiError } from "./api.js";
import { isAbort } from "./util.js";

const $ = (id) => document.getElementById(id);
let pending = 0;

/** The model chip's text, as each page has always shown it (the Heads page adds device and dtype). */
const CHIP = {
  full: (m) => `${m.name} · ${m.n_layers}L × ${m.n_heads}H · ${m.device} ${m.dtype}`,
  shape: (m) => `${m.name} · ${m.n_layers}L × ${m.n_heads}H`,
  heads: (m) => `${m.name} · ${m.n_layers}×${m.n_heads} heads`,
};

/** Wire the error bar's close button; call once when the page starts. */
export function wireChrome() {
  $("error-close").addEventListener("click", hideError);
}

/** Name the model in the top bar: `form` is "full", "shape" or "heads" (see CHIP). */
export function showModel(model, form) {
  $("model-chip").textContent = CHIP[form](model);
}

/** Show `label` while `promise` runs; any failure but a cancellation lands in the error bar. */
export function track(promise, label) {
  pending++;
  $("status").classList.add("busy");
  $("status-text").textContent = label;
  return promise
    .catch((err) => {
      if (!isAbort(err)) showError(err);
    })
    .finally(() => {
      if (--pending) return;
      $("status").classList.remove("busy");
      $("status-text").textContent = "idle";
    });
}

/** An error as the pages show it: "code: message" for the API's errors, else the message. */
export const errorText = (err) => (err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message || err));

/** Show an error in the error bar, with an optional `note` on a line of its own. */
export function showError(err, note = "") {
  console.warn(err);
  const message = errorText(err);
  $("error-text").textContent = note ? `${message}\n${note}` : message;
  $("error").hidden = false;
}

export function hideError() {
  $("error").hidden = true;
}
