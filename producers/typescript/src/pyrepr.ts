/**
 * Python-compatible renderings used inside validation messages, so a refused event reads the same whether the
 * Python or the TypeScript SDK refused it (`repr()` of values, `datetime.isoformat()`, `str(timedelta)`).
 */

const MICROS_PER_SECOND = 1_000_000n;
const MICROS_PER_DAY = 86_400n * MICROS_PER_SECOND;

function reprString(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0;
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return out + quote;
}

function reprNumber(value: number): string {
  if (Number.isNaN(value)) return "nan";
  if (value === Infinity) return "inf";
  if (value === -Infinity) return "-inf";
  return String(value);
}

/** `repr(value)` as Python prints the equivalent value (str, int, float, None, bool, list, dict). */
export function pyRepr(value: unknown): string {
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return reprNumber(value);
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") return reprString(value);
  if (value instanceof Date) return reprString(value.toISOString());
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
  if (value instanceof Uint8Array) return `b'${Buffer.from(value).toString("hex")}'`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    return `{${entries.map(([k, v]) => `${reprString(k)}: ${pyRepr(v)}`).join(", ")}}`;
  }
  return String(value);
}

/** The first `n` code points of `text` (Python's `text[:n]`). */
export function pySlice(text: string, n: number): string {
  return [...text].slice(0, n).join("");
}

/** Python's `len(text)`: code points, not UTF-16 units. */
export function pyLen(text: string): number {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

function pad(value: bigint | number, width: number): string {
  return value.toString().padStart(width, "0");
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && (a < 0n) !== (b < 0n) ? q - 1n : q;
}

/** `datetime.isoformat()` of the UTC instant `micros` µs after the epoch (`+00:00` suffix, µs only when non-zero). */
export function isoformatMicros(micros: bigint): string {
  const seconds = floorDiv(micros, MICROS_PER_SECOND);
  const fraction = micros - seconds * MICROS_PER_SECOND;
  const date = new Date(Number(seconds) * 1000);
  const y = date.getUTCFullYear();
  const base =
    `${pad(y, 4)}-${pad(date.getUTCMonth() + 1, 2)}-${pad(date.getUTCDate(), 2)}` +
    `T${pad(date.getUTCHours(), 2)}:${pad(date.getUTCMinutes(), 2)}:${pad(date.getUTCSeconds(), 2)}`;
  return `${base}${fraction !== 0n ? `.${pad(fraction, 6)}` : ""}+00:00`;
}

/** `str(timedelta(microseconds=micros))`, e.g. `0:05:00`, `1 day, 2:03:04.000005`, `-1 day, 23:59:59`. */
export function timedeltaStr(micros: bigint): string {
  const days = floorDiv(micros, MICROS_PER_DAY);
  let rest = micros - days * MICROS_PER_DAY;
  const us = rest % MICROS_PER_SECOND;
  rest /= MICROS_PER_SECOND;
  const hours = rest / 3600n;
  const minutes = (rest % 3600n) / 60n;
  const secs = rest % 60n;
  let out = `${hours}:${pad(minutes, 2)}:${pad(secs, 2)}`;
  if (us !== 0n) out += `.${pad(us, 6)}`;
  if (days !== 0n) out = `${days} day${days === 1n || days === -1n ? "" : "s"}, ${out}`;
  return out;
}
