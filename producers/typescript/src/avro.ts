/**
 * A small, exact Avro implementation for agent-finops' schemas: parsing canonical form, CRC-64-AVRO fingerprint,
 * and binary encoding/decoding of every type the `.avsc` files use (null, boolean, int, long, float, double, bytes,
 * string, record, enum, array, map, union, fixed) with the logical types decimal (bytes), timestamp-micros and uuid.
 *
 * Why our own and not avsc: the bytes must equal fastavro's, which the shared vectors in `schemas/vectors/` prove,
 * and three details decide that: longs beyond 2^53 (we use BigInt), decimals (fastavro sizes the two's-complement
 * bytes from the magnitude's bit length, one byte more than minimal for e.g. -128) and timestamp-micros (BigInt
 * microseconds, no Date rounding). avsc would need custom types for all three and has no CRC-64-AVRO fingerprint.
 *
 * Values (what `encode` takes and `decode` returns):
 *
 * | Avro                     | TypeScript (decode)            | also accepted by encode                         |
 * |--------------------------|--------------------------------|-------------------------------------------------|
 * | int                      | number                         | bigint                                          |
 * | long                     | number (bigint beyond 2^53)    | bigint                                          |
 * | long + timestamp-micros  | bigint µs since the epoch, UTC | Date, ISO-8601 string with a zone, number (µs)  |
 * | bytes + decimal(p, s)    | string with exactly s decimals | bigint, integral number (a float is refused)    |
 * | string (+ uuid)          | string                         |                                                 |
 * | bytes / fixed            | Uint8Array                     |                                                 |
 * | map                      | plain object                   | Map                                             |
 * | union ["null", T]        | null or T                      | undefined for null                              |
 *
 * A record field that is absent (undefined) takes its schema default; one without a default is an EncodeError.
 */

import { DecodeError, EncodeError } from "./errors.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A resolved schema node. Named types are shared objects, so recursive references work. */
export type AvroNode =
  | { kind: "null" | "boolean" | "int" | "float" | "double" | "string" }
  | { kind: "long"; logical?: "timestamp-micros" }
  | { kind: "bytes"; decimal?: { precision: number; scale: number } }
  | { kind: "record"; fullName: string; fields: AvroField[] }
  | { kind: "enum"; fullName: string; symbols: string[] }
  | { kind: "fixed"; fullName: string; size: number }
  | { kind: "array"; items: AvroNode }
  | { kind: "map"; values: AvroNode }
  | { kind: "union"; branches: AvroNode[] };

export interface AvroField {
  name: string;
  type: AvroNode;
  hasDefault: boolean;
  default: Json | undefined;
}

const PRIMITIVES = new Set(["null", "boolean", "int", "long", "float", "double", "bytes", "string"]);

function fullNameOf(name: string, namespace: string | undefined): string {
  return name.includes(".") || !namespace ? name : `${namespace}.${name}`;
}

function namespaceOf(fullName: string): string | undefined {
  const dot = fullName.lastIndexOf(".");
  return dot < 0 ? undefined : fullName.slice(0, dot);
}

