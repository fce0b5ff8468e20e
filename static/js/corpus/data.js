// Where a job's texts come from: a stored dataset (built-ins first), an uploaded .jsonl/.txt file, or pasted texts.
import * as api from "../lib/api.js";
import { el, fill } from "../lib/util.js";

const SOURCES = ["pick", "upload", "paste"];

/** Pasted texts: documents separated by blank lines, as in an uploaded .txt file. */
export const splitTexts = (raw) =>
  raw
    .split(/\r?\n[ \t]*\r?\n/)
    .map((t) => t.trim())
    .filter(Boolean);

const count = (n) => (Number.isFinite(n) ? n.toLocaleString("en-US") : "?");

export class DatasetForm {
  /** els: source (the Pick/Upload/Paste toggle group), panes {pick, upload, paste}, select, info, file, name, paste. */
  constructor(els) {
    this.els = els;
    this.list = [];
    this.source = "pick";
    els.source.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-source]");
      if (b) this.setSource(b.dataset.source);
    });
    els.select.addEventListener("change", () => this.#info());
    els.paste.addEventListener("input", () => this.#pasteCount());
  }

  setSource(source) {
    this.source = SOURCES.includes(source) ? source : "pick";
    for (const b of this.els.source.querySelectorAll("button[data-source]")) {
      b.setAttribute("aria-pressed", String(b.dataset.source === this.source));
    }
    for (const [key, pane] of Object.entries(this.els.panes)) pane.hidden = key !== this.source;
    this.els.name.closest("label").hidden = this.source === "pick";
  }

  /** id → name of every stored dataset (for the job list). */
  get names() {
    return new Map(this.list.map((d) => [d.id, d.name]));
  }

  /** Reload the dataset list; keep the current choice or select `select`. */
  async refresh(select = null) {
    const keep = select ?? this.els.select.value;
    this.list = (await api.datasets()).datasets;
    fill(
      this.els.select,
      this.list.map((d) => el("option", { value: d.id }, `${d.name}${d.builtin ? " (built-in)" : ""} · ${count(d.n_texts)} texts`)),
    );
    if (this.list.some((d) => d.id === keep)) this.els.select.value = keep;
    this.#info();
    return this.list;
  }

  /** The dataset the job will run on; an upload or a paste is stored first (and then becomes the picked one). */
  async resolve() {
    const name = this.els.name.value.trim();
    let created = null;
    if (this.source === "upload") {
      const file = this.els.file.files[0];
      if (!file) throw new Error("choose a .jsonl or .txt file to upload");
      created = await api.uploadDataset(file, name || null);
    } else if (this.source === "paste") {
      created = await api.createDataset(name || "pasted texts", splitTexts(this.els.paste.value));
    } else {
      if (!this.els.select.value) throw new Error("no dataset to pick: upload a file or paste texts");
      return this.els.select.value;
    }
    await this.refresh(created.id);
    this.els.file.value = "";
    this.els.name.value = "";
    this.setSource("pick");
    return created.id;
  }

  #info() {
    const d = this.list.find((x) => x.id === this.els.select.value);
    this.els.info.textContent = d
      ? `${count(d.n_texts)} texts · ${d.n_tokens == null ? "tokens not counted yet" : `${count(d.n_tokens)} tokens`}${d.builtin ? " · built-in" : ""}`
      : "";
  }

  #pasteCount() {
    const n = splitTexts(this.els.paste.value).length;
    this.els.pasteInfo.textContent = `${n} text${n === 1 ? "" : "s"} (separate texts with a blank line)`;
  }
}
