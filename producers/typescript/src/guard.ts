/**
 * The control-topic guard: reads the compacted `agent.control.v1` from the beginning (so a starting agent learns
 * the current state), verifies each command's signature, and decides before every model call whether the agent
 * may call, must wait (throttle), must use another model (downgrade) or must not call at all (suspend).
 *
 * Semantics (kept in {@link ControlState}, pure and clock-injected; the Kafka wiring in {@link ControlGuard} only
 * feeds it):
 * - The latest command per key (`scope_type:scope_value`) is the state of that scope; a tombstone or `resume`
 *   clears it. A command whose `issued_at` is older than the one it would replace is ignored (a replay).
 * - A command with a bad or unknown-key signature, or that does not decode, is never obeyed; it is counted
 *   (`stats().rejected`) and reported through `onRejected`.
 * - A command past its `expires_at` no longer applies.
 * - For a call by (agent_id, team, project), the commands of the three scopes apply together: any `suspend` refuses
 *   the call; the lowest `rate_per_minute` of the `throttle`s limits calls (per agent, sliding 60-second window);
 *   a `downgrade` replaces the model, the most specific scope winning (agent, then project, then team).
 *
 * These follow the issue text; producers/guard.py (the Python guard) was not in the tree when this was written:
 * align with it when it lands.
 */

import { Consumer, MessagesStreamModes } from "@platformatic/kafka";

import { type ControlCommand, verifyCommand } from "./control.js";
import { FinopsError } from "./errors.js";
import { AvroCodec } from "./wire.js";

const MICROS_PER_MINUTE = 60_000_000n;
const SCOPE_ORDER = ["agent", "project", "team"] as const;

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
  rejected: number;
  ignoredStale: number;
  active: number;
}

/** The enforcement state built from control commands (pure: no Kafka, no wall clock). */
export class ControlState {
  private readonly byKey = new Map<string, ControlCommand>();
  private readonly calls = new Map<string, bigint[]>();
  readonly counters = { applied: 0, rejected: 0, ignoredStale: 0 };

  constructor(private readonly keys: ReadonlyMap<string, Uint8Array>,
    private readonly onRejected: (reason: string, key: string) => void = () => undefined) {}

  /** Applies one record of the control topic (`value` null = tombstone). Returns whether the state changed. */
  apply(key: string, value: ControlCommand | null): boolean {
    if (value === null) return this.byKey.delete(key);
    if (!verifyCommand(value, this.keys)) {
      this.counters.rejected += 1;
      this.onRejected(`command ${value.command_id} for ${key} has a bad signature or an unknown key id ` +
        `'${value.key_id}': ignored`, key);
      return false;
    }
    const expectedKey = `${value.scope_type}:${value.scope_value}`;
    if (key !== expectedKey) {
      this.counters.rejected += 1;
      this.onRejected(`command ${value.command_id} is keyed ${key} but scopes ${expectedKey}: ignored`, key);
      return false;
    }
    const current = this.byKey.get(key);
    if (current && value.issued_at < current.issued_at) {
      this.counters.ignoredStale += 1;
      return false;
    }
    this.counters.applied += 1;
    if (value.action === "resume") return this.byKey.delete(key) || true;
    this.byKey.set(key, value);
    return true;
  }

  /** Records that cannot be decoded are rejected like bad signatures. */
  reject(reason: string, key: string): void {
    this.counters.rejected += 1;
    this.onRejected(reason, key);
  }

  /** The active commands for a call, most specific scope first. */
  active(ctx: CallContext, now: bigint): ControlCommand[] {
    const values: Record<(typeof SCOPE_ORDER)[number], string> = {
      agent: ctx.agent_id, project: ctx.project, team: ctx.team,
    };
    const out: ControlCommand[] = [];
    for (const scope of SCOPE_ORDER) {
      const cmd = this.byKey.get(`${scope}:${values[scope]}`);
      if (cmd && (cmd.expires_at === null || cmd.expires_at > now)) out.push(cmd);
    }
    return out;
  }

