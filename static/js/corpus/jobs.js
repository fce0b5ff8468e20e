// Job progress: follow a job through its Server-Sent Events, read with fetch() so they carry the API key
// (polling GET /api/jobs/{id} if the stream drops); draw its progress bar; list recent jobs to reopen or resume.
import * as api from "../lib/api.js";
import { el, fill } from "../lib/util.js";

export const ENDED = new Set(["done", "failed", "cancelled", "interrupted"]);
export const RUNNING = new Set(["queued", "running"]);
export const RESUMABLE = new Set(["interrupted", "cancelled", "failed"]);
const POLL_MS = 1000;

/**
 * Follow job `id` until it ends or `signal` aborts: onProgress(job) at each finished batch, onEnd(job) once,
 * onError(err) for a failed poll. The events come through fetch() (api.jobEvents), so they carry the API key.
 */
export function watchJob(id, signal, { onProgress, onEnd, onError }) {
  let timer = 0;
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
  const settle = async () => {
    // the end (or a dropped stream): ask for the job itself, then stop or keep polling
    if (signal.aborted) return;
    try {
      const job = await api.job(id, { signal });
      if (ENDED.has(job.state)) {
        onEnd(job);
        return;
      }
      onProgress(job);
    } catch (err) {
      if (signal.aborted) return;
      onError(err);
      if (err.status === 404) return;
    }
    timer = setTimeout(settle, POLL_MS);
  };
  const follow = async () => {
    try {
      for await (const { event, data } of api.jobEvents(id, { signal })) {
        if (signal.aborted) return;
        let job;
        try {
          job = JSON.parse(data);
        } catch {
          continue; // not the job JSON: the next event or the end will tell
        }
        if (event === "progress") onProgress(job);
        else if (event === "end" && ENDED.has(job.state)) {
          onEnd(job); // leaving the loop closes the stream
          return;
        }
      }
    } catch {
      // a dropped stream (or an abort): settle() asks for the job itself
    }
    settle();
  };
  follow();
}

const number = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "–");

/** Seconds as "0:42" or "1:02:03". */
export function duration(s) {
  if (!Number.isFinite(s) || s < 0) return "–";
  const t = Math.round(s);
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = String(t % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** The progress line: "37 / 256 texts · 4,736 tokens · 1,210 tokens/s · ETA 3:12" (before its texts are counted, why). */
export function progressText(job) {
  const p = job.progress ?? {};
  if (!p.total && RUNNING.has(job.state)) {
    return job.state === "queued" ? "queued: it starts when the jobs ahead of it are done" : "starting: counting the texts…";
  }
  const parts = [`${number(p.done ?? 0)} / ${number(p.total)} texts`, `${number(p.tokens ?? 0)} tokens`];
  if (Number.isFinite(p.tokens_per_s) && p.tokens_per_s > 0) parts.push(`${number(p.tokens_per_s)} tokens/s`);
  if (RUNNING.has(job.state)) parts.push(`ETA ${duration(p.eta_s)}`);
  return parts.join(" · ");
}

export const stateBadge = (state) => el("span", { class: `cbadge st-${state}` }, state);

/** Update the progress bar (role=progressbar) and its caption for a job. */
export function renderProgress({ bar, text, state }, job) {
  const p = job.progress ?? {};
  const total = Math.max(0, p.total ?? 0);
  const done = Math.min(total, Math.max(0, p.done ?? 0));
  bar.setAttribute("aria-valuemax", String(total));
  bar.setAttribute("aria-valuenow", String(done));
  bar.setAttribute("aria-valuetext", progressText(job));
  bar.dataset.state = job.state;
  bar.firstElementChild.style.width = `${total ? (100 * done) / total : 0}%`;
  text.textContent = progressText(job);
  fill(state, stateBadge(job.state), job.error ? el("span", { class: "job-error" }, job.error) : null);
}

function when(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return "";
  const d = new Date(t);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

/** The recent-jobs list's count: "37/256", or why there is none yet ("queued", "starting") instead of "0/0". */
export function countText(job) {
  const p = job.progress ?? {};
  if (!p.total && RUNNING.has(job.state)) return job.state === "queued" ? "queued" : "starting";
  return `${number(p.done ?? 0)}/${number(p.total)}`;
}

/** The recent-jobs list: each job opens on click; interrupted, cancelled and failed ones can be resumed. */
export function renderJobList(root, jobs, { current, names, onOpen, onResume }) {
  if (!jobs.length) return fill(root, el("li", { class: "muted" }, "No jobs yet."));
  fill(
    root,
    jobs.map((job) => {
      const p = job.progress ?? {};
      const open = el(
        "button",
        {
          type: "button",
          class: "job-open",
          "aria-current": job.id === current ? "true" : null,
          title: job.id,
          onclick: () => onOpen(job.id),
        },
        el("span", { class: "job-name" }, names.get(job.dataset) ?? job.dataset),
        el("span", { class: "job-meta muted" }, `${job.analyses.join(" + ")} · ${countText(job)} · ${when(job.created)}`),
      );
      const resume = RESUMABLE.has(job.state)
        ? el("button", { type: "button", class: "btn small", title: "continue from the last finished batch", onclick: () => onResume(job.id) }, "Resume")
        : null;
      return el("li", { class: "job", dataset: { job: job.id, state: job.state } }, open, stateBadge(job.state), resume);
    }),
  );
}
