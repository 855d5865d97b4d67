/**
 * The usage event: its TypeScript types and its validation, a port of the Python SDK's rules
 * (`producers.producer.complete_usage_record`: the defaults, then `schemas.models.check_usage_dict`). The same
 * input is refused with the same problems in the same order: field path, rule id and message text, so a DLQ
 * reason or a log line reads the same whichever SDK wrote it. Messages render values as Python's `repr()` does (`'abc'`, `None`, `True`).
 *
 * The clock is injected (`now`, µs since the epoch or a Date), never read here.
 */

import { parseIsoMicros, toMicros } from "./avro.js";
import { type FieldProblem, ValidationFailed } from "./errors.js";
import { isoformatMicros, pyLen, pyRepr, pySlice, timedeltaStr } from "./pyrepr.js";

/** Outcomes a usage event may report. */
export const USAGE_STATUSES = ["cancelled", "error", "ok", "rate_limited", "timeout"] as const;
export type UsageStatus = (typeof USAGE_STATUSES)[number];
/** Clock skew tolerated between a producer and the validating clock (5 minutes), in µs. */
export const MAX_FUTURE_SKEW_MICROS = 5n * 60n * 1_000_000n;
export const MAX_TAGS = 64;
export const MAX_TAG_LENGTH = 256;

/** A timestamp as the SDK accepts it: a Date, an ISO-8601 string with a zone, or bigint µs since the epoch. */
export type TimestampInput = Date | string | bigint;
/** Money as the SDK accepts it: a decimal string ("0.0123"), a bigint or an integral number; never a float. */
export type MoneyInput = string | bigint | number;

/**
 * What a caller passes to `UsageProducer.emit` (field names as in `schemas/avro/UsageEvent.avsc`). `event_id`,
 * `source` and `occurred_at` are filled when absent (random UUID, the producer's source, the producer's clock).
 */
export interface UsageEventInput {
  event_id?: string;
  source?: string;
  occurred_at?: TimestampInput;
  agent_id: string;
  team: string;
  project: string;
  provider: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  cache_read_tokens?: number;
  cache_write_tokens?: number;
  cache_write_1h_tokens?: number;
  reasoning_tokens?: number;
  input_audio_tokens?: number;
  output_audio_tokens?: number;
  cache_audio_read_tokens?: number;
  image_tokens?: number;
  web_search_calls?: number;
  requests?: number;
  task_id?: string | null;
  parent_task_id?: string | null;
  task_type?: string | null;
  environment?: string | null;
  attempt?: number;
  status?: UsageStatus | string;
  latency_ms?: number | null;
  prompt_hash?: string | null;
  reported_cost?: MoneyInput | null;
  tags?: Record<string, string>;
  schema_version?: number;
}

/** A validated usage event, ready to encode: timestamps are bigint µs, money a decimal string. */
export interface UsageEventRecord extends Omit<UsageEventInput, "occurred_at" | "reported_cost"> {
  event_id: string;
  source: string;
  occurred_at: bigint;
  reported_cost?: string | null;
}

