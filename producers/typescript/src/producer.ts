/**
 * UsageProducer: validate, encode and publish usage events to Kafka, with a disk spool for broker outages. The
 * TypeScript twin of `producers/producer.py`; the guarantees are the same (DESIGN.md §5, "Producers"):
 *
 * - **Validation first.** `emit` validates synchronously and throws {@link ValidationFailed} naming every broken
 *   field (same fields, rules and messages as Python); nothing reaches Kafka or the spool.
 * - **Batches.** `emitMany` is `emit` for a list: every event is validated first (one clock reading) and none is
 *   queued unless all are valid ({@link BatchValidationFailed} names each bad index and field); then each is
 *   encoded to the bytes `emit` would send and queued in list order. Every guarantee below holds per event.
 * - **Idempotent, acknowledged writes.** @platformatic/kafka's idempotent producer (`acks=all` enforced, one
 *   in-flight request, sequence numbers): broker-side retries cannot duplicate or reorder. Key = `agent_id`, and
 *   the partition is `crc32(agent_id) % partitions`, librdkafka's default, so the Python and TypeScript SDKs put
 *   one agent on the same partition. One send is in flight at a time, so one agent's events stay in order.
 * - **Every event ends one way, reported once** (`onDelivery` and the promise `emit` returns):
 *   `delivered` (acknowledged: partition and offset), `spooled` (the broker was unreachable: the event is in the
 *   on-disk spool and will be sent, in order, by this producer or the next one opened on the same directory),
 *   `failed` (a permanent error: too large, not authorised, unknown topic; never retried), `refused` (the spool is
 *   full). `send` is `emit` that throws {@link DeliveryFailed} for `failed` and `refused`.
 * - **Order across outages.** While the spool holds anything, new events go behind it. A failed in-flight batch
 *   is spooled before anything newer; a batch whose outcome is unknown may be re-sent later: duplicates carry the
 *   same event_id, which downstream deduplication removes (counted in `stats().resent`).
 * - **Exit.** `close()` waits for outstanding sends up to `closeTimeoutMs` and spools the rest. On process exit
 *   without `close()`, an `exit` hook spools (synchronously) whatever is still in memory.
 *
 * Not guaranteed: events accepted in the last `lingerMs` before a SIGKILL are lost (they were in memory only).
 */

import { crc32 } from "node:zlib";

import { Producer, type ProducerOptions } from "@platformatic/kafka";

import { buildUsageEvent, type UsageEventInput, type UsageEventRecord } from "./event.js";
import { BatchValidationFailed, EncodeError, type FieldProblem, FinopsError, ValidationFailed } from "./errors.js";
import { registerValueSchema } from "./registry.js";
import { Spool, SpoolFull, type SpoolRecord } from "./spool.js";
import { AvroCodec } from "./wire.js";

export type DeliveryStatus = "delivered" | "spooled" | "failed" | "refused";

/** The outcome of one emitted event. */
export interface Delivery {
  eventId: string;
  status: DeliveryStatus;
  topic: string;
  partition?: number;
  offset?: bigint;
  error?: string;
}

/** An awaited event could not be delivered nor kept (`failed` or `refused`); `delivery` says why. */
export class DeliveryFailed extends FinopsError {
  constructor(readonly delivery: Delivery) {
    super(`usage event ${delivery.eventId} was ${delivery.status}: ${delivery.error}; check the broker and topic ` +
      "(a permanent error) or the spool bound (spoolMaxBytes)");
  }
}

export interface ProducerStats {
  emitted: number;
  delivered: number;
  failed: number;
  spooled: number;
  refused: number;
  drained: number;
  resent: number;
  spoolPending: number;
  state: "direct" | "spooling";
}

/** What the producer needs from a Kafka client (the default wraps @platformatic/kafka; tests inject fakes). */
export interface KafkaSender {
  partitionCount(topic: string): Promise<number>;
  send(messages: Array<{ topic: string; key: Buffer; value: Buffer; partition: number; timestamp: bigint }>):
    Promise<Array<{ topic: string; partition: number; offset: bigint }>>;
  close(): Promise<void>;
}