/** Parses a schema (JSON value) into {@link AvroNode}s; `named` collects and resolves named types. */
export function parseSchema(schema: Json, named: Map<string, AvroNode> = new Map(), namespace?: string): AvroNode {
  if (typeof schema === "string") {
    if (PRIMITIVES.has(schema)) return { kind: schema } as AvroNode;
    const found = named.get(fullNameOf(schema, namespace)) ?? named.get(schema);
    if (!found) throw new EncodeError(`unknown Avro type name ${JSON.stringify(schema)}`);
    return found;
  }
  if (Array.isArray(schema)) {
    return { kind: "union", branches: schema.map((branch) => parseSchema(branch, named, namespace)) };
  }
  if (schema === null || typeof schema !== "object") {
    throw new EncodeError(`not an Avro schema: ${JSON.stringify(schema)}`);
  }
  const type = schema["type"];
  const logical = schema["logicalType"];
  if (typeof type === "string" && PRIMITIVES.has(type)) {
    if (type === "long" && logical === "timestamp-micros") return { kind: "long", logical: "timestamp-micros" };
    if (type === "bytes" && logical === "decimal") {
      return {
        kind: "bytes",
        decimal: { precision: Number(schema["precision"]), scale: Number(schema["scale"] ?? 0) },
      };
    }
    return { kind: type } as AvroNode;
  }
  if (type === "record" || type === "error" || type === "enum" || type === "fixed") {
    const ns = typeof schema["namespace"] === "string" ? schema["namespace"] : namespace;
    const fullName = fullNameOf(String(schema["name"]), ns);
    const innerNs = namespaceOf(fullName);
    if (type === "enum") {
      const node: AvroNode = { kind: "enum", fullName, symbols: (schema["symbols"] as string[]) ?? [] };
      named.set(fullName, node);
      return node;
    }
    if (type === "fixed") {
      const node: AvroNode = { kind: "fixed", fullName, size: Number(schema["size"]) };
      named.set(fullName, node);
      return node;
    }
    const fields: AvroField[] = [];
    const node: AvroNode = { kind: "record", fullName, fields };
    named.set(fullName, node);
    for (const field of (schema["fields"] as Array<{ [key: string]: Json }>) ?? []) {
      fields.push({
        name: String(field["name"]),
        type: parseSchema(field["type"] as Json, named, innerNs),
        hasDefault: "default" in field,
        default: field["default"],
      });
    }
    return node;
  }
  if (type === "array") return { kind: "array", items: parseSchema(schema["items"] as Json, named, namespace) };
  if (type === "map") return { kind: "map", values: parseSchema(schema["values"] as Json, named, namespace) };
  if (typeof type === "object" && type !== null) return parseSchema(type, named, namespace);
  throw new EncodeError(`unsupported Avro type ${JSON.stringify(type)}`);
}

// ------------------------------------------------------------------------------------------ canonical form

/** The Avro spec's Parsing Canonical Form of `schema` (fastavro's `to_parsing_canonical_form`). */
export function parsingCanonicalForm(schema: Json): string {
  return canonical(schema, undefined, new Set());
}

function canonical(schema: Json, namespace: string | undefined, seen: Set<string>): string {
  if (typeof schema === "string") {
    if (PRIMITIVES.has(schema)) return JSON.stringify(schema);
    return JSON.stringify(fullNameOf(schema, namespace));
  }
  if (Array.isArray(schema)) return `[${schema.map((s) => canonical(s, namespace, seen)).join(",")}]`;
  if (schema === null || typeof schema !== "object") throw new EncodeError(`not an Avro schema: ${schema}`);
  const type = schema["type"];
  if (typeof type === "string" && PRIMITIVES.has(type)) return JSON.stringify(type);
  if (typeof type === "object" && type !== null) return canonical(type, namespace, seen);
  if (type === "array") return `{"type":"array","items":${canonical(schema["items"] as Json, namespace, seen)}}`;
  if (type === "map") return `{"type":"map","values":${canonical(schema["values"] as Json, namespace, seen)}}`;
  if (type === "record" || type === "error" || type === "enum" || type === "fixed") {
    const ns = typeof schema["namespace"] === "string" ? schema["namespace"] : namespace;
    const fullName = fullNameOf(String(schema["name"]), ns);
    if (seen.has(fullName)) return JSON.stringify(fullName);
    seen.add(fullName);
    const head = `{"name":${JSON.stringify(fullName)},"type":${JSON.stringify(type === "error" ? "record" : type)}`;
    if (type === "enum") return `${head},"symbols":${JSON.stringify(schema["symbols"])}}`;
    if (type === "fixed") return `${head},"size":${Number(schema["size"])}}`;
    const innerNs = namespaceOf(fullName);
    const fields = ((schema["fields"] as Array<{ [key: string]: Json }>) ?? []).map(
      (field) => `{"name":${JSON.stringify(field["name"])},"type":${canonical(field["type"] as Json, innerNs, seen)}}`,
    );
    return `${head},"fields":[${fields.join(",")}]}`;
  }
  throw new EncodeError(`unsupported Avro type ${JSON.stringify(type)}`);
}

// ------------------------------------------------------------------------------------------ CRC-64-AVRO

