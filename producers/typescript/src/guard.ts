/**
 * The control-topic guard: reads the compacted `agent.control.v1` from the beginning (so a starting agent learns
 * the current state), verifies each command's signature, and decides before every model call whether the agent
 * may call, must wait (throttle), must use another model (downgrade) or must not call at all (suspend).
 *
 * Semantics are those of the Python guard, `producers/guard.py` (the reference), held to it by the shared scenarios
 * in test/fixtures/guard_scenarios.json (checked by test/guard_scenarios.test.ts and tests/unit/test_guard_vectors.py).
 * They live in {@link ControlState}, pure and clock-injected; the Kafka wiring in {@link ControlGuard} only feeds it:
 * - The latest command per key (`scope_type:scope_value`) is the state of that scope; a `resume` is kept as that
 *   state (so an older command replayed after it is still refused as stale) and applies nothing. A command whose
 *   `issued_at` is older than the one it would replace is ignored (`stats().ignoredStale`).
 * - Only a verified command changes a scope. A tombstone (null value) carries no signature, so it changes nothing:
 *   it is rejected like a forged command (counted, reported). Commands lapse by their signed `expires_at`, and the
 *   enforcer or an operator lifts them with a signed `resume`; no cleanup needs a tombstone.
 * - A command with a bad or unknown-key signature, whose message key is not its `scope_type:scope_value`, or that
 *   does not decode, is never obeyed; it is counted (`stats().rejected`) and reported through `onRejected` (the
 *   reason, the message key and a {@link RejectedCommand}). A message without a key is checked on its signature only.
 * - A command applies until its `expires_at` (`expires_at > now`), or forever when it has none.
 * - For a call by (agent_id, team, project), the commands of those scopes apply together (a blank team or project is
 *   no scope), in the order agent, project, team: the first live `suspend` refuses the call; every live `throttle`
 *   (with a `rate_per_minute`) must have a token in its own token bucket (one per scope key, refilled at
 *   `rate_per_minute`, holding at most `throttleBurst` or max(1, floor(rate / 10)) tokens, starting full, fresh for
 *   each new command), the longest wait is reported; the first live `downgrade` with a `target_model` replaces the
 *   model (the most specific scope wins).
 */

import { Consumer, MessagesStreamModes } from "@platformatic/kafka";

import { type ControlCommand, verifyCommand } from "./control.js";
import { FinopsError } from "./errors.js";
import { AvroCodec } from "./wire.js";

const MICROS_PER_MINUTE = 60_000_000;
const SCOPE_ORDER = ["agent", "project", "team"] as const;
/** Why a tombstone is rejected (the words of the Python guard). */
export const TOMBSTONE_REASON = "unsigned tombstone (null value): it cannot be verified, so it changes no state";

/** The agent is suspended: the call must not be made. */
export class AgentSuspended extends FinopsError {
  constructor(readonly command: ControlCommand) {
    super(`suspended by ${command.scope_type}:${command.scope_value} (command ${command.command_id}, ` +
      `issued by ${command.issued_by}): ${command.reason}`);
  }
}

/** The call exceeds a throttle and waiting was not allowed (or would take longer than allowed). */
export class AgentThrottled extends FinopsError {
  constructor(readonly command: ControlCommand, readonly waitMs: number) {
    super(`throttled to ${command.rate_per_minute}/min by ${command.scope_type}:${command.scope_value} ` +
      `(command ${command.command_id}): ${command.reason}; next call allowed in ${waitMs} ms`);
  }
}

/** Who is about to call which model. */
export interface CallContext {
  agent_id: string;
  team: string;
  project: string;
  model: string;
}

/** What the guard decided for one call. */
export type Decision =
  | { action: "allow"; model: string; downgradedBy?: ControlCommand }
  | { action: "throttle"; model: string; waitMs: number; command: ControlCommand; downgradedBy?: ControlCommand }
  | { action: "refuse"; command: ControlCommand };

export interface GuardStats {
  applied: number;
  /** Forged, mis-keyed or undecodable commands and tombstones (Python: `forged`). */
  rejected: number;
  /** Commands older than the state they would replace (Python: `stale`). */
  ignoredStale: number;
  suspendedChecks: number;
  throttledChecks: number;
  /** Scopes holding a command other than `resume` (expired ones included). */
  active: number;
}

/** An ignored control message (Python: `ForgedCommand`); the signature is not reproduced. */
export interface RejectedCommand {
  key: string | null;
  reason: string;
  command_id?: string;
  scope?: string;
  action?: string;
  issued_by?: string;
}

export interface ControlStateOptions {
  /** Tokens a throttle bucket holds at most (default max(1, floor(rate_per_minute / 10)), as in Python). */
  throttleBurst?: number;
}