export interface UsageProducerOptions {
  /** Kafka bootstrap servers, "host:port" or a list. */
  bootstrap: string | string[];
  /** The usage topic (with its prefix), e.g. "agent.usage.v1". */
  topic: string;
  /** The emitting service; fills `source` of events that have none. */
  source: string;
  /** Spool directory (one per process); null disables the spool: outages then end as `failed`. */
  spoolDir: string | null;
  spoolMaxBytes?: number;
  /** The clock for `occurred_at` defaults and the future-time rule. */
  clock?: () => Date;
  /** Confluent framing with this Schema Registry (the schema is registered by {@link UsageProducer.create}). */
  schemaRegistryUrl?: string;
  onDelivery?: (delivery: Delivery) => void;
  /** Extra @platformatic/kafka client options (SASL, TLS, timeouts). */
  kafka?: Partial<ProducerOptions<Buffer, Buffer, Buffer, Buffer>>;
  compression?: "lz4" | "gzip" | "snappy" | "zstd" | "none";
  lingerMs?: number;
  maxBatch?: number;
  probeIntervalMs?: number;
  closeTimeoutMs?: number;
  /** Spool what is still in memory when the process exits without close() (default true). */
  exitHook?: boolean;
  /** Injected Kafka client (tests); default: @platformatic/kafka. */
  sender?: () => KafkaSender;
}

interface Pending {
  eventId: string;
  key: Buffer;
  value: Buffer;
  timestampMs: number;
  resolve: (delivery: Delivery) => void;
}

// Protocol errors after which retrying cannot help: the event is reported `failed`, never spooled.
const PERMANENT = new Set([
  "MESSAGE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD", "TOPIC_AUTHORIZATION_FAILED",
  "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "UNKNOWN_TOPIC_OR_PARTITION",
  "INVALID_TOPIC_EXCEPTION", "UNSUPPORTED_VERSION", "UNSUPPORTED_COMPRESSION_TYPE", "INVALID_REQUIRED_ACKS",
]);

/** Whether a send error is permanent (retrying cannot help). Walks causes and aggregated errors. */
export function isPermanent(error: unknown, depth = 0): boolean {
  if (!error || typeof error !== "object" || depth > 8) return false;
  const e = error as { id?: unknown; code?: unknown; errors?: unknown; cause?: unknown; apiId?: unknown };
  if (typeof e.id === "string" && PERMANENT.has(e.id)) return true;
  if (typeof e.apiId === "string" && PERMANENT.has(e.apiId)) return true;
  if (e.code === "PLT_KFK_AUTHENTICATION" || e.code === "PLT_KFK_USER") return true;
  if (Array.isArray(e.errors) && e.errors.some((inner) => isPermanent(inner, depth + 1))) return true;
  return isPermanent(e.cause, depth + 1);
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const inner = (error as { errors?: unknown[] }).errors;
  const details = Array.isArray(inner) && inner.length ? `: ${inner.map(describeError).join("; ")}` : "";
  const cause = error.cause instanceof Error ? ` (${describeError(error.cause)})` : "";
  return `${error.message}${details}${cause}`;
}

/** librdkafka's default partitioner for a keyed message: CRC-32 of the key modulo the partition count. */
export function partitionFor(key: Buffer, partitions: number): number {
  return crc32(key) % partitions;
}

function platformaticSender(options: UsageProducerOptions): KafkaSender {
  const brokers = Array.isArray(options.bootstrap) ? options.bootstrap : options.bootstrap.split(",");
  const compression = options.compression ?? "lz4";
  const producer = new Producer({
    clientId: `finops-producer-${options.source}`.slice(0, 200),
    bootstrapBrokers: brokers,
    idempotent: true,
    retries: 2,
    retryDelay: 250,
    timeout: 10_000,
    connectTimeout: 5_000,
    ...(compression === "none" ? {} : { compression }),
    ...options.kafka,
  });
  return {
    async partitionCount(topic) {
      const metadata = await producer.metadata({ topics: [topic] });
      const info = metadata.topics.get(topic);
      if (!info) throw new FinopsError(`topic ${topic} has no metadata`);
      return info.partitionsCount;
    },
    async send(messages) {
      const result = await producer.send({ messages });
      return (result.offsets ?? []).map((o) => ({ topic: o.topic, partition: o.partition, offset: BigInt(o.offset) }));
    },
    close: () => producer.close(),
  };
}

