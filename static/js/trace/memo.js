// The Trace page's answers, kept for this tab: Back to /trace (or a reload) draws them again instead of asking
// the server for seconds of patching. The last `count` answers live in memory; the most recent of them, up to a
// budget of JSON characters, also in sessionStorage, where they outlive the page but not the tab. Stored answers
// belong to one scope (the model they came from).

const PREFIX = "headscope:trace:"; // every stored key starts here
const INDEX = `${PREFIX}index`; // {scope, keys}: the stored answers, least recently used first

/** The page's sessionStorage, or null where the browser refuses it (some private modes, a sandboxed frame). */
function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

/** A least-recently-used map of answers (any JSON), the recent ones also in sessionStorage. */
export class SessionMemo {
  /** `count`: answers kept in memory; `budget`: the characters of JSON stored (a site gets a few million). */
  constructor(count = 48, budget = 2_000_000) {
    Object.assign(this, { count, budget, stored: 0, scope: null }); // scope null: memory only, until open()
    this.entries = new Map(); // key → {value, size, kept}: kept = in sessionStorage; least recently used first
  }

  /**
   * Take in what this tab stored for `scope` (the model the answers came from), and store from now on. What was
   * stored for another scope is dropped: it came from another model.
   */
  open(scope) {
    this.scope = scope;
    const store = storage();
    if (!store) return;
    let index = null;
    try {
      index = JSON.parse(store.getItem(INDEX) || "null");
    } catch {
      index = null;
    }
    for (const key of index?.scope === scope ? index.keys : []) {
      const text = store.getItem(PREFIX + key);
      if (text === null || this.entries.has(key)) continue;
      try {
        this.#add(key, { value: JSON.parse(text), size: text.length, kept: true });
      } catch {
        store.removeItem(PREFIX + key);
      }
    }
    // what no index of this scope names: another model's answers, or one whose index write failed
    const names = Array.from({ length: store.length }, (_, i) => store.key(i)); // removing renumbers the keys
    for (const name of names) {
      if (name?.startsWith(PREFIX) && name !== INDEX && !this.entries.get(name.slice(PREFIX.length))?.kept) store.removeItem(name);
    }
    this.#writeIndex();
  }

  has(key) {
    return this.entries.has(key);
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key); // re-insert: Map order is the recency order
    this.entries.set(key, entry);
    if (entry.kept) this.#writeIndex();
    return entry.value;
  }

  /** Keep `value` in memory, and in sessionStorage when it fits the budget (older stored answers make room). */
  set(key, value) {
    const text = JSON.stringify(value);
    this.#drop(key);
    const entry = this.#add(key, { value, size: text.length, kept: false });
    const store = this.scope === null ? null : storage();
    if (!store || entry.size > this.budget) return;
    for (const [old, e] of this.entries) {
      if (this.stored + entry.size <= this.budget) break;
      if (e.kept) this.#unstore(old, e);
    }
    for (;;) {
      try {
        store.setItem(PREFIX + key, text);
        entry.kept = true;
        this.stored += entry.size;
        break;
      } catch {
        // over the browser's own quota: unstore the oldest stored answer and try again, or keep it in memory only
        const oldest = [...this.entries].find(([, e]) => e.kept);
        if (!oldest) break;
        this.#unstore(...oldest);
      }
    }
    this.#writeIndex();
  }

  get size() {
    return this.entries.size;
  }

  #add(key, entry) {
    this.entries.set(key, entry);
    if (entry.kept) this.stored += entry.size;
    for (const old of this.entries.keys()) {
      if (this.entries.size <= this.count) break;
      this.#drop(old);
    }
    return entry;
  }

  #drop(key) {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.#unstore(key, entry);
    this.entries.delete(key);
  }

  #unstore(key, entry) {
    if (!entry.kept) return;
    entry.kept = false;
    this.stored -= entry.size;
    storage()?.removeItem(PREFIX + key);
  }

  #writeIndex() {
    if (this.scope === null) return;
    const keys = [...this.entries].filter(([, e]) => e.kept).map(([key]) => key);
    try {
      storage()?.setItem(INDEX, JSON.stringify({ scope: this.scope, keys }));
    } catch {
      // the index did not fit: what is stored stays unnamed, and the next page drops it
    }
  }
}
