// UsageProducer with an injected Kafka client: validation before sending, crc32 partitioning, delivery reports,
// an outage going to the spool in order and draining when the broker is back, permanent errors reported.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { BatchValidationFailed, EncodeError, ValidationFailed } from "../src/errors.js";
import { DeliveryFailed, type Delivery, type KafkaSender, UsageProducer, partitionFor } from "../src/producer.js";
import { AvroCodec } from "../src/wire.js";
import { waitFor } from "./helpers.js";

class FakeKafka {
  up = true;
  permanent = false;
  sent: Array<{ key: string; value: Buffer; partition: number }> = [];
  sender(): KafkaSender {
    return {
      partitionCount: async () => {
        if (!this.up) throw Object.assign(new Error("connect ECONNREFUSED"), { code: "PLT_KFK_NETWORK" });
        return 3;
      },
      send: async (messages) => {
        if (this.permanent) throw Object.assign(new Error("too large"), { apiId: "MESSAGE_TOO_LARGE" });
        if (!this.up) throw Object.assign(new Error("connect ECONNREFUSED"), { code: "PLT_KFK_NETWORK" });
        const base = this.sent.length;
        for (const m of messages) this.sent.push({ key: m.key.toString(), value: m.value, partition: m.partition });
        return [...new Set(messages.map((m) => m.partition))].map((p) => ({ topic: m0(messages).topic, partition: p,
          offset: BigInt(base) }));
      },
      close: async () => undefined,
    };
  }
}
const m0 = <T>(xs: T[]): T => xs[0] as T;

const event = (i: number, agent = `agent-${i % 4}`) => ({
  agent_id: agent, team: "t", project: "p", provider: "openai", model: "gpt-4o-mini", input_tokens: 10 + i,
  output_tokens: 1, task_id: `task-${i}`,
});

function build(kafka: FakeKafka, spool = true) {
  const deliveries: Delivery[] = [];
  const producer = new UsageProducer({
    bootstrap: "unused:9092", topic: "agent.usage.v1", source: "ts-test",
    spoolDir: spool ? mkdtempSync(join(tmpdir(), "finops-prod-")) : null,
    sender: () => kafka.sender(), onDelivery: (d) => deliveries.push(d), probeIntervalMs: 10, exitHook: false,
  });
  return { producer, deliveries };
}

