// The API key of a server started with HEADSCOPE_API_KEY: asked for once, kept for this tab (sessionStorage).
import { el } from "./util.js";

const STORE = "headscope:api-key";
let asking = null; // one prompt at a time, however many requests were refused
let memory = ""; // where storage is disabled: kept until the page unloads

/** The key this tab holds, or "" when none was given. */
export function apiKey() {
  try {
    return sessionStorage.getItem(STORE) || memory;
  } catch {
    return memory;
  }
}

/** Headers that carry the key (the server also takes `Authorization: Bearer KEY`). */
export function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

/** The server refused the key (401): forget it and ask for another. Resolves once one is entered. */
export function askForKey(rejected) {
  if (!asking) {
    memory = "";
    try {
      sessionStorage.removeItem(STORE);
    } catch {
      // nothing stored
    }
    asking = showDialog(rejected).finally(() => (asking = null));
  }
  return asking;
}

function showDialog(rejected) {
  return new Promise((resolve) => {
    const input = el("input", { type: "password", id: "api-key-input", autocomplete: "off", required: true, "aria-label": "API key" });
    const form = el(
      "form",
      { method: "dialog", class: "key-form" },
      el("h2", {}, "API key"),
      el("p", {}, "This server asks for an API key. It is kept in this tab only and sent with each request."),
      rejected ? el("p", { class: "key-error", role: "alert" }, "The server did not accept that key.") : null,
      el("div", { class: "row" }, input, el("button", { type: "submit", class: "btn primary", id: "api-key-submit" }, "Use key")),
    );
    const dialog = el("dialog", { class: "key-dialog", id: "api-key-dialog", "aria-label": "API key" }, form);
    form.addEventListener("submit", (e) => {
      const key = input.value.trim();
      if (!key) {
        e.preventDefault();
        return;
      }
      memory = key;
      try {
        sessionStorage.setItem(STORE, key);
      } catch {
        // storage disabled: `memory` keeps it for this page
      }
      dialog.close();
      dialog.remove();
      resolve(key);
    });
    dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}
