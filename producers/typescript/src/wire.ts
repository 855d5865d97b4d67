/**
 * Avro wire formats, byte-compatible with `schemas/wire.py`:
 *
 *     single-object:  0xC3 0x01 | 8-byte CRC-64-AVRO fingerprint of the parsing canonical form (LE) | body
 *     Confluent:      0x00 | 4-byte big-endian Schema Registry id | body
 *
 * Schemas are read from the `.avsc` files of `schemas/avro/` (copied into `dist/schemas` by the build), never
 * from a second copy in this package.
 */

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import {
  type AvroNode,
  type Json,
  decodeBody,
  encodeWithHeader,
  parseSchema,
  parsingCanonicalForm,
  schemaFingerprint,
} from "./avro.js";
import { ConfigError, DecodeError, UnknownSchemaError } from "./errors.js";

export const NAMESPACE = "io.agentfinops.v1";
export const SINGLE_OBJECT_MAGIC = Uint8Array.of(0xc3, 0x01);
export const SINGLE_OBJECT_HEADER_LEN = 10;
export const CONFLUENT_MAGIC = 0x00;
export const CONFLUENT_HEADER_LEN = 5;

export type Framing = "single_object" | "confluent";

/** Where the built package keeps the `.avsc` files (dist/schemas). */
export const DEFAULT_SCHEMA_DIR = fileURLToPath(new URL("../schemas/", import.meta.url));

/** Reads every `<Record>.avsc` of `dir` as JSON, by record name. Throws ConfigError when none is there. */
export function loadSchemas(dir: string = DEFAULT_SCHEMA_DIR): Map<string, Json> {
  let names: string[];
  try {
    names = readdirSync(dir).filter((name) => name.endsWith(".avsc"));
  } catch (err) {
    throw new ConfigError(`cannot read Avro schemas from ${dir}: ${(err as Error).message}; run npm run build`, {
      cause: err,
    });
  }
  if (names.length === 0) throw new ConfigError(`no .avsc files in ${dir}; run npm run build`);
  const out = new Map<string, Json>();
  for (const name of names.sort()) {
    out.set(name.slice(0, -".avsc".length), JSON.parse(readFileSync(join(dir, name), "utf8")) as Json);
  }
  return out;
}

function hex(data: Uint8Array): string {
  return Buffer.from(data).toString("hex");
}

function shortName(fullName: string): string {
  return fullName.startsWith(`${NAMESPACE}.`) ? fullName.slice(NAMESPACE.length + 1) : fullName;
}

interface Entry {
  readonly name: string;
  readonly node: AvroNode;
  readonly fingerprint: Uint8Array;
  readonly schema: Json;
}

/** Which framing `data` uses, judged by its magic bytes. Throws DecodeError for neither. */
export function framingOf(data: Uint8Array): Framing {
  if (data[0] === 0xc3 && data[1] === 0x01) return "single_object";
  if (data.length > 0 && data[0] === CONFLUENT_MAGIC) return "confluent";
  throw new DecodeError(
    `unknown framing: first bytes ${hex(data.subarray(0, 2)) || "(empty)"} are neither c301 (Avro single-object) ` +
      "nor 00 (Confluent); the producer is not writing Avro with one of our framings",
  );
}

/**
 * Encodes and decodes our records. `encode` writes single-object bytes; `encodeConfluent` Confluent-framed bytes
 * under a registry id; `decode` accepts both (Confluent ids must have been made known with `registerId`).
 */
export class AvroCodec {
  private readonly byName = new Map<string, Entry>();
  private readonly byFingerprint = new Map<string, Entry>();
  private readonly byId = new Map<number, Entry>();

  constructor(schemas: Map<string, Json> = loadSchemas()) {
    for (const [name, schema] of schemas) {
      const node = parseSchema(schema);
      if (node.kind !== "record") throw new ConfigError(`schema ${name} is not a record`);
      const short = shortName(node.fullName);
      if (short !== name && node.fullName !== name) {
        throw new ConfigError(`schema registered as ${name} is record ${node.fullName}; register it under its name`);
      }
      const entry: Entry = { name: short, node, fingerprint: schemaFingerprint(schema), schema };
      this.byName.set(short, entry);
      this.byFingerprint.set(hex(entry.fingerprint), entry);
    }
  }