const CRC64_EMPTY = 0xc15d213aa4d7a795n;
const CRC64_TABLE: bigint[] = (() => {
  const table: bigint[] = [];
  for (let i = 0; i < 256; i++) {
    let fp = BigInt(i);
    for (let j = 0; j < 8; j++) fp = (fp >> 1n) ^ (CRC64_EMPTY & -(fp & 1n));
    table.push(fp & 0xffffffffffffffffn);
  }
  return table;
})();

/** CRC-64-AVRO (Rabin) fingerprint of `data`, as the 8 little-endian bytes single-object encoding writes. */
export function crc64Avro(data: Uint8Array): Uint8Array {
  let fp = CRC64_EMPTY;
  for (const byte of data) fp = (fp >> 8n) ^ (CRC64_TABLE[Number((fp ^ BigInt(byte)) & 0xffn)] as bigint);
  const out = new Uint8Array(8);
  for (let i = 0; i < 8; i++) out[i] = Number((fp >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** The single-object fingerprint of `schema`: CRC-64-AVRO of its parsing canonical form, little-endian. */
export function schemaFingerprint(schema: Json): Uint8Array {
  return crc64Avro(new TextEncoder().encode(parsingCanonicalForm(schema)));
}

// ------------------------------------------------------------------------------------------ value coercion

const MICROS_PER_MS = 1000n;
const ISO_RE =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6})\d*)?)?(Z|z|[+-]\d{2}(?::?\d{2})?)?$/;

/** Result of reading an ISO-8601 timestamp: µs since the epoch, or why not. `naive` = no zone was given. */
export type IsoParse = { ok: true; micros: bigint } | { ok: false; naive: boolean };

/** Parses an ISO-8601 / RFC 3339 timestamp to exact microseconds (Python's `datetime.fromisoformat` subset). */
export function parseIsoMicros(text: string): IsoParse {
  const match = ISO_RE.exec(text.trim());
  if (!match) return { ok: false, naive: false };
  const [, y, mo, d, h, mi, s, frac, zone] = match;
  if (zone === undefined) return { ok: false, naive: true };
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s ?? 0));
  const check = new Date(ms);
  if (Number.isNaN(ms) || check.getUTCDate() !== Number(d) || check.getUTCMonth() !== Number(mo) - 1) {
    return { ok: false, naive: false };
  }
  let micros = BigInt(ms) * MICROS_PER_MS + BigInt((frac ?? "").padEnd(6, "0") || "0");
  if (zone !== "Z" && zone !== "z") {
    const sign = zone.startsWith("-") ? -1n : 1n;
    const digits = zone.slice(1).replace(":", "");
    const offsetMinutes = BigInt(Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2) || "0"));
    micros -= sign * offsetMinutes * 60_000_000n;
  }
  return { ok: true, micros };
}

/** Any accepted timestamp form as µs since the epoch; throws EncodeError naming `path`. */
export function toMicros(value: unknown, path: string): bigint {
  if (typeof value === "bigint") return value;
  if (typeof value === "number" && Number.isInteger(value)) return BigInt(value);
  if (value instanceof Date) {
    const ms = value.getTime();
    if (Number.isNaN(ms)) throw new EncodeError(`${path}: invalid Date`);
    return BigInt(ms) * MICROS_PER_MS;
  }
  if (typeof value === "string") {
    const parsed = parseIsoMicros(value);
    if (parsed.ok) return parsed.micros;
    throw new EncodeError(`${path}: ${JSON.stringify(value)} is not an ISO-8601 timestamp with a time zone`);
  }
  throw new EncodeError(`${path}: expected a timestamp (Date, ISO string or bigint µs), got ${typeof value}`);
}

