// The one LRU of the pages: a map bounded by a total cost, oldest-used entries forgotten first.

/** A map that forgets its least recently used entries once their total cost passes `budget`. */
export class BoundedCache {
  constructor(budget, cost = () => 1) {
    Object.assign(this, { budget, cost, total: 0, entries: new Map() });
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key); // re-insert: Map order is the recency order
    this.entries.set(key, entry);
    return entry.value;
  }

  has(key) {
    return this.entries.has(key);
  }

  /** Keep `value`; the newest entry always stays, even when it alone is over the budget. */
  set(key, value) {
    this.delete(key);
    const entry = { value, cost: this.cost(value) };
    this.entries.set(key, entry);
    this.total += entry.cost;
    for (const [old] of this.entries) {
      if (this.total <= this.budget || old === key) break;
      this.delete(old);
    }
  }

  delete(key) {
    const entry = this.entries.get(key);
    if (entry) {
      this.total -= entry.cost;
      this.entries.delete(key);
    }
  }

  clear() {
    this.entries.clear();
    this.total = 0;
  }

  get size() {
    return this.entries.size;
  }
}