/** Every field of UsageEvent.avsc, in schema order. */
export const USAGE_FIELDS: readonly string[] = [
  "event_id", "source", "occurred_at", "agent_id", "team", "project", "provider", "model", "input_tokens",
  "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens",
  "input_audio_tokens", "output_audio_tokens", "cache_audio_read_tokens", "image_tokens", "web_search_calls",
  "requests", "task_id", "parent_task_id", "task_type", "environment", "attempt", "status", "latency_ms",
  "prompt_hash", "reported_cost", "tags", "schema_version",
];
const KNOWN_FIELDS = new Set(USAGE_FIELDS);
const OPTIONAL_TEXT = ["task_id", "parent_task_id", "task_type", "environment", "prompt_hash"] as const;
const REQUIRED_TEXT = ["source", "agent_id", "team", "project", "provider", "model"] as const;
const COUNTS: ReadonlyArray<readonly [string, number | undefined]> = [
  ["input_tokens", undefined],
  ["output_tokens", undefined],
  ["cache_read_tokens", 0],
  ["cache_write_tokens", 0],
  ["cache_write_1h_tokens", 0],
  ["reasoning_tokens", 0],
  ["input_audio_tokens", 0],
  ["output_audio_tokens", 0],
  ["cache_audio_read_tokens", 0],
  ["image_tokens", 0],
  ["web_search_calls", 0],
  ["requests", 1],
];
const PARTS: ReadonlyArray<readonly [string, string, string, string]> = [
  ["cache_write_1h_tokens", "cache_write_tokens", "cache_1h_within_cache_write",
    "1-hour cache writes are part of cache_write_tokens"],
  ["reasoning_tokens", "output_tokens", "reasoning_within_output", "reasoning tokens are part of output_tokens"],
  ["input_audio_tokens", "input_tokens", "audio_within_input", "audio input tokens are part of input_tokens"],
  ["output_audio_tokens", "output_tokens", "audio_within_output", "audio output tokens are part of output_tokens"],
  ["cache_audio_read_tokens", "cache_read_tokens", "cache_audio_within_cache_read",
    "cached audio tokens are part of cache_read_tokens"],
  ["image_tokens", "input_tokens", "image_within_input", "image tokens are part of input_tokens"],
];
const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DECIMAL_TEXT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Marks an occurred_at given without a time zone (Python: a naive datetime). */
const NAIVE_TIME: unique symbol = Symbol("naive occurred_at");

/** Python's `type(value) is int`: a whole number (JS has one number type; bigint counts too), never a bool. */
function isInt(value: unknown): value is number | bigint {
  return (typeof value === "number" && Number.isInteger(value)) || typeof value === "bigint";
}

/** Python's `str.isspace()` for a non-empty string. */
function isBlank(text: string): boolean {
  return text.length === 0 || /^\s+$/u.test(text);
}

function get(record: Record<string, unknown>, name: string, fallback?: unknown): unknown {
  return Object.prototype.hasOwnProperty.call(record, name) && record[name] !== undefined ? record[name] : fallback;
}

/** A random (version 4) UUID in canonical lower-case form. */
export function newEventId(): string {
  return crypto.randomUUID();
}

/**
 * Every rule a usage event breaks (empty = valid): the port of `schemas.models.check_usage_dict`. `record` holds
 * an Avro-shaped event (occurred_at as bigint µs); `now` is the validating clock in µs.
 */