const DECIMAL_RE = /^([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;

/**
 * The unscaled integer of a decimal at `scale` (value × 10^scale), as fastavro computes it; throws when the value
 * has more than `scale` decimal places or more than `precision` significant digits, or is a float.
 */
export function decimalUnscaled(value: unknown, precision: number, scale: number, path: string): bigint {
  if (typeof value === "bigint") return value * 10n ** BigInt(scale);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new EncodeError(`${path}: money must be a decimal string, a bigint or an integer, not float ${value}`);
    }
    return BigInt(value) * 10n ** BigInt(scale);
  }
  if (typeof value !== "string") throw new EncodeError(`${path}: expected a decimal string, got ${typeof value}`);
  const match = DECIMAL_RE.exec(value.trim());
  if (!match || ((match[2] ?? "") === "" && (match[3] ?? "") === "")) {
    throw new EncodeError(`${path}: ${JSON.stringify(value)} is not a decimal number`);
  }
  const [, sign, intPart = "", fracPart = "", exp] = match;
  let digits = (intPart + fracPart).replace(/^0+(?=\d)/, "");
  let exponent = -fracPart.length + Number(exp ?? 0);
  // Python's Decimal keeps trailing zeros as significant digits; fastavro counts them against the precision.
  const significant = digits.replace(/^0+/, "") || "0";
  if (significant.length > precision && significant !== "0") {
    throw new EncodeError(`${path}: ${value} has more than ${precision} digits (decimal(${precision}, ${scale}))`);
  }
  const delta = exponent + scale;
  if (delta < 0) {
    throw new EncodeError(`${path}: ${value} has more than ${scale} decimal places (decimal(${precision}, ${scale}))`);
  }
  digits = digits || "0";
  exponent = 0;
  const unscaled = BigInt(digits) * 10n ** BigInt(delta);
  return sign === "-" ? -unscaled : unscaled;
}

/** The canonical text of `unscaled / 10^scale`: exactly `scale` decimals (`"0.022010000000"`). */
export function decimalText(unscaled: bigint, scale: number): string {
  const negative = unscaled < 0n;
  const digits = (negative ? -unscaled : unscaled).toString().padStart(scale + 1, "0");
  const whole = digits.slice(0, digits.length - scale);
  const frac = digits.slice(digits.length - scale);
  return `${negative ? "-" : ""}${whole}${scale > 0 ? `.${frac}` : ""}`;
}

// ------------------------------------------------------------------------------------------ encoding

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** A growable byte buffer. */
class Writer {
  private buf = new Uint8Array(256);
  length = 0;