/** Publishes usage events to the usage topic (guarantees: module comment). */
export class UsageProducer {
  readonly topic: string;
  readonly source: string;
  private readonly options: UsageProducerOptions;
  private readonly codec = new AvroCodec();
  private readonly clock: () => Date;
  private schemaId: number | null = null;
  private readonly spool: Spool | null;
  private sender: KafkaSender;
  private state: "direct" | "spooling";
  private queue: Pending[] = [];
  private inFlight: Pending[] = [];
  private sending: Promise<void> | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private draining = false;
  private closed = false;
  private readonly exitHook: (() => void) | null = null;
  private readonly counters = { emitted: 0, delivered: 0, failed: 0, spooled: 0, refused: 0, drained: 0, resent: 0 };

  /** Builds a producer; with `schemaRegistryUrl`, registers the UsageEvent schema first. Does not contact Kafka. */
  static async create(options: UsageProducerOptions): Promise<UsageProducer> {
    const producer = new UsageProducer(options);
    if (options.schemaRegistryUrl) {
      producer.schemaId = await registerValueSchema(options.schemaRegistryUrl, options.topic,
        producer.codec.schema("UsageEvent"));
    }
    return producer;
  }

  /** Prefer {@link UsageProducer.create}; the constructor cannot register a schema (Confluent framing). */
  constructor(options: UsageProducerOptions) {
    if (!options.source || !options.source.trim()) {
      throw new FinopsError("producer source is empty: set source to the emitting service's name");
    }
    this.options = options;
    this.topic = options.topic;
    this.source = options.source;
    this.clock = options.clock ?? (() => new Date());
    this.sender = (options.sender ?? (() => platformaticSender(options)))();
    this.spool = options.spoolDir ? new Spool(options.spoolDir, options.spoolMaxBytes ?? 256 * 1024 * 1024) : null;
    // A spool left non-empty by an earlier process is drained first; new events queue up behind it.
    this.state = this.spool && this.spool.pending > 0 ? "spooling" : "direct";
    if (this.state === "spooling") this.scheduleProbe(0);
    if (options.exitHook ?? true) {
      this.exitHook = () => this.spoolInMemory();
      process.on("exit", this.exitHook);
    }
  }

  /**
   * Validates, completes and encodes one event: `[eventId, key, value]`. Sends nothing. Throws ValidationFailed
   * naming every broken field, or EncodeError.
   */
  prepare(event: UsageEventInput): [string, Buffer, Buffer] {
    const record: UsageEventRecord = buildUsageEvent(event, this.clock(), this.source);
    return [record.event_id, Buffer.from(record.agent_id, "utf8"), this.encodeRecord(record)];
  }

  private encodeRecord(record: UsageEventRecord): Buffer {
    return this.schemaId === null
      ? this.codec.encode(record as unknown as Record<string, unknown>, "UsageEvent")
      : this.codec.encodeConfluent(record as unknown as Record<string, unknown>, "UsageEvent", this.schemaId);
  }

  /**
   * `prepare` for a batch: `[eventId, key, value]` per event, in order, each the bytes `prepare` gives it. Every
   * event is validated against one clock reading before any is encoded. Throws {@link BatchValidationFailed}
   * naming each invalid event's index and fields, or EncodeError naming the index of an event it cannot encode.
   */
  prepareMany(events: readonly UsageEventInput[]): Array<[string, Buffer, Buffer]> {
    const now = this.clock();
    const records: UsageEventRecord[] = [];
    const invalid = new Map<number, readonly FieldProblem[]>();
    events.forEach((event, index) => {
      try {
        records.push(buildUsageEvent(event, now, this.source));
      } catch (err) {
        if (!(err instanceof ValidationFailed)) throw err;
        invalid.set(index, err.problems);
      }
    });
    if (invalid.size > 0) throw new BatchValidationFailed(invalid, events.length);
    return records.map((record, index) => {
      try {
        return [record.event_id, Buffer.from(record.agent_id, "utf8"), this.encodeRecord(record)];
      } catch (err) {
        if (!(err instanceof EncodeError)) throw err;
        throw new EncodeError(`event ${index} of the batch (none was sent): ${err.message}`, { cause: err });
      }
    });
  }