  /** Record names this codec knows. */
  names(): string[] {
    return [...this.byName.keys()];
  }

  private entry(schemaName: string): Entry {
    const entry = this.byName.get(shortName(schemaName));
    if (!entry) {
      throw new UnknownSchemaError(
        `schema '${schemaName}' is not known to this codec; known: ${this.names().join(", ")}`,
      );
    }
    return entry;
  }

  /** The 8-byte single-object fingerprint of record `schemaName`. */
  fingerprint(schemaName: string): Uint8Array {
    return this.entry(schemaName).fingerprint;
  }

  /** The schema JSON of `schemaName` (e.g. to register it with a Schema Registry). */
  schema(schemaName: string): Json {
    return this.entry(schemaName).schema;
  }

  /** The parsing canonical form of `schemaName`. */
  canonicalForm(schemaName: string): string {
    return parsingCanonicalForm(this.entry(schemaName).schema);
  }

  /** Single-object encoding of `record` with the current schema of `schemaName`. Throws EncodeError. */
  encode(record: Record<string, unknown>, schemaName: string): Buffer {
    const entry = this.entry(schemaName);
    const header = new Uint8Array(SINGLE_OBJECT_HEADER_LEN);
    header.set(SINGLE_OBJECT_MAGIC, 0);
    header.set(entry.fingerprint, 2);
    const out = encodeWithHeader(header, entry.node, record);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  /** Confluent framing of `record` under registry id `schemaId` (which must denote the current schema). */
  encodeConfluent(record: Record<string, unknown>, schemaName: string, schemaId: number): Buffer {
    const entry = this.entry(schemaName);
    const header = Buffer.alloc(CONFLUENT_HEADER_LEN);
    header.writeUInt8(CONFLUENT_MAGIC, 0);
    header.writeUInt32BE(schemaId, 1);
    this.byId.set(schemaId, entry);
    const out = encodeWithHeader(header, entry.node, record);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  /** Makes Confluent-framed bytes with `schemaId` decodable as record `schemaName`. */
  registerId(schemaId: number, schemaName: string): void {
    this.byId.set(schemaId, this.entry(schemaName));
  }

  /** Decodes single-object or Confluent-framed `data` into `[record name, record]`. */
  decode(data: Uint8Array): [string, Record<string, unknown>] {
    let header: number;
    let entry: Entry | undefined;
    let framing: string;
    if (framingOf(data) === "single_object") {
      header = SINGLE_OBJECT_HEADER_LEN;
      if (data.length < header) {
        throw new DecodeError(
          `truncated single-object header: ${data.length} bytes, need ${header} (magic + 8-byte fingerprint)`,
        );
      }
      const fp = hex(data.subarray(2, header));
      entry = this.byFingerprint.get(fp);
      if (!entry) {
        throw new UnknownSchemaError(
          `unknown writer schema fingerprint ${fp} (CRC-64-AVRO, little-endian); the producer uses a schema ` +
            "this consumer does not know: deploy the schema or register the old one",
        );
      }
      framing = "single-object";
    } else {
      header = CONFLUENT_HEADER_LEN;
      if (data.length < header) {
        throw new DecodeError(`truncated Confluent header: ${data.length} bytes, need ${header} (magic + 4-byte id)`);
      }
      const id = Buffer.from(data.buffer, data.byteOffset, data.byteLength).readUInt32BE(1);
      entry = this.byId.get(id);
      if (!entry) throw new UnknownSchemaError(`Confluent-framed message with unknown schema id ${id}`);
      framing = "Confluent";
    }
    let decoded: { value: unknown; end: number };
    try {
      decoded = decodeBody(entry.node, data, header);
    } catch (err) {
      throw new DecodeError(
        `${framing} ${entry.name} body does not decode (${data.length - header} body bytes): ` +
          `${(err as Error).message}; the message is truncated or not written with this schema`,
        { cause: err },
      );
    }
    if (decoded.end !== data.length) {
      throw new DecodeError(
        `${framing} ${entry.name} decoded with ${data.length - decoded.end} trailing bytes left; ` +
          "the message was written with a different schema than its header claims",
      );
    }
    return [entry.name, decoded.value as Record<string, unknown>];
  }
}