  private ensure(extra: number): void {
    if (this.length + extra <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }

  byte(value: number): void {
    this.ensure(1);
    this.buf[this.length++] = value;
  }

  bytes(data: Uint8Array): void {
    this.ensure(data.length);
    this.buf.set(data, this.length);
    this.length += data.length;
  }

  long(value: number | bigint): void {
    if (typeof value === "number" && Math.abs(value) <= 2 ** 51) {
      let z = value >= 0 ? value * 2 : -value * 2 - 1; // zig-zag without 32-bit overflow
      while (z >= 0x80) {
        this.byte((z % 0x80) | 0x80);
        z = Math.floor(z / 0x80);
      }
      this.byte(z);
      return;
    }
    const n = BigInt(value);
    let z = n >= 0n ? n << 1n : ((-n) << 1n) - 1n;
    while (z >= 0x80n) {
      this.byte(Number(z & 0x7fn) | 0x80);
      z >>= 7n;
    }
    this.byte(Number(z));
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (value instanceof Uint8Array) return "bytes";
  return typeof value;
}

function describe(node: AvroNode): string {
  if ("fullName" in node) return node.fullName;
  if (node.kind === "long" && node.logical) return "timestamp-micros";
  if (node.kind === "bytes" && node.decimal) return `decimal(${node.decimal.precision}, ${node.decimal.scale})`;
  return node.kind;
}

function integer(value: unknown, path: string, min: bigint, max: bigint, label: string): number | bigint {
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new EncodeError(`${path}: ${label} must be an integer, got ${value}`);
    if (BigInt(value) < min || BigInt(value) > max) throw new EncodeError(`${path}: ${value} is out of ${label} range`);
    return value;
  }
  if (typeof value === "bigint") {
    if (value < min || value > max) throw new EncodeError(`${path}: ${value} is out of ${label} range`);
    return value;
  }
  throw new EncodeError(`${path}: expected ${label}, got ${typeName(value)}`);
}

/** Whether `value` can be written as `node` (union branch selection, first match wins, as fastavro does). */
function matches(node: AvroNode, value: unknown): boolean {
  switch (node.kind) {
    case "null":
      return value === null || value === undefined;
    case "boolean":
      return typeof value === "boolean";
    case "int":
    case "float":
    case "double":
      return typeof value === "number" || typeof value === "bigint";
    case "long":
      if (node.logical) return value instanceof Date || typeof value === "bigint" || typeof value === "string" ||
        typeof value === "number";
      return typeof value === "number" || typeof value === "bigint";
    case "bytes":
      if (node.decimal) return typeof value === "string" || typeof value === "bigint" || typeof value === "number";
      return value instanceof Uint8Array;
    case "string":
    case "enum":
      return typeof value === "string";
    case "fixed":
      return value instanceof Uint8Array && value.length === node.size;
    case "array":
      return Array.isArray(value);
    case "map":
    case "record":
      return value instanceof Map || (typeof value === "object" && value !== null && !Array.isArray(value) &&
        !(value instanceof Uint8Array) && !(value instanceof Date));
    case "union":
      return node.branches.some((branch) => matches(branch, value));
  }
}

function writeValue(w: Writer, node: AvroNode, value: unknown, path: string): void {
  switch (node.kind) {
    case "null":
      if (value !== null && value !== undefined) throw new EncodeError(`${path}: expected null, got ${typeName(value)}`);
      return;
    case "boolean":
      if (typeof value !== "boolean") throw new EncodeError(`${path}: expected boolean, got ${typeName(value)}`);
      w.byte(value ? 1 : 0);
      return;
    case "int":
      w.long(integer(value, path, BigInt(INT32_MIN), BigInt(INT32_MAX), "int"));
      return;
    case "long":
      if (node.logical === "timestamp-micros") {
        const micros = toMicros(value, path);
        w.long(integer(micros, path, INT64_MIN, INT64_MAX, "long"));
        return;
      }
      w.long(integer(value, path, INT64_MIN, INT64_MAX, "long"));
      return;
    case "float":
    case "double": {
      if (typeof value !== "number" && typeof value !== "bigint") {
        throw new EncodeError(`${path}: expected ${node.kind}, got ${typeName(value)}`);
      }
      const data = Buffer.alloc(node.kind === "float" ? 4 : 8);
      if (node.kind === "float") data.writeFloatLE(Number(value));
      else data.writeDoubleLE(Number(value));
      w.bytes(data);
      return;
    }
    case "bytes": {
      if (node.decimal) {
        const unscaled = decimalUnscaled(value, node.decimal.precision, node.decimal.scale, path);
        const data = decimalBytes(unscaled);
        w.long(data.length);
        w.bytes(data);
        return;
      }
      if (!(value instanceof Uint8Array)) throw new EncodeError(`${path}: expected bytes, got ${typeName(value)}`);
      w.long(value.length);
      w.bytes(value);
      return;
    }
    case "string": {
      if (typeof value !== "string") throw new EncodeError(`${path}: expected string, got ${typeName(value)}`);
      const data = utf8.encode(value);
      w.long(data.length);
      w.bytes(data);
      return;
    }
    case "enum": {
      const index = typeof value === "string" ? node.symbols.indexOf(value) : -1;
      if (index < 0) throw new EncodeError(`${path}: ${JSON.stringify(value)} is not a symbol of ${node.fullName}`);
      w.long(index);
      return;
    }
    case "fixed":
      if (!(value instanceof Uint8Array) || value.length !== node.size) {
        throw new EncodeError(`${path}: expected ${node.size} fixed bytes`);
      }
      w.bytes(value);
      return;
    case "array": {
      if (!Array.isArray(value)) throw new EncodeError(`${path}: expected array, got ${typeName(value)}`);
      if (value.length > 0) {
        w.long(value.length);
        value.forEach((item, index) => writeValue(w, node.items, item, `${path}.${index}`));
      }
      w.long(0);
      return;
    }
    case "map": {
      if (!matches(node, value)) throw new EncodeError(`${path}: expected map, got ${typeName(value)}`);
      const entries = value instanceof Map ? [...value.entries()] : Object.entries(value as object);
      if (entries.length > 0) {
        w.long(entries.length);
        for (const [key, item] of entries) {
          if (typeof key !== "string") throw new EncodeError(`${path}: map keys must be strings`);
          writeValue(w, { kind: "string" }, key, `${path}.${key}`);
          writeValue(w, node.values, item, `${path}.${key}`);
        }
      }
      w.long(0);
      return;
    }
    case "record": {
      if (!matches(node, value)) throw new EncodeError(`${path || node.fullName}: expected record, got ${typeName(value)}`);
      const record = value as Record<string, unknown>;
      for (const field of node.fields) {
        const fieldPath = path ? `${path}.${field.name}` : field.name;
        let item = record[field.name];
        if (item === undefined) {
          if (!field.hasDefault) throw new EncodeError(`${fieldPath}: required field is missing`);
          item = defaultValue(field.type, field.default);
        }
        writeValue(w, field.type, item, fieldPath);
      }
      return;
    }
    case "union": {
      const index = node.branches.findIndex((branch) => matches(branch, value));
      if (index < 0) {
        throw new EncodeError(`${path}: ${typeName(value)} matches no branch of [${node.branches.map(describe).join(", ")}]`);
      }
      w.long(index);
      writeValue(w, node.branches[index] as AvroNode, value, path);
      return;
    }
  }
}

/** A schema default as an encodable value (a union's default belongs to its first branch). */
function defaultValue(node: AvroNode, value: Json | undefined): unknown {
  if (node.kind === "union") return defaultValue(node.branches[0] as AvroNode, value);
  if (node.kind === "bytes" && !node.decimal && typeof value === "string") {
    return Uint8Array.from([...value].map((ch) => ch.charCodeAt(0)));
  }
  return value;
}

/** Two's-complement big-endian bytes sized as fastavro sizes them: (bit_length(|u|) + 8) // 8. */
export function decimalBytes(unscaled: bigint): Uint8Array {
  const magnitude = unscaled < 0n ? -unscaled : unscaled;
  const bitLength = magnitude === 0n ? 0 : magnitude.toString(2).length;
  const size = Math.floor((bitLength + 8) / 8);
  let twos = unscaled < 0n ? (1n << BigInt(size * 8)) + unscaled : unscaled;
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(twos & 0xffn);
    twos >>= 8n;
  }
  return out;
}