  /**
   * Validates and queues a batch, in order; the promise resolves with every event's {@link Delivery} (in batch
   * order) once each is delivered, spooled, failed or refused (it never rejects). All or nothing before sending,
   * as `emit` sends nothing for an invalid event: throws {@link BatchValidationFailed} synchronously when any
   * event is invalid, and none of the batch is queued (retrying the corrected batch creates no duplicates).
   * FinopsError after close().
   */
  emitMany(events: readonly UsageEventInput[]): Promise<Delivery[]> {
    if (this.closed) throw new FinopsError("the usage producer is closed; create a new one (or emit before close())");
    const prepared = this.prepareMany(events);
    this.counters.emitted += prepared.length;
    const timestampMs = Date.now();
    const settled: Array<Promise<Delivery>> = [];
    const items: Pending[] = prepared.map(([eventId, key, value]) => {
      let resolve!: (delivery: Delivery) => void;
      settled.push(new Promise<Delivery>((r) => { resolve = r; }));
      return { eventId, key, value, timestampMs, resolve };
    });
    if (this.state === "spooling") {
      this.toSpool(items);
    } else if (items.length > 0) {
      for (const item of items) this.queue.push(item);
      if ((this.options.maxBatch ?? 500) <= this.queue.length) this.kick();
      else if (!this.lingerTimer) this.lingerTimer = setTimeout(() => this.kick(), this.options.lingerMs ?? 5);
    }
    return Promise.all(settled);
  }

  /**
   * Validates and queues one event; the promise resolves with its {@link Delivery} once it is delivered, spooled,
   * failed or refused (it never rejects, so a fire-and-forget call cannot crash the process). Throws
   * ValidationFailed synchronously for an invalid event (nothing sent), FinopsError after close().
   */
  emit(event: UsageEventInput): Promise<Delivery> {
    if (this.closed) throw new FinopsError("the usage producer is closed; create a new one (or emit before close())");
    const [eventId, key, value] = this.prepare(event);
    this.counters.emitted += 1;
    return new Promise<Delivery>((resolve) => {
      const pending: Pending = { eventId, key, value, timestampMs: Date.now(), resolve };
      if (this.state === "spooling") {
        this.toSpool([pending]);
        return;
      }
      this.queue.push(pending);
      if ((this.options.maxBatch ?? 500) <= this.queue.length) this.kick();
      else if (!this.lingerTimer) this.lingerTimer = setTimeout(() => this.kick(), this.options.lingerMs ?? 5);
    });
  }

  /** `emit` and await the outcome; throws {@link DeliveryFailed} for `failed` or `refused`. */
  async send(event: UsageEventInput): Promise<Delivery> {
    const delivery = await this.emit(event);
    if (delivery.status === "failed" || delivery.status === "refused") throw new DeliveryFailed(delivery);
    return delivery;
  }

  /** Counters since construction. */
  stats(): ProducerStats {
    return { ...this.counters, spoolPending: this.spool?.pending ?? 0, state: this.state };
  }