/** `rate_per_minute` tokens per minute, at most `capacity` saved up; starts full (Python: `TokenBucket`). */
export class TokenBucket {
  tokens: number;
  private updated: number | null = null;

  constructor(readonly ratePerMinute: number, readonly capacity: number) {
    this.tokens = capacity;
  }

  private refill(nowMicros: number): number {
    if (this.updated === null) return this.tokens;
    const elapsed = Math.max(0, nowMicros - this.updated);
    return Math.min(this.capacity, this.tokens + (elapsed * this.ratePerMinute) / MICROS_PER_MINUTE);
  }

  /** Seconds until a token is there (0 = now), without taking it. */
  peek(nowMicros: number): number {
    const tokens = this.refill(nowMicros);
    return tokens >= 1 ? 0 : ((1 - tokens) * 60) / this.ratePerMinute;
  }

  /** Takes a token if one is there and returns 0; otherwise returns the seconds until one is due. */
  take(nowMicros: number): number {
    this.tokens = this.refill(nowMicros);
    this.updated = nowMicros;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return ((1 - this.tokens) * 60) / this.ratePerMinute;
  }
}

function live(cmd: ControlCommand, now: bigint): boolean {
  return cmd.action !== "resume" && (cmd.expires_at === null || cmd.expires_at > now);
}

/** The enforcement state built from control commands (pure: no Kafka, no wall clock). */
export class ControlState {
  private readonly byKey = new Map<string, ControlCommand>();
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly codec = new AvroCodec();
  readonly counters = { applied: 0, rejected: 0, ignoredStale: 0, suspendedChecks: 0, throttledChecks: 0 };

  constructor(private readonly keys: ReadonlyMap<string, Uint8Array>,
    private readonly onRejected: (reason: string, key: string, detail: RejectedCommand) => void = () => undefined,
    private readonly options: ControlStateOptions = {}) {}

  /**
   * Applies one decoded record of the control topic (`value` null = tombstone; `key` null = a message without a
   * key). Returns whether the state changed (Python: `ControlGuard.apply`).
   */
  apply(key: string | null, value: ControlCommand | null): boolean {
    if (value === null) {
      // Unsigned, so unverifiable: never a state change (Python: `ControlGuard.apply_message`, same reason text).
      this.reject(TOMBSTONE_REASON, key, key !== null && key.includes(":") ? { scope: key } : {});
      return false;
    }
    const scope = `${value.scope_type}:${value.scope_value}`;
    const detail = { command_id: value.command_id, scope, action: value.action, issued_by: value.issued_by };
    if (!verifyCommand(value, this.keys)) {
      const known = this.keys.has(value.key_id) && (this.keys.get(value.key_id)?.length ?? 0) > 0;
      this.reject(known ? "signature does not verify" : "unknown signing key id", key, detail);
      return false;
    }
    if (key !== null && key !== scope) {
      this.reject(`message key '${key}' does not match the signed scope '${scope}'`, key, detail);
      return false;
    }
    const current = this.byKey.get(scope);
    if (current && value.issued_at < current.issued_at) {
      this.counters.ignoredStale += 1;
      return false;
    }
    this.byKey.set(scope, value);
    if (!current || current.command_id !== value.command_id) this.buckets.delete(scope); // a fresh bucket
    this.counters.applied += 1;
    return true;
  }

  /** Decodes and applies one raw record (`value` null or empty = tombstone); an undecodable one is rejected. */
  applyRecord(key: string | null, value: Uint8Array | null): { changed: boolean; command: ControlCommand | null } {
    if (value === null || value.length === 0) return { changed: this.apply(key, null), command: null };
    let command: ControlCommand;
    try {
      const [name, record] = this.codec.decode(value);
      if (name !== "ControlCommand") throw new FinopsError(`a ${name} on the control topic`);
      command = record as unknown as ControlCommand;
    } catch (err) {
      this.reject(`undecodable control message: ${(err as Error).message}`, key, {});
      return { changed: false, command: null };
    }
    return { changed: this.apply(key, command), command };
  }

  /** Counts and reports an ignored message (forged, mis-keyed, undecodable or a tombstone). */
  reject(reason: string, key: string | null, detail: Omit<RejectedCommand, "key" | "reason"> = {}): void {
    this.counters.rejected += 1;
    this.onRejected(reason, key ?? "", { key, reason, ...detail });
  }

  private scopes(ctx: CallContext): string[] {
    const values: Record<(typeof SCOPE_ORDER)[number], string> = {
      agent: ctx.agent_id, project: ctx.project, team: ctx.team,
    };
    return SCOPE_ORDER.filter((scope) => values[scope]).map((scope) => `${scope}:${values[scope]}`);
  }