/** Avro binary of `value` written with `node` (no framing). Throws EncodeError naming the field path. */
export function encodeBody(node: AvroNode, value: unknown): Uint8Array {
  const w = new Writer();
  writeValue(w, node, value, "");
  return w.result();
}

/** Writes `value` after `prefix` bytes (a framing header). */
export function encodeWithHeader(prefix: Uint8Array, node: AvroNode, value: unknown): Uint8Array {
  const w = new Writer();
  w.bytes(prefix);
  writeValue(w, node, value, "");
  return w.result();
}

// ------------------------------------------------------------------------------------------ decoding

class Reader {
  pos: number;
  constructor(readonly data: Uint8Array, start: number) {
    this.pos = start;
  }

  byte(): number {
    if (this.pos >= this.data.length) throw new DecodeError("unexpected end of data");
    return this.data[this.pos++] as number;
  }

  take(count: number): Uint8Array {
    if (count < 0 || this.pos + count > this.data.length) throw new DecodeError("unexpected end of data");
    const out = this.data.subarray(this.pos, this.pos + count);
    this.pos += count;
    return out;
  }

  longBig(): bigint {
    let z = 0n;
    let shift = 0n;
    for (;;) {
      const b = this.byte();
      z |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) break;
      shift += 7n;
      if (shift > 63n) throw new DecodeError("varint longer than 10 bytes");
    }
    return z & 1n ? -((z + 1n) >> 1n) : z >> 1n;
  }

  long(): number | bigint {
    const n = this.longBig();
    return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
  }

  count(): number {
    const n = this.longBig();
    if (n < 0n) {
      this.longBig(); // block size in bytes, which we do not need
      return Number(-n);
    }
    return Number(n);
  }
}

