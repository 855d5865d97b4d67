/**
 * Control commands (`ControlCommand.avsc`, topic `agent.control.v1`): canonical bytes, signing and verification,
 * identical to `schemas.models.ControlCommand.canonical_bytes`, `sign` and `verify`: HMAC-SHA256 over every field
 * except `signature`, as JSON with sorted keys, no spaces, UTF-8 (not ASCII-escaped), timestamps as integer µs.
 */

import { createHmac, timingSafeEqual } from "node:crypto";

import { ConfigError } from "./errors.js";

export type ScopeType = "agent" | "team" | "project";
export type ControlAction = "throttle" | "downgrade" | "suspend" | "resume";

/** A decoded ControlCommand (timestamps as bigint µs since the epoch, as the codec returns them). */
export interface ControlCommand {
  command_id: string;
  scope_type: ScopeType | string;
  scope_value: string;
  action: ControlAction | string;
  rate_per_minute: number | null;
  target_model: string | null;
  reason: string;
  issued_by: string;
  issued_at: bigint;
  expires_at: bigint | null;
  policy_id: string | null;
  key_id: string;
  signature: string;
}

const FIELDS: ReadonlyArray<keyof ControlCommand> = [
  "command_id", "scope_type", "scope_value", "action", "rate_per_minute", "target_model", "reason", "issued_by",
  "issued_at", "expires_at", "policy_id", "key_id",
];

/** Python's `json.dumps(..., ensure_ascii=False)` of a string: escapes only quotes, backslashes, controls. */
function jsonString(text: string): string {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0) as number;
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (code < 0x20) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

function jsonValue(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : JSON.stringify(value);
  if (typeof value === "string") return jsonString(value);
  if (typeof value === "boolean") return value ? "true" : "false";
  throw new ConfigError(`cannot put ${typeof value} into a control command's canonical bytes`);
}

/** The bytes that are signed (see module comment). */
export function canonicalBytes(cmd: ControlCommand): Buffer {
  const names = [...FIELDS].sort();
  const body = names.map((name) => `${jsonString(name)}:${jsonValue(cmd[name])}`).join(",");
  return Buffer.from(`{${body}}`, "utf8");
}

function hmacHex(secret: Uint8Array, message: Uint8Array): string {
  return createHmac("sha256", secret).update(message).digest("hex");
}

/** `cmd` with `key_id` set and `signature` = hex HMAC-SHA256(secret, canonical bytes). */
export function signCommand(cmd: ControlCommand, keyId: string, secret: Uint8Array): ControlCommand {
  if (!keyId.trim()) throw new ConfigError("control signing key_id is blank; configure the signing key id");
  if (secret.length === 0) throw new ConfigError(`control signing secret for key_id '${keyId}' is empty`);
  const unsigned = { ...cmd, key_id: keyId, signature: "" };
  return { ...unsigned, signature: hmacHex(secret, canonicalBytes(unsigned)) };
}

/** True only when `cmd.signature` is the HMAC of its canonical bytes under `keys[cmd.key_id]` (constant time). */
export function verifyCommand(cmd: ControlCommand, keys: ReadonlyMap<string, Uint8Array> | Record<string, Uint8Array>):
  boolean {
  const secret = keys instanceof Map ? keys.get(cmd.key_id) : (keys as Record<string, Uint8Array>)[cmd.key_id];
  if (!secret || secret.length === 0) return false;
  const expected = Buffer.from(hmacHex(secret, canonicalBytes(cmd)), "ascii");
  const given = Buffer.from(cmd.signature, "utf8");
  return expected.length === given.length && timingSafeEqual(expected, given);
}