  /** The live commands for a call, most specific scope first (agent, project, team). */
  active(ctx: CallContext, now: bigint): ControlCommand[] {
    const out: ControlCommand[] = [];
    for (const scope of this.scopes(ctx)) {
      const cmd = this.byKey.get(scope);
      if (cmd && live(cmd, now)) out.push(cmd);
    }
    return out;
  }

  private throttles(commands: ControlCommand[]): Array<[string, ControlCommand, TokenBucket]> {
    const out: Array<[string, ControlCommand, TokenBucket]> = [];
    for (const cmd of commands) {
      if (cmd.action !== "throttle" || !cmd.rate_per_minute) continue;
      const scope = `${cmd.scope_type}:${cmd.scope_value}`;
      const rate = cmd.rate_per_minute;
      let bucket = this.buckets.get(scope);
      if (!bucket || bucket.ratePerMinute !== rate) {
        bucket = new TokenBucket(rate, this.options.throttleBurst || Math.max(1, Math.floor(rate / 10)));
        this.buckets.set(scope, bucket);
      }
      out.push([scope, cmd, bucket]);
    }
    return out;
  }

  /** Decides for one call at `now` (µs). Takes no throttle token: see {@link record} and {@link take}. */
  decide(ctx: CallContext, now: bigint): Decision {
    const commands = this.active(ctx, now);
    const suspend = commands.find((c) => c.action === "suspend");
    if (suspend) return { action: "refuse", command: suspend };
    const downgrade = commands.find((c) => c.action === "downgrade" && c.target_model);
    const model = downgrade?.target_model ?? ctx.model;
    const extra = downgrade ? { downgradedBy: downgrade } : {};
    let longest = 0;
    let which: ControlCommand | undefined;
    for (const [, cmd, bucket] of this.throttles(commands)) {
      const wait = bucket.peek(Number(now));
      if (wait > longest) [longest, which] = [wait, cmd];
    }
    if (which) {
      return { action: "throttle", model, waitMs: Math.max(1, Math.ceil(longest * 1000)), command: which, ...extra };
    }
    return { action: "allow", model, ...extra };
  }

  /** Counts one call at `now`: takes a token from every live throttle's bucket of the call's scopes. */
  record(ctx: CallContext, now: bigint): void {
    for (const [, , bucket] of this.throttles(this.active(ctx, now))) bucket.take(Number(now));
  }

  /**
   * Python's `check()` in one step: decides and, when the call is allowed, counts it (tokens are taken only when
   * every throttle allows the call); counts refused and throttled checks.
   */
  take(ctx: CallContext, now: bigint): Decision {
    const decision = this.decide(ctx, now);
    if (decision.action === "allow") this.record(ctx, now);
    else if (decision.action === "refuse") this.counters.suspendedChecks += 1;
    return decision;
  }

  /** The model to call instead of `requested` (Python: `downgrade_model`). */
  downgradeModel(ctx: CallContext, now: bigint): string {
    const downgrade = this.active(ctx, now).find((c) => c.action === "downgrade" && c.target_model);
    return downgrade?.target_model ?? ctx.model;
  }

  stats(): GuardStats {
    const active = [...this.byKey.values()].filter((c) => c.action !== "resume").length;
    return { ...this.counters, active };
  }
}

export interface ControlGuardOptions {
  bootstrap: string | string[];
  /** The control topic (with its prefix), e.g. "agent.control.v1". */
  topic: string;
  /** HMAC keys by key id (keys rotate: hold the current and the previous). */
  keys: ReadonlyMap<string, Uint8Array> | Record<string, Uint8Array>;
  clock?: () => Date;
  /** Called for each forged, mis-keyed or undecodable command and each tombstone (Python: `on_forged`). */
  onRejected?: (reason: string, key: string, detail: RejectedCommand) => void;
  /** Called when a scope's state changes (`null`: lifted by a signed `resume`). */
  onChange?: (key: string, command: ControlCommand | null) => void;
  /** Called on a read error of the control topic (not a rejected command; default: console.warn). */
  onError?: (err: Error) => void;
  /** Tokens a throttle bucket holds at most (default max(1, floor(rate_per_minute / 10)), as in Python). */
  throttleBurst?: number;
  /** Longest wait `admit` accepts for a throttle before throwing AgentThrottled (default 60 s; 0 = never wait). */
  maxWaitMs?: number;
  kafka?: Record<string, unknown>;
}

/**
 * Follows the control topic and guards calls. `await ControlGuard.start(...)` returns once the topic has been
 * read up to its end (the current state), then keeps following it.
 */