  /** Decides for one call at `now` (µs). A `throttle` decision does not count the call: see {@link admit}. */
  decide(ctx: CallContext, now: bigint): Decision {
    const commands = this.active(ctx, now);
    const suspend = commands.find((c) => c.action === "suspend");
    if (suspend) return { action: "refuse", command: suspend };
    const downgrade = commands.find((c) => c.action === "downgrade" && c.target_model);
    const model = downgrade?.target_model ?? ctx.model;
    const throttles = commands.filter((c) => c.action === "throttle" && (c.rate_per_minute ?? 0) >= 1);
    const tightest = throttles.sort((a, b) => (a.rate_per_minute ?? 0) - (b.rate_per_minute ?? 0))[0];
    const extra = downgrade ? { downgradedBy: downgrade } : {};
    if (tightest) {
      const window = this.window(ctx.agent_id, now);
      const rate = tightest.rate_per_minute as number;
      if (window.length >= rate) {
        const oldest = window[window.length - rate] as bigint;
        const waitMs = Number((oldest + MICROS_PER_MINUTE - now + 999n) / 1000n);
        return { action: "throttle", model, waitMs: Math.max(waitMs, 1), command: tightest, ...extra };
      }
    }
    return { action: "allow", model, ...extra };
  }

  /** Counts one call of `agentId` at `now` against throttles. */
  record(agentId: string, now: bigint): void {
    const window = this.window(agentId, now);
    window.push(now);
    this.calls.set(agentId, window);
  }

  private window(agentId: string, now: bigint): bigint[] {
    const kept = (this.calls.get(agentId) ?? []).filter((at) => at > now - MICROS_PER_MINUTE);
    this.calls.set(agentId, kept);
    return kept;
  }

  stats(): GuardStats {
    return { ...this.counters, active: this.byKey.size };
  }
}

export interface ControlGuardOptions {
  bootstrap: string | string[];
  /** The control topic (with its prefix), e.g. "agent.control.v1". */
  topic: string;
  /** HMAC keys by key id (keys rotate: hold the current and the previous). */
  keys: ReadonlyMap<string, Uint8Array> | Record<string, Uint8Array>;
  clock?: () => Date;
  onRejected?: (reason: string, key: string) => void;
  onChange?: (key: string, command: ControlCommand | null) => void;
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
  private readonly codec = new AvroCodec();
  private readonly clock: () => Date;
  private consumer: Consumer<Buffer, Buffer, Buffer, Buffer> | null = null;
  private stream: { close(): Promise<void> } | null = null;

  private constructor(private readonly options: ControlGuardOptions) {
    const keys = options.keys instanceof Map ? options.keys : new Map(Object.entries(options.keys));
    this.state = new ControlState(keys, options.onRejected);
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
    const keyText = key ? key.toString("utf8") : "";
    if (value === null || value.length === 0) {
      if (this.state.apply(keyText, null)) this.options.onChange?.(keyText, null);
      return;
    }
    let command: ControlCommand;
    try {
      const [name, record] = this.codec.decode(value);
      if (name !== "ControlCommand") throw new FinopsError(`a ${name} on the control topic`);
      command = record as unknown as ControlCommand;
    } catch (err) {
      this.state.reject(`record for ${keyText} does not decode as a ControlCommand: ${(err as Error).message}`, keyText);
      return;
    }
    if (this.state.apply(keyText, command)) this.options.onChange?.(keyText, command.action === "resume" ? null : command);
  }

  private nowMicros(): bigint {
    return BigInt(this.clock().getTime()) * 1000n;
  }

  /** The decision for a call, without counting it. */
  check(ctx: CallContext): Decision {
    return this.state.decide(ctx, this.nowMicros());
  }

  /**
   * Admits one call: throws {@link AgentSuspended} when suspended; waits out a throttle (up to `maxWaitMs`, else
   * throws {@link AgentThrottled}); returns the model to use (the downgrade target when one applies). Counts the
   * call against throttles.
   */
  async admit(ctx: CallContext): Promise<string> {
    const maxWait = this.options.maxWaitMs ?? 60_000;
    const deadline = Date.now() + maxWait;
    for (;;) {
      const decision = this.check(ctx);
      if (decision.action === "refuse") throw new AgentSuspended(decision.command);
      if (decision.action === "allow") {
        this.state.record(ctx.agent_id, this.nowMicros());
        return decision.model;
      }
      if (Date.now() + decision.waitMs > deadline) throw new AgentThrottled(decision.command, decision.waitMs);
      await new Promise((resolve) => setTimeout(resolve, decision.waitMs));
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
      this.state.reject(`control topic read error: ${(err as Error).message}`, "");
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
