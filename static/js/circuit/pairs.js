// Prompt pairs for a circuit over a set: an uploaded .jsonl read here, in the browser, into the pairs that
// /api/circuit_pairs takes (the server checks tokens; this checks the file's shape and says which line is wrong).

const FIELDS = ["clean", "corrupted", "answer"];

/**
 * The pairs of a .jsonl text: one JSON object per line with string `clean`, `corrupted`, `answer` and an optional
 * `wrong`; blank lines are skipped. Only the first `max` pairs are kept (`total` says how many the file holds).
 * Throws an Error naming the first bad line.
 */
export function parsePairs(text, max) {
  const pairs = [];
  let total = 0;
  // split("\n"), not a regex on every line break: JSON strings may hold U+2028
  text
    .replace(/^\uFEFF/, "")
    .split("\n")
    .forEach((line, i) => {
      if (!line.trim()) return;
      let record;
      try {
        record = JSON.parse(line);
      } catch (err) {
        throw new Error(`line ${i + 1}: not valid JSON (${err.message})`);
      }
      if (record === null || typeof record !== "object" || Array.isArray(record)) {
        throw new Error(`line ${i + 1}: expected an object {clean, corrupted, answer, wrong}`);
      }
      for (const key of FIELDS) {
        if (typeof record[key] !== "string" || !record[key]) throw new Error(`line ${i + 1}: "${key}" must be a non-empty string`);
      }
      if (record.wrong !== undefined && record.wrong !== null && typeof record.wrong !== "string") {
        throw new Error(`line ${i + 1}: "wrong" must be a string (or left out)`);
      }
      total += 1;
      if (pairs.length < max) {
        const pair = { clean: record.clean, corrupted: record.corrupted, answer: record.answer };
        if (record.wrong) pair.wrong = record.wrong;
        pairs.push(pair);
      }
    });
  if (!total) throw new Error("the file holds no pairs: one JSON object {clean, corrupted, answer, wrong} per line");
  return { pairs, total };
}

/** Words for a set of pairs: "32 pairs (builtin:ioi-pairs)" or "the first 64 of 80 pairs in pairs.jsonl". */
export function describePairs({ id, name, pairs, total }) {
  if (id) return `${pairs.length} pairs (${id})`;
  return total > pairs.length ? `the first ${pairs.length} of ${total} pairs in ${name} (a request measures at most ${pairs.length})` : `${pairs.length} pairs from ${name}`;
}