export class ControlGuard {
  readonly state: ControlState;
  private readonly clock: () => Date;
  private consumer: Consumer<Buffer, Buffer, Buffer, Buffer> | null = null;
  private stream: { close(): Promise<void> } | null = null;

  private constructor(private readonly options: ControlGuardOptions) {
    const keys = options.keys instanceof Map ? options.keys : new Map(Object.entries(options.keys));
    const burst = options.throttleBurst === undefined ? {} : { throttleBurst: options.throttleBurst };
    this.state = new ControlState(keys, options.onRejected, burst);
    this.clock = options.clock ?? (() => new Date());
  }

  /** Starts following `options.topic`; resolves once caught up with the end of the topic (or after 30 s). */
  static async start(options: ControlGuardOptions): Promise<ControlGuard> {
    const guard = new ControlGuard(options);
    await guard.follow();
    return guard;
  }

  /** Applies a raw record of the control topic (the Kafka wiring calls this; tests may too). */
  applyRecord(key: Buffer | null, value: Buffer | null): void {
    const keyText = key ? key.toString("utf8") : null;
    const { changed, command } = this.state.applyRecord(keyText, value);
    if (!changed) return;
    const scope = command ? `${command.scope_type}:${command.scope_value}` : keyText;
    if (scope !== null) this.options.onChange?.(scope, command && command.action !== "resume" ? command : null);
  }

  private nowMicros(): bigint {
    return BigInt(this.clock().getTime()) * 1000n;
  }

  /** The decision for a call, without counting it. */
  check(ctx: CallContext): Decision {
    return this.state.decide(ctx, this.nowMicros());
  }

  /**
   * Admits one call (Python: `check()`): throws {@link AgentSuspended} when suspended; waits out a throttle in steps
   * of at most 500 ms, so a command arriving meanwhile is seen (up to `maxWaitMs`, else throws
   * {@link AgentThrottled}); returns the model to use (the downgrade target when one applies). Takes the throttle
   * tokens.
   */
  async admit(ctx: CallContext): Promise<string> {
    const maxWait = this.options.maxWaitMs ?? 60_000;
    const deadline = Date.now() + maxWait;
    for (;;) {
      const decision = this.state.take(ctx, this.nowMicros());
      if (decision.action === "refuse") throw new AgentSuspended(decision.command);
      if (decision.action === "allow") return decision.model;
      if (Date.now() + decision.waitMs > deadline) {
        this.state.counters.throttledChecks += 1;
        throw new AgentThrottled(decision.command, decision.waitMs);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(decision.waitMs, 500)));
    }
  }

  stats(): GuardStats {
    return this.state.stats();
  }

  private async follow(): Promise<void> {
    const brokers = Array.isArray(this.options.bootstrap) ? this.options.bootstrap : this.options.bootstrap.split(",");
    this.consumer = new Consumer({
      clientId: "finops-guard",
      // A group of its own: every agent process reads the whole compacted topic; nothing is committed.
      groupId: `finops-guard-${crypto.randomUUID()}`,
      bootstrapBrokers: brokers,
      ...this.options.kafka,
    });
    const offsets = await this.consumer.listOffsets({ topics: [this.options.topic] });
    const ends = offsets.get(this.options.topic) ?? [];
    const remaining = new Map<number, bigint>();
    ends.forEach((end, partition) => {
      if (BigInt(end) > 0n) remaining.set(partition, BigInt(end));
    });
    const stream = await this.consumer.consume({
      topics: [this.options.topic], mode: MessagesStreamModes.EARLIEST, autocommit: false,
    });
    this.stream = stream;
    let caughtUp: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => {
      caughtUp = resolve;
      if (remaining.size === 0) resolve();
    });
    stream.on("data", (message) => {
      this.applyRecord(message.key ?? null, message.value ?? null);
      const end = remaining.get(message.partition);
      if (end !== undefined && BigInt(message.offset) + 1n >= end) {
        remaining.delete(message.partition);
        if (remaining.size === 0) caughtUp();
      }
    });
    stream.on("error", (err: unknown) => {
      // A read error is not a forged command (Python logs it and keeps following).
      const error = err instanceof Error ? err : new Error(String(err));
      if (this.options.onError) this.options.onError(error);
      else console.warn(`control guard: control topic read error: ${error.message}`);
    });
    const timeout = new Promise<void>((resolve) => setTimeout(resolve, 30_000).unref());
    await Promise.race([ready, timeout]);
  }

  /** Stops following the topic. */
  async close(): Promise<void> {
    await this.stream?.close().catch(() => undefined);
    if (this.consumer) {
      const consumer = this.consumer;
      await new Promise<void>((resolve) => consumer.close(true, () => resolve()));
    }
  }
}