function readValue(r: Reader, node: AvroNode): unknown {
  switch (node.kind) {
    case "null":
      return null;
    case "boolean":
      return r.byte() !== 0;
    case "int":
      return Number(r.longBig());
    case "long":
      return node.logical ? r.longBig() : r.long();
    case "float":
      return Buffer.from(r.take(4)).readFloatLE(0);
    case "double":
      return Buffer.from(r.take(8)).readDoubleLE(0);
    case "bytes": {
      const data = r.take(Number(r.longBig()));
      if (!node.decimal) return Uint8Array.from(data);
      let unscaled = 0n;
      for (const byte of data) unscaled = (unscaled << 8n) | BigInt(byte);
      if (data.length > 0 && ((data[0] as number) & 0x80) !== 0) unscaled -= 1n << BigInt(8 * data.length);
      return decimalText(unscaled, node.decimal.scale);
    }
    case "string":
      try {
        return utf8Strict.decode(r.take(Number(r.longBig())));
      } catch (err) {
        if (err instanceof DecodeError) throw err;
        throw new DecodeError("string is not valid UTF-8");
      }
    case "enum": {
      const index = Number(r.longBig());
      const symbol = node.symbols[index];
      if (symbol === undefined) throw new DecodeError(`enum index ${index} out of range for ${node.fullName}`);
      return symbol;
    }
    case "fixed":
      return Uint8Array.from(r.take(node.size));
    case "array": {
      const out: unknown[] = [];
      for (let n = r.count(); n !== 0; n = r.count()) for (let i = 0; i < n; i++) out.push(readValue(r, node.items));
      return out;
    }
    case "map": {
      const out: Record<string, unknown> = {};
      for (let n = r.count(); n !== 0; n = r.count()) {
        for (let i = 0; i < n; i++) {
          const key = readValue(r, { kind: "string" }) as string;
          out[key] = readValue(r, node.values);
        }
      }
      return out;
    }
    case "record": {
      const out: Record<string, unknown> = {};
      for (const field of node.fields) out[field.name] = readValue(r, field.type);
      return out;
    }
    case "union": {
      const index = Number(r.longBig());
      const branch = node.branches[index];
      if (!branch) throw new DecodeError(`union branch ${index} does not exist`);
      return readValue(r, branch);
    }
  }
}

/** Decodes one value of `node` from `data` starting at `start`; returns it and the position after it. */
export function decodeBody(node: AvroNode, data: Uint8Array, start = 0): { value: unknown; end: number } {
  const r = new Reader(data, start);
  const value = readValue(r, node);
  return { value, end: r.pos };
}

/**
 * Brings a JSON-ish value into the shape {@link decodeBody} returns for `node`: defaults filled, timestamps as
 * bigint µs, decimals as canonical text, longs as numbers. Used to compare decoded records with example payloads.
 */
export function normalize(node: AvroNode, value: unknown, path = ""): unknown {
  switch (node.kind) {
    case "long":
      if (node.logical) return toMicros(value, path);
      return typeof value === "bigint" && value >= BigInt(Number.MIN_SAFE_INTEGER) &&
        value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
    case "int":
      return typeof value === "bigint" ? Number(value) : value;
    case "bytes":
      if (node.decimal) {
        return decimalText(decimalUnscaled(value, node.decimal.precision, node.decimal.scale, path), node.decimal.scale);
      }
      return value;
    case "null":
      return null;
    case "array":
      return (value as unknown[]).map((item, i) => normalize(node.items, item, `${path}.${i}`));
    case "map": {
      const out: Record<string, unknown> = {};
      const entries = value instanceof Map ? [...value.entries()] : Object.entries(value as object);
      for (const [key, item] of entries) out[key] = normalize(node.values, item, `${path}.${key}`);
      return out;
    }
    case "record": {
      const record = value as Record<string, unknown>;
      const out: Record<string, unknown> = {};
      for (const field of node.fields) {
        let item = record[field.name];
        if (item === undefined && field.hasDefault) item = defaultValue(field.type, field.default);
        out[field.name] = normalize(field.type, item, path ? `${path}.${field.name}` : field.name);
      }
      return out;
    }
    case "union": {
      if (value === null || value === undefined) return null;
      const branch = node.branches.find((b) => b.kind !== "null" && matches(b, value));
      return branch ? normalize(branch, value, path) : value;
    }
    default:
      return value;
  }
}
