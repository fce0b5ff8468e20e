// Page chrome the Heads and Corpus pages share: the status dot (busy while any tracked work runs, with what it
// is doing) and the error bar (the one error shape, "code: message").
import { ApiError } from "./api.js";
import { isAbort } from "./util.js";

const $ = (id) => document.getElementById(id);
let pending = 0;

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

/** Show an error in the error bar, with an optional `note` on a line of its own. */
export function showError(err, note = "") {
  console.warn(err);
  const message = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message || err);
  $("error-text").textContent = note ? `${message}\n${note}` : message;
  $("error").hidden = false;
}
