// The API's binary payloads, sent as base64: bytes (the overview's uint8 thumbnails) and little-endian float16
// (attention maps with encoding "f16", row-major). Float16 is decoded by hand (a 65,536-entry table), not with
// Float16Array, which not every browser has.

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

/** The bytes of base64 `b64`. */
export function decodeBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The values of base64 little-endian float16 `b64` as a Float32Array (byte order read explicitly). */
export function decodeF16(b64) {
  return f16Values(decodeBytes(b64));
}

/** The values of little-endian float16 `bytes` (a Uint8Array) as a Float32Array. */
export function f16Values(bytes) {
  const t = table();
  const out = new Float32Array(bytes.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = t[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  return out;
}

/** A map's weights as rows of plain numbers: `weights` as sent, or `weights_f16` of `shape` decoded. */
export function mapRows(m) {
  if (m.weights) return m.weights;
  const [rows, cols] = m.shape;
  const flat = decodeF16(m.weights_f16);
  return Array.from({ length: rows }, (_, q) => Array.from(flat.subarray(q * cols, (q + 1) * cols)));
}
