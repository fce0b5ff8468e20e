// "Abort the previous request, ignore stale answers", written once: a slot for one kind of request (a run, a
// map, a token count) where only the latest counts. Every page's cancellable request goes through one.

/** One kind of request of which only the latest counts. */
export class Latest {
  #ctl = null;

  /** Start a request: abort the one before and return the new one's AbortSignal. */
  next() {
    this.#ctl?.abort();
    this.#ctl = new AbortController();
    return this.#ctl.signal;
  }

  /** Abort the current request, if any; no request is current until the next one starts. */
  cancel() {
    this.#ctl?.abort();
    this.#ctl = null;
  }

  /** The current request's signal (null when there is none); hold it to ask isCurrent() later. */
  get signal() {
    return this.#ctl?.signal ?? null;
  }

  /** Whether the request of `signal` is still the latest: no next() or cancel() since it started. */
  isCurrent(signal) {
    return signal === this.signal;
  }

  /** `work(signal)` as the latest request; an answer that a newer request superseded rejects as an AbortError. */
  async run(work) {
    const signal = this.next();
    const result = await work(signal);
    if (!this.isCurrent(signal)) throw new DOMException("superseded", "AbortError");
    return result;
  }
}