export function checkUsageRecord(record: Record<string, unknown>, now: bigint | null): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const add = (field: string, rule: string, message: string): void => {
    problems.push({ field, rule, message });
  };

  const eventId = get(record, "event_id", null);
  if (typeof eventId !== "string") {
    add("event_id", "required", `event_id must be a UUID string (got ${pyRepr(eventId)})`);
  } else if (!UUID_TEXT.test(eventId)) {
    add("event_id", "uuid",
      `event_id must be a UUID in canonical lower-case form like str(uuid.uuid4()) ` +
      `(got ${pyRepr(pySlice(eventId, 80))}): one spelling per id keeps deduplication exact`);
  }

  for (const name of REQUIRED_TEXT) {
    const text = get(record, name, null);
    if (typeof text !== "string") {
      add(name, "required", `${name} is required and must be a string (got ${pyRepr(text)})`);
    } else if (isBlank(text)) {
      add(name, "not_blank", `${name} must not be empty or whitespace: it attributes the cost`);
    }
  }

  // Only valid counts take part in the relations below: a broken count is reported once, by its own rule, not
  // again by every rule that compares another field with it (as Python does).
  const counts = new Map<string, bigint>();
  for (const [name, fallback] of COUNTS) {
    const value = get(record, name, fallback === undefined ? null : fallback);
    if (!isInt(value)) {
      add(name, value === null ? "required" : "type", `${name} must be an integer (got ${pyRepr(value)})`);
      continue;
    }
    if (BigInt(value) < 0n) {
      add(name, "non_negative", `${name} (${value}) must be >= 0: counts cannot be negative`);
      continue;
    }
    counts.set(name, BigInt(value));
  }

  const inputTokens = counts.get("input_tokens");
  const cacheRead = counts.get("cache_read_tokens");
  const cacheWrite = counts.get("cache_write_tokens");
  if (inputTokens !== undefined && cacheRead !== undefined && cacheWrite !== undefined) {
    if (cacheRead > inputTokens) {
      add("cache_read_tokens", "cache_within_input",
        `cache_read_tokens (${cacheRead}) must not exceed input_tokens (${inputTokens}): ` +
        "cache reads are part of input_tokens");
    } else if (cacheWrite > inputTokens) {
      add("cache_write_tokens", "cache_within_input",
        `cache_write_tokens (${cacheWrite}) must not exceed input_tokens (${inputTokens}): ` +
        "cache writes are part of input_tokens");
    } else if (cacheRead + cacheWrite > inputTokens) {
      add("cache_write_tokens", "cache_within_input",
        `cache_read_tokens + cache_write_tokens (${cacheRead} + ${cacheWrite}) must not exceed ` +
        `input_tokens (${inputTokens}): cache reads and writes are both part of input_tokens ` +
        "(an adapter for a provider that reports cache separately must add it to input)");
    }
  }
  for (const [part, whole, rule, why] of PARTS) {
    const partValue = counts.get(part);
    const wholeValue = counts.get(whole);
    if (partValue !== undefined && wholeValue !== undefined && partValue > wholeValue) {
      add(part, rule, `${part} (${partValue}) must not exceed ${whole} (${wholeValue}): ${why}`);
    }
  }

  const attempt = get(record, "attempt", 1);
  if (!isInt(attempt) || BigInt(attempt) < 1n) {
    add("attempt", "attempt_min", `attempt (${pyRepr(attempt)}) must be an integer >= 1 (1 = first try)`);
  }

  const status = get(record, "status", "ok");
  if (typeof status !== "string" || !(USAGE_STATUSES as readonly string[]).includes(status)) {
    add("status", "status_allowed", `status ${pyRepr(status)} is not one of ${USAGE_STATUSES.join(", ")}`);
  }

  const latency = get(record, "latency_ms", null);
  if (latency !== null && (!isInt(latency) || BigInt(latency) < 0n)) {
    add("latency_ms", "non_negative", `latency_ms (${pyRepr(latency)}) must be null or an integer >= 0`);
  }

  const occurredAt = get(record, "occurred_at", null);
  if (occurredAt === NAIVE_TIME) {
    add("occurred_at", "timezone", "occurred_at must be tz-aware (UTC); a naive time is ambiguous");
  } else if (typeof occurredAt !== "bigint") {
    add("occurred_at", "required", `occurred_at must be a datetime (got ${pyRepr(occurredAt)})`);
  } else if (now !== null && occurredAt - now > MAX_FUTURE_SKEW_MICROS) {
    add("occurred_at", "not_in_future",
      `occurred_at (${isoformatMicros(occurredAt)}) is ${timedeltaStr(occurredAt - now)} ahead of the validating ` +
      `clock (${isoformatMicros(now)}); at most ${timedeltaStr(MAX_FUTURE_SKEW_MICROS)} of skew is accepted: ` +
      "fix the producer's clock");
  }

  const tags = get(record, "tags", null);
  if (tags !== null && typeof tags === "object") {
    const entries = Object.entries(tags as Record<string, string>);
    if (entries.length > MAX_TAGS) {
      add("tags", "tags_max_entries", `tags has ${entries.length} entries; at most ${MAX_TAGS} allowed`);
    }
    for (const [key, value] of entries) {
      if (pyLen(key) > MAX_TAG_LENGTH) {
        add(`tags.${pySlice(key, 40)}`, "tag_key_length",
          `tag key of ${pyLen(key)} characters exceeds ${MAX_TAG_LENGTH}`);
      }
      if (pyLen(value) > MAX_TAG_LENGTH) {
        add(`tags.${pySlice(key, 40)}`, "tag_value_length",
          `tag value of ${pyLen(value)} characters exceeds ${MAX_TAG_LENGTH}`);
      }
    }
  }
  return problems;
}

/**
 * Fills defaults in place and checks what {@link checkUsageRecord} leaves to the encoder (field names, optional
 * types, money): the port of `producers.producer._complete_usage`. Returns the problems found.
 */
