// The shared control-command scenarios (fixtures/guard_scenarios.json, written by guard_scenarios.py with the
// outcomes of the Python guard, producers/guard.py, which tests/unit/test_guard_vectors.py checks): the TypeScript
// ControlState gives the same outcome at every step (clock injected, no broker).
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";

import { ControlState, type RejectedCommand } from "../src/guard.js";
import { FIXTURES_DIR, readJson } from "./helpers.js";

type Step = {
  at: number;
  message?: { key: string | null; avro_hex: string | null };
  check?: { expect: "allow" | "suspended" | "throttled"; command_id?: string; scope?: string; wait_s?: number };
  downgrade?: { requested: string; expect: string };
  stats?: { applied: number; forged: number; stale: number };
};
const doc = readJson(join(FIXTURES_DIR, "guard_scenarios.json")) as {
  key_id: string;
  secret: string;
  base_us: number;
  who: { agent_id: string; team: string; project: string };
  scenarios: Array<{ name: string; rule: string; steps: Step[] }>;
};
const keys = new Map([[doc.key_id, Buffer.from(doc.secret)]]);

describe("shared guard scenarios (Python guard = reference)", () => {
  for (const scenario of doc.scenarios) {
    it(`${scenario.name}: ${scenario.rule}`, () => {
      const rejected: RejectedCommand[] = [];
      const state = new ControlState(keys, (_reason, _key, detail) => rejected.push(detail));
      const ctx = { ...doc.who, model: "unused" };
      scenario.steps.forEach((step, i) => {
        const now = BigInt(doc.base_us) + BigInt(Math.round(step.at * 1_000_000));
        const where = `${scenario.name} step ${i}: ${JSON.stringify(step)}`;
        if (step.message) {
          const value = step.message.avro_hex === null ? null : Buffer.from(step.message.avro_hex, "hex");
          state.applyRecord(step.message.key, value);
        } else if (step.check) {
          const d = state.take(ctx, now);
          const want = step.check;
          if (want.expect === "allow") assert.equal(d.action, "allow", where);
          else if (want.expect === "suspended") {
            assert.equal(d.action, "refuse", where);
            assert.ok(d.action === "refuse");
            assert.equal(d.command.command_id, want.command_id, where);
            assert.equal(`${d.command.scope_type}:${d.command.scope_value}`, want.scope, where);
          } else {
            assert.equal(d.action, "throttle", where);
            assert.ok(d.action === "throttle");
            assert.equal(`${d.command.scope_type}:${d.command.scope_value}`, want.scope, where);
            assert.ok(Math.abs(d.waitMs - (want.wait_s as number) * 1000) <= 1, `${where}: waitMs ${d.waitMs}`);
          }
        } else if (step.downgrade) {
          assert.equal(state.downgradeModel({ ...ctx, model: step.downgrade.requested }, now), step.downgrade.expect,
            where);
        } else if (step.stats) {
          const s = state.stats();
          assert.deepEqual({ applied: s.applied, forged: s.rejected, stale: s.ignoredStale }, step.stats, where);
          assert.equal(rejected.length, s.rejected, where);
        }
      });
    });
  }
});