  /** Waits until every event emitted so far is delivered, spooled, failed or refused (or `timeoutMs` passes). */
  async flush(timeoutMs = 30_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length > 0 || this.inFlight.length > 0 || this.sending) {
      if (Date.now() > deadline) return false;
      this.kick();
      await (this.sending ?? new Promise((resolve) => setTimeout(resolve, 5)));
    }
    return true;
  }

  /** Flushes (up to `closeTimeoutMs`), spools what is left, closes the spool and the Kafka client. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.flush(this.options.closeTimeoutMs ?? 10_000);
    if (this.probeTimer) clearTimeout(this.probeTimer);
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.spoolInMemory();
    if (this.exitHook) process.off("exit", this.exitHook);
    this.spool?.close();
    await this.sender.close().catch(() => undefined);
  }

  // ------------------------------------------------------------------------------------------ send path

  private report(pending: Pending, delivery: Delivery): void {
    this.counters[delivery.status] += 1;
    try {
      this.options.onDelivery?.(delivery);
    } finally {
      pending.resolve(delivery);
    }
  }

  private kick(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
    }
    if (this.sending || this.queue.length === 0 || this.state !== "direct") return;
    const batch = this.queue.splice(0, this.options.maxBatch ?? 500);
    this.inFlight = batch;
    this.sending = this.sendBatch(batch).finally(() => {
      this.inFlight = [];
      this.sending = null;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async sendBatch(batch: Pending[]): Promise<void> {
    try {
      const partitions = await this.sender.partitionCount(this.topic);
      const messages = batch.map((p) => ({
        topic: this.topic, key: p.key, value: p.value, partition: partitionFor(p.key, partitions),
        timestamp: BigInt(p.timestampMs),
      }));
      const offsets = await this.sender.send(messages);
      const next = new Map(offsets.map((o) => [o.partition, o.offset]));
      for (const [i, pending] of batch.entries()) {
        const partition = (messages[i] as { partition: number }).partition;
        const offset = next.get(partition);
        if (offset !== undefined) next.set(partition, offset + 1n);
        this.report(pending, { eventId: pending.eventId, status: "delivered", topic: this.topic, partition, offset });
      }
    } catch (error) {
      if (isPermanent(error) || !this.spool) {
        const why = describeError(error);
        for (const pending of batch) {
          this.report(pending, { eventId: pending.eventId, status: "failed", topic: this.topic,
            error: this.spool ? why : `broker unreachable and no spool configured: ${why}` });
        }
        return;
      }
      // The broker is unreachable: this batch, then everything queued behind it, goes to the spool in order.
      this.state = "spooling";
      this.counters.resent += batch.length; // the broker may have stored some before the connection broke
      await this.resetSender();
      const rest = this.queue.splice(0);
      this.toSpool([...batch, ...rest]);
      this.scheduleProbe(this.options.probeIntervalMs ?? 1000);
    }
  }

  private toSpool(items: Pending[]): void {
    for (const pending of items) {
      try {
        (this.spool as Spool).append(pending.key, pending.value, pending.eventId, pending.timestampMs);
        this.report(pending, { eventId: pending.eventId, status: "spooled", topic: this.topic });
      } catch (error) {
        const status = error instanceof SpoolFull ? "refused" : "failed";
        this.report(pending, { eventId: pending.eventId, status, topic: this.topic, error: describeError(error) });
      }
    }
  }

  private async resetSender(): Promise<void> {
    // A fresh idempotent producer (new producer id) after an outage: the old one's sequence state is unknown.
    const old = this.sender;
    this.sender = (this.options.sender ?? (() => platformaticSender(this.options)))();
    await old.close().catch(() => undefined);
  }

  private scheduleProbe(delayMs: number): void {
    if (this.probeTimer || !this.spool) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      void this.drain();
    }, delayMs);
    this.probeTimer.unref();
  }

  /** Sends spooled records in order; the cursor moves only after a whole batch is acknowledged. */
  private async drain(): Promise<void> {
    const spool = this.spool;
    if (!spool || this.draining || this.closed) return;
    this.draining = true;
    try {
      for (;;) {
        const records: SpoolRecord[] = spool.read(this.options.maxBatch ?? 500);
        if (records.length === 0) break;
        try {
          const partitions = await this.sender.partitionCount(this.topic);
          await this.sender.send(records.map((r) => ({
            topic: this.topic, key: r.key, value: r.value, partition: partitionFor(r.key, partitions),
            timestamp: BigInt(r.timestampMs),
          })));
        } catch (error) {
          spool.rewind();
          if (isPermanent(error)) {
            // Cannot ever be sent (e.g. the topic was deleted): keep it on disk, say so, keep probing.
            this.options.onDelivery?.({ eventId: records[0]?.eventId ?? "", status: "failed", topic: this.topic,
              error: `spooled events cannot be sent: ${describeError(error)}` });
          }
          this.counters.resent += records.length;
          await this.resetSender();
          this.scheduleProbe(this.options.probeIntervalMs ?? 1000);
          return;
        }
        spool.commit((records[records.length - 1] as SpoolRecord).end);
        this.counters.drained += records.length;
      }
      // Caught up: back to direct sends; events that arrived meanwhile were spooled behind and were drained too.
      this.state = "direct";
      this.kick();
    } finally {
      this.draining = false;
    }
  }

  /** Synchronously spools everything still in memory (close, process exit). */
  private spoolInMemory(): void {
    const left = [...this.inFlight, ...this.queue];
    this.inFlight = [];
    this.queue = [];
    if (left.length === 0) return;
    if (this.spool) {
      this.toSpool(left);
      this.spool.sync();
    } else {
      for (const pending of left) {
        this.report(pending, { eventId: pending.eventId, status: "failed", topic: this.topic,
          error: "producer closed before the broker acknowledged the event and no spool is configured" });
      }
    }
  }
}