describe("UsageProducer", () => {
  it("refuses an invalid event before sending, naming the field", () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    assert.throws(() => producer.emit({ ...event(1), output_tokens: -5, reasoning_tokens: 0 }),
      (err: unknown) => err instanceof ValidationFailed && err.fields().includes("output_tokens"));
    assert.equal(kafka.sent.length, 0);
    return producer.close();
  });

  it("delivers decodable single-object events keyed and partitioned by agent_id as librdkafka does", async () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    const results = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => producer.send(event(i))));
    assert.ok(results.every((d) => d.status === "delivered"));
    const codec = new AvroCodec();
    for (const m of kafka.sent) {
      assert.equal(m.partition, partitionFor(Buffer.from(m.key), 3));
      const [name, record] = codec.decode(m.value);
      assert.equal(name, "UsageEvent");
      assert.equal(record["agent_id"], m.key);
      assert.equal(record["source"], "ts-test");
    }
    // Python's confluent-kafka (librdkafka consistent_random) puts "agent-0" on partition crc32 % 3:
    assert.equal(partitionFor(Buffer.from("agent-0"), 3), 0); // python: zlib.crc32(b"agent-0") % 3
    await producer.close();
  });

  it("spools during an outage, in order, and drains when the broker is back", async () => {
    const kafka = new FakeKafka();
    const { producer, deliveries } = build(kafka);
    kafka.up = false;
    const outage = await Promise.all([0, 1, 2, 3, 4].map((i) => producer.emit(event(i, "one-agent"))));
    assert.deepEqual(outage.map((d) => d.status), ["spooled", "spooled", "spooled", "spooled", "spooled"]);
    assert.equal(producer.stats().state, "spooling");
    const later = await producer.emit(event(5, "one-agent")); // behind the spool, not around it
    assert.equal(later.status, "spooled");
    kafka.up = true;
    await waitFor(() => (producer.stats().state === "direct" ? true : undefined));
    const tasks = kafka.sent.map((m) => new AvroCodec().decode(m.value)[1]["task_id"]);
    assert.deepEqual(tasks, ["task-0", "task-1", "task-2", "task-3", "task-4", "task-5"]);
    assert.equal(producer.stats().spoolPending, 0);
    assert.equal((await producer.emit(event(6))).status, "delivered");
    assert.equal(deliveries.length, 7);
    await producer.close();
  });

  it("reports a permanent error as failed, and send() throws it", async () => {
    const kafka = new FakeKafka();
    kafka.permanent = true;
    const { producer } = build(kafka);
    await assert.rejects(producer.send(event(1)),
      (err: unknown) => err instanceof DeliveryFailed && err.delivery.status === "failed" &&
        /too large/.test(err.delivery.error ?? ""));
    await producer.close();
  });

  it("without a spool an outage is a reported failure, never silent", async () => {
    const kafka = new FakeKafka();
    kafka.up = false;
    const { producer } = build(kafka, false);
    const d = await producer.emit(event(1));
    assert.equal(d.status, "failed");
    assert.match(d.error ?? "", /no spool configured/);
    await producer.close();
  });

  it("close() spools what the broker has not acknowledged", async () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    kafka.up = false;
    const pending = producer.emit(event(1));
    await producer.close();
    assert.equal((await pending).status, "spooled");
  });

  it("prepareMany gives the bytes prepare gives each event", () => {
    const kafka = new FakeKafka();
    const now = new Date("2026-03-01T12:00:00Z");
    const producer = new UsageProducer({ bootstrap: "unused:9092", topic: "agent.usage.v1", source: "ts-test",
      spoolDir: null, sender: () => kafka.sender(), exitHook: false, clock: () => now });
    const events = [0, 1, 2, 3].map((i) => ({ ...event(i), event_id: `00000000-0000-4000-8000-00000000000${i}` }));
    events.push({ ...event(9), event_id: "00000000-0000-4000-8000-000000000009", reported_cost: "0.0125",
      latency_ms: 7, occurred_at: "2026-03-01T11:00:00+00:00" } as never);
    assert.deepEqual(producer.prepareMany(events), events.map((e) => producer.prepare(e)));
    return producer.close();
  });

  it("emitMany refuses the whole batch, naming each bad index and field", () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    const events: Array<Record<string, unknown>> = [0, 1, 2, 3, 4, 5].map((i) => event(i));
    events[2] = { ...event(2), input_tokens: -1 };
    events[5] = { ...event(5), agent_id: " " };
    assert.throws(() => producer.emitMany(events as never), (err: unknown) => {
      assert.ok(err instanceof BatchValidationFailed && err instanceof ValidationFailed);
      assert.deepEqual(err.indexes(), [2, 5]);
      assert.deepEqual(err.invalid.get(2)?.map((p) => p.field), ["input_tokens"]);
      assert.ok(err.fields().includes("2.input_tokens") && err.fields().includes("5.agent_id"));
      assert.match(err.message, /2 of 6 events are invalid, so none was sent/);
      assert.match(err.message, /event 2: input_tokens \[non_negative\]/);
      return true;
    });
    assert.equal(producer.stats().emitted, 0);
    return producer.close().then(() => assert.equal(kafka.sent.length, 0));
  });

  it("emitMany names the event it cannot encode and queues none", () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    const codec = (producer as unknown as { codec: { encode: (r: Record<string, unknown>, n: string) => Buffer } }).codec;
    const real = codec.encode.bind(codec);
    codec.encode = (r, n) => {
      if (r["agent_id"] === "odd") throw new EncodeError("a stand-in failure");
      return real(r, n);
    };
    assert.throws(() => producer.emitMany([event(0), event(1, "odd"), event(2)]),
      (err: unknown) => err instanceof EncodeError && /event 1 of the batch \(none was sent\)/.test(err.message));
    assert.equal(producer.stats().emitted, 0);
    return producer.close().then(() => assert.equal(kafka.sent.length, 0));
  });

  it("emitMany delivers every event once, in order per agent", async () => {
    const kafka = new FakeKafka();
    const { producer, deliveries } = build(kafka);
    const events = Array.from({ length: 1200 }, (_, i) => event(i));
    const results = await producer.emitMany(events);
    assert.equal(results.length, 1200);
    assert.ok(results.every((d) => d.status === "delivered"));
    assert.equal(deliveries.length, 1200);
    const codec = new AvroCodec();
    const tasks = kafka.sent.map((m) => codec.decode(m.value)[1]["task_id"]);
    assert.deepEqual(tasks, events.map((e) => e.task_id));
    assert.deepEqual(results.map((d) => d.eventId), kafka.sent.map((m) => codec.decode(m.value)[1]["event_id"]));
    await producer.close();
  });

  it("emitMany during an outage spools the batch in order behind the spool", async () => {
    const kafka = new FakeKafka();
    const { producer } = build(kafka);
    kafka.up = false;
    assert.equal((await producer.emit(event(0, "one-agent"))).status, "spooled");
    const batch = await producer.emitMany([1, 2, 3].map((i) => event(i, "one-agent")));
    assert.deepEqual(batch.map((d) => d.status), ["spooled", "spooled", "spooled"]);
    kafka.up = true;
    await waitFor(() => (producer.stats().state === "direct" ? true : undefined));
    const tasks = kafka.sent.map((m) => new AvroCodec().decode(m.value)[1]["task_id"]);
    assert.deepEqual(tasks, ["task-0", "task-1", "task-2", "task-3"]);
    await producer.close();
  });
});
