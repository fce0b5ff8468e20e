// The JSON API, one function per endpoint. Each takes an optional {signal} to cancel a stale request.
import { apiKey, askForKey, authHeaders } from "./auth.js";
import { mapRows } from "./decode.js";
import { readEvents } from "./sse.js";

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(describe(detail) || code);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return typeof detail === "string" ? detail : "";
}

/** Wait `ms`, or reject with an AbortError when `signal` aborts; the abort listener goes either way. */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new DOMException("aborted", "AbortError"));
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const MAX_RETRIES = 3;

/**
 * One request, with the API key; a 503 (busy or not ready yet) is retried after its Retry-After, a few times,
 * and a 401 (the server has an API key) asks for the key and sends the request again. `body` is JSON, or
 * FormData sent as it is. Resolves to the response once it is OK; otherwise throws an ApiError.
 */
async function send(method, path, body, { signal, accept } = {}) {
  const form = body instanceof FormData;
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(path, {
      method,
      signal,
      headers: { ...authHeaders(), ...(body && !form ? { "content-type": "application/json" } : {}), ...(accept ? { accept } : {}) },
      body: body ? (form ? body : JSON.stringify(body)) : undefined,
    });
    if (res.status === 401) {
      await askForKey(!!apiKey());
      attempt = -1;
      continue;
    }
    if (res.status === 503 && attempt < MAX_RETRIES) {
      const wait = Math.min(5, Number(res.headers.get("retry-after")) || 1);
      await sleep(wait * 1000, signal);
      continue;
    }
    if (res.ok) return res;
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, data?.error ?? `http_${res.status}`, data?.detail);
  }
}

/** A JSON request (see send()); resolves to the parsed answer. */
async function request(method, path, body, { signal } = {}) {
  const res = await send(method, path, body, { signal });
  try {
    return await res.json();
  } catch (err) {
    if (signal?.aborted) throw err; // cancelled while the body was arriving: not an empty answer
    return null; // an OK answer without a JSON body (204)
  }
}

/** A Server-Sent Events request (see send()): an async iterator of {event, data}, read with the key sent. */
async function* stream(method, path, body, { signal } = {}) {
  yield* readEvents(await send(method, path, body, { signal, accept: "text/event-stream" }));
}

export const model = (opts) => request("GET", "/api/model", null, opts);

/** The per-head role scores: [{name, label, description}] (names are fields of /api/heads). */
export const roles = (opts) => request("GET", "/api/roles", null, opts);

/** Token ids and display strings; 422 when the text is over the server's token limit. */
export const tokenize = (text, opts) => request("POST", "/api/tokenize", { text }, opts);

/** Thumbnails, role scores and the prediction for every head, in one pass. */
export const overview = (text, { thumb = 32, topK = 10 } = {}, opts) =>
  request("POST", "/api/overview", { text, thumb, top_k: topK }, opts);

/** Full attention maps of some heads, fetched as float16 (a fifth of the JSON) and handed back as `weights` rows. */
export async function attention(text, heads, opts) {
  const res = await request("POST", "/api/attention", { text, heads, encoding: "f16" }, opts);
  return { ...res, maps: res.maps.map((m) => ({ layer: m.layer, head: m.head, weights: mapRows(m) })) };
}

/** Prediction with heads switched off, and maps under that ablation (fetched as float16, handed back as rows). */
export async function ablate(text, heads, { mode = "zero", topK = 10, maps = [] } = {}, opts) {
  const body = { text, ablate: heads, mode, top_k: topK, maps, encoding: "f16" };
  const res = await request("POST", "/api/ablate", body, opts);
  return { ...res, maps: res.maps.map((m) => ({ layer: m.layer, head: m.head, weights: mapRows(m) })) };
}

export function similarity(text, { metric = "js", order = "layer", layer = null, kvHead = null } = {}, opts) {
  const body = { text, metric, order };
  if (layer !== null) body.layer = layer;
  if (kvHead !== null) body.kv_head = kvHead;
  return request("POST", "/api/similarity", body, opts);
}

export const importance = (text, method = "gradient", opts) =>
  request("POST", "/api/importance", { text, method }, opts);

export const heads = (text, opts) => request("POST", "/api/heads", { text }, opts);

// -- causal tracing (the Trace page) --

/** Activation patching: every head's recovery of the answer−wrong logit difference (plus options). */
export const patch = (body, opts) => request("POST", "/api/patch", body, opts);

/** Direct logit attribution of a target token (minus a contrast) to every head, MLP and the embeddings. */
export const dla = (body, opts) => request("POST", "/api/dla", body, opts);

/** Logit lens: each block's residual stream read out through the final norm and the LM head. */
export const logitLens = (body, opts) => request("POST", "/api/logit_lens", body, opts);

// -- circuits (the Circuit page) --

/** Edge attribution (EAP / EAP-IG) on a prompt pair: edges by |score|, node scores, the faithfulness curve. */
export const circuit = (body, opts) => request("POST", "/api/circuit", body, opts);

/** Exact path patching of chosen edges (or "all"): the metric with only those edges carrying the other run. */
export const pathPatch = (body, opts) => request("POST", "/api/path_patch", body, opts);

/** Edge attribution over a set of prompt pairs (`pair_set` or `pairs`): each edge's mean score with a bootstrap CI. */
export const circuitPairs = (body, opts) => request("POST", "/api/circuit_pairs", body, opts);

