// A small driver for tests/integration/test_typescript_producer.py: reads one JSON command from argv[2], runs it
// against a real broker through the public API, prints one JSON result line on stdout.
//   {"op": "publish", "bootstrap", "topic", "source", "events": [...], "invalid": {...}, "batch": true,
//    "invalidBatch": [...]}   (batch: the events go in one emitMany call; invalidBatch: emitMany refuses it)
//   {"op": "guard", "bootstrap", "topic", "keys": {"id": "secret"}, "calls": [{agent_id, team, project, model}]}
import { BatchValidationFailed, ControlGuard, UsageProducer, ValidationFailed } from "../../src/index.js";

type Command = {
  op: "publish" | "guard";
  bootstrap: string;
  topic: string;
  source?: string;
  events?: Array<Record<string, unknown>>;
  invalid?: Record<string, unknown>;
  batch?: boolean;
  invalidBatch?: Array<Record<string, unknown>>;
  spoolDir?: string;
  keys?: Record<string, string>;
  calls?: Array<{ agent_id: string; team: string; project: string; model: string }>;
};

const json = (value: unknown): string =>
  JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));

async function publish(cmd: Command): Promise<unknown> {
  const producer = await UsageProducer.create({
    bootstrap: cmd.bootstrap, topic: cmd.topic, source: cmd.source ?? "ts-integration", spoolDir: cmd.spoolDir ?? null,
  });
  let invalid: unknown = null;
  if (cmd.invalid) {
    try {
      producer.emit(cmd.invalid as never);
    } catch (err) {
      if (!(err instanceof ValidationFailed)) throw err;
      invalid = { fields: err.fields(), problems: err.problems };
    }
  }
  let invalidBatch: unknown = null;
  if (cmd.invalidBatch) {
    try {
      void producer.emitMany(cmd.invalidBatch as never);
    } catch (err) {
      if (!(err instanceof BatchValidationFailed)) throw err;
      invalidBatch = { indexes: err.indexes(), fields: err.fields(), message: err.message };
    }
  }
  const deliveries = cmd.batch
    ? await producer.emitMany((cmd.events ?? []) as never)
    : await Promise.all((cmd.events ?? []).map((event) => producer.send(event as never)));
  await producer.close();
  return { deliveries, invalid, invalidBatch, stats: producer.stats() };
}

async function guard(cmd: Command): Promise<unknown> {
  const keys = Object.fromEntries(Object.entries(cmd.keys ?? {}).map(([id, secret]) => [id, Buffer.from(secret)]));
  const g = await ControlGuard.start({ bootstrap: cmd.bootstrap, topic: cmd.topic, keys });
  const decisions = (cmd.calls ?? []).map((call) => {
    const d = g.check(call);
    return d.action === "refuse" ? { action: d.action, command_id: d.command.command_id } : { action: d.action, model: d.model };
  });
  const stats = g.stats();
  await g.close();
  return { decisions, stats };
}

const cmd = JSON.parse(process.argv[2] ?? "{}") as Command;
const result = cmd.op === "guard" ? await guard(cmd) : await publish(cmd);
process.stdout.write(`${json(result)}\n`);
process.exit(0);