function complete(record: Record<string, unknown>, now: bigint, source: string): FieldProblem[] {
  const problems: FieldProblem[] = [];
  const unknown = Object.keys(record).filter((name) => !KNOWN_FIELDS.has(name) && record[name] !== undefined);
  for (const name of unknown.sort()) {
    problems.push({
      field: name,
      rule: "unknown_field",
      message: `${name} is not a UsageEvent field (a typo?); known fields are listed in schemas/avro/UsageEvent.avsc`,
    });
  }
  if (record["event_id"] === undefined || record["event_id"] === null) record["event_id"] = newEventId();
  if (record["source"] === undefined || record["source"] === null) record["source"] = source;
  const occurred = record["occurred_at"];
  if (occurred === undefined || occurred === null) {
    record["occurred_at"] = now;
  } else if (typeof occurred === "string") {
    const parsed = parseIsoMicros(occurred);
    if (parsed.ok) {
      record["occurred_at"] = parsed.micros;
    } else if (parsed.naive) {
      // Python parses a zone-less ISO string into a naive datetime, which checkUsageRecord refuses (rule timezone).
      record["occurred_at"] = NAIVE_TIME;
    } else {
      // The string stays; checkUsageRecord's problems on a field already reported here are dropped (one cause,
      // one problem), as Python does.
      problems.push({
        field: "occurred_at",
        rule: "type",
        message: `occurred_at ${pyRepr(pySlice(occurred, 40))} is not an ISO-8601 timestamp`,
      });
    }
  } else if (occurred instanceof Date) {
    record["occurred_at"] = Number.isNaN(occurred.getTime()) ? "Invalid Date" : toMicros(occurred, "occurred_at");
  }
  for (const name of OPTIONAL_TEXT) {
    const value = record[name];
    if (value !== undefined && value !== null && typeof value !== "string") {
      problems.push({ field: name, rule: "type", message: `${name} must be a string or null (got ${pyRepr(value)})` });
    }
  }
  const tags = record["tags"];
  if (tags === undefined || tags === null) {
    delete record["tags"];
  } else if (
    typeof tags !== "object" || Array.isArray(tags) ||
    !Object.values(tags as object).every((value) => typeof value === "string")
  ) {
    problems.push({ field: "tags", rule: "type", message: "tags must map strings to strings" });
  }
  const cost = record["reported_cost"];
  if (cost !== undefined && cost !== null) {
    if (typeof cost === "boolean" || (typeof cost === "number" && !Number.isInteger(cost))) {
      problems.push({
        field: "reported_cost",
        rule: "type",
        message: "reported_cost must be a Decimal or a decimal string, never a float (money is exact)",
      });
    } else if (typeof cost === "number" || typeof cost === "bigint") {
      record["reported_cost"] = cost.toString();
    } else if (typeof cost !== "string" || !DECIMAL_TEXT.test(cost.trim())) {
      problems.push({
        field: "reported_cost",
        rule: "type",
        message: `reported_cost ${pyRepr(cost)} is not a decimal number`,
      });
    }
  }
  return problems;
}

/** `now` as µs since the epoch. */
export function nowMicros(now: Date | bigint): bigint {
  return typeof now === "bigint" ? now : toMicros(now, "now");
}

/**
 * Validates and completes one usage event: fills `event_id`, `source` and `occurred_at` when absent, checks every
 * rule of the Python SDK, and returns the record to encode. Throws {@link ValidationFailed} listing every problem
 * (record name `UsageEvent`); never sends anything.
 */
export function buildUsageEvent(input: UsageEventInput | Record<string, unknown>, now: Date | bigint,
  source: string): UsageEventRecord {
  const nowUs = nowMicros(now);
  const record: Record<string, unknown> = { ...(input as Record<string, unknown>) };
  const problems = complete(record, nowUs, source);
  const reported = new Set(problems.map((problem) => problem.field));
  problems.push(...checkUsageRecord(record, nowUs).filter((problem) => !reported.has(problem.field)));
  if (problems.length > 0) throw new ValidationFailed(problems, "UsageEvent");
  return record as unknown as UsageEventRecord;
}
