// Compact attention maps (/api/attention with encoding "f16"): base64 of little-endian float16, row-major.
// Decoded by hand (a 65,536-entry table), not with Float16Array, which not every browser has.

let TABLE = null; // float16 bit pattern → its value as a float32

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero and subnormals
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function table() {
  if (!TABLE) {
    TABLE = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) TABLE[h] = halfToFloat(h);
  }
  return TABLE;
}

/** The values of base64 little-endian float16 `b64` as a Float32Array (byte order read explicitly). */
export function decodeF16(b64) {
  const bin = atob(b64);
  const t = table();
  const out = new Float32Array(bin.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = t[bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)];
  return out;
}

/** A map's weights as rows of plain numbers: `weights` as sent, or `weights_f16` of `shape` decoded. */
export function mapRows(m) {
  if (m.weights) return m.weights;
  const [rows, cols] = m.shape;
  const flat = decodeF16(m.weights_f16);
  return Array.from({ length: rows }, (_, q) => Array.from(flat.subarray(q * cols, (q + 1) * cols)));
}