/** The built-in prompt-pair sets (with their pairs) and the most pairs one request measures. */
export const pairSets = (opts) => request("GET", "/api/pair_sets", null, opts);

/** Every head's attention row from one query position (the token view). */
export const attentionFrom = (text, queryPos, opts) =>
  request("POST", "/api/attention_from", { text, query_pos: queryPos }, opts);

// -- why a head attends (the Heads page's Why here?, Circuits and Composition) --

/** A head's pre-softmax score at (query_pos, key_pos) split exactly into query-node × key-node terms. */
export const qkAttribution = (body, opts) => request("POST", "/api/qk_attribution", body, opts);

/** One head's QK and OV circuits from the weights: singular values, copying score, OV token map, top senders. */
export const headCircuits = ({ layer, head }, opts) =>
  request("GET", `/api/head_circuits?${new URLSearchParams({ layer, head })}`, null, opts);

/** Composition scores ("q", "k" or "v") of every sender head into every later receiver head, and the baseline. */
export const composition = (kind, opts) => request("GET", `/api/composition?${new URLSearchParams({ kind })}`, null, opts);

// -- corpus mode: datasets and jobs ----------------------------------------------------------------

export const datasets = (opts) => request("GET", "/api/datasets", null, opts);
export const dataset = (id, opts) => request("GET", `/api/datasets/${encodeURIComponent(id)}`, null, opts);
export const createDataset = (name, texts, opts) => request("POST", "/api/datasets", { name, texts }, opts);

/** Upload a .jsonl or .txt file as a dataset (multipart). */
export function uploadDataset(file, name, opts) {
  const form = new FormData();
  form.append("file", file);
  if (name) form.append("name", name);
  return request("POST", "/api/datasets", form, opts);
}

const jobPath = (id, rest = "") => `/api/jobs/${encodeURIComponent(id)}${rest}`;
export const startJob = (body, opts) => request("POST", "/api/jobs", body, opts);
export const jobs = (opts) => request("GET", "/api/jobs", null, opts);
export const job = (id, opts) => request("GET", jobPath(id), null, opts);
export const cancelJob = (id, opts) => request("DELETE", jobPath(id), null, opts);
export const resumeJob = (id, opts) => request("POST", jobPath(id, "/resume"), null, opts);
export const jobHeads = (id, opts) => request("GET", jobPath(id, "/heads"), null, opts);
export const jobExamples = (id, { layer, head }, metric, k = 5, opts) =>
  request("GET", jobPath(id, `/heads/${layer}/${head}/examples?${new URLSearchParams({ metric, k })}`), null, opts);
export const jobDecileExamples = (id, { layer, head }, metric, k = 1, opts) =>
  request("GET", jobPath(id, `/heads/${layer}/${head}/examples?${new URLSearchParams({ metric, k, sample: "deciles" })}`), null, opts);
export const jobQKEmbedding = (id, { layer, head }, opts) => request("GET", jobPath(id, `/heads/${layer}/${head}/qk_embedding`), null, opts);
export const jobSimilarity = (id, metric = "js", opts) =>
  request("GET", jobPath(id, `/similarity?${new URLSearchParams({ metric })}`), null, opts);

/** A job's progress as it happens: an async iterator of `progress` events (the job), then one `end` event. */
export const jobEvents = (id, opts) => stream("GET", jobPath(id, "/events"), null, opts);

/** Every head's statistics as a file ("csv", "json" or "parquet"): {blob, filename}. */
export async function jobExport(id, format, opts) {
  const res = await send("GET", jobPath(id, `/export?${new URLSearchParams({ format })}`), null, opts);
  const named = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1];
  return { blob: await res.blob(), filename: named || `${id}-heads.${format}` };
}

/** A finished job's static atlas as a zip (index.html + a page per head; built on the server, minutes on big jobs). */
export async function jobAtlas(id, opts) {
  const res = await send("GET", jobPath(id, "/atlas"), null, opts);
  const named = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1];
  return { blob: await res.blob(), filename: named || `${id}-atlas.zip` };
}

// -- the lecture's experiments (the Lecture page) --

/** Loss as heads are switched off in one order ("importance" or "random"), on {text} or {dataset, max_texts, …}. */
export const pruneCurve = (body, opts) => request("POST", "/api/prune_curve", body, opts);

/** Projection parameters and KV-cache bytes per token for other numbers of query and KV heads at this width. */
export const headTradeoff = (opts) => request("GET", "/api/head_tradeoff", null, opts);

/** A page of a dataset's texts: {total, texts: [{index, text}]}. */
export const datasetTexts = (id, offset = 0, limit = 1, opts) =>
  request("GET", `/api/datasets/${encodeURIComponent(id)}/texts?${new URLSearchParams({ offset, limit })}`, null, opts);

// -- generation with heads switched off --------------------------------------------------------------

/**
 * POST /api/generate as a Server-Sent Events stream: `onToken({index, baseline, ablated})` per generated
 * position, resolves to the full answer (the `end` event). Aborting `signal` closes the stream, which stops
 * the generation on the server. Errors in the same shape as request(); a 401 asks for the key and retries.
 */
export async function generate(body, onToken, { signal } = {}) {
  for await (const { event, data } of stream("POST", "/api/generate", body, { signal })) {
    const parsed = JSON.parse(data);
    if (event === "token") onToken(parsed);
    else if (event === "end") return parsed;
    else if (event === "error") throw new ApiError(200, parsed.error, parsed.detail);
  }
  throw new ApiError(200, "stream_ended", "the generation stream ended without an answer");
}
