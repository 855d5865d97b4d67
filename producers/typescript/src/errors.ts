/**
 * The error classes of the SDK. They mirror `schemas/errors.py`: every error this package throws on purpose derives
 * from {@link FinopsError}, and a refused event is a {@link ValidationFailed} listing every {@link FieldProblem}
 * with the same field path, rule id and message text as the Python SDK.
 */

/** Root of every error agent-finops throws on purpose. */
export class FinopsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** One broken rule on one field: dotted `field` path, stable `rule` id, and a message for people. */
export interface FieldProblem {
  readonly field: string;
  readonly rule: string;
  readonly message: string;
}

export function formatProblem(problem: FieldProblem): string {
  return `${problem.field} [${problem.rule}]: ${problem.message}`;
}

/** A record broke one or more rules; `problems` lists all of them, in the order the Python SDK finds them. */
export class ValidationFailed extends FinopsError {
  readonly problems: readonly FieldProblem[];
  readonly record: string;

  constructor(problems: readonly FieldProblem[], record = "record") {
    const count = problems.length;
    const lines = [`${record} is invalid (${count} problem${count !== 1 ? "s" : ""}):`];
    for (const problem of problems) lines.push(`  - ${formatProblem(problem)}`);
    super(lines.join("\n"));
    this.problems = [...problems];
    this.record = record;
  }

  /** The field names of all problems, in the order found. */
  fields(): string[] {
    return this.problems.map((problem) => problem.field);
  }
}

/**
 * Some events of an `emitMany` batch are invalid, so none of the batch was sent (the Python SDK's
 * `BatchValidationFailed`). `invalid` maps each bad event's index to its problems; `problems` lists them all with
 * the index as the first path segment (`3.input_tokens`); `size` is the batch length.
 */
export class BatchValidationFailed extends ValidationFailed {
  readonly invalid: ReadonlyMap<number, readonly FieldProblem[]>;
  readonly size: number;

  constructor(invalid: ReadonlyMap<number, readonly FieldProblem[]>, size: number, record = "UsageEvent") {
    const flat: FieldProblem[] = [];
    for (const [index, problems] of invalid) {
      for (const p of problems) flat.push({ field: `${index}.${p.field}`, rule: p.rule, message: p.message });
    }
    super(flat, record);
    this.invalid = new Map(invalid);
    this.size = size;
    const bad = invalid.size;
    const lines = [`${record} batch refused: ${bad} of ${size} event${size !== 1 ? "s" : ""} ` +
      `${bad === 1 ? "is" : "are"} invalid, so none was sent (fix or drop them and emit the batch again):`];
    for (const [index, problems] of invalid) {
      for (const p of problems) lines.push(`  - event ${index}: ${formatProblem(p)}`);
    }
    this.message = lines.join("\n");
  }

  /** The indexes of the invalid events, in batch order. */
  indexes(): number[] {
    return [...this.invalid.keys()];
  }
}

/** Bytes name a writer schema we do not know, or a schema name is not one of ours. */
export class UnknownSchemaError extends FinopsError {}

/** Bytes could not be decoded (wrong magic, truncated, trailing bytes, body not matching its schema). */
export class DecodeError extends FinopsError {}

/** A record could not be encoded with its schema (missing field, wrong type, value out of range). */
export class EncodeError extends FinopsError {}

/** Configuration is missing or wrong; the message names the setting and what to change. */
export class ConfigError extends FinopsError {}
