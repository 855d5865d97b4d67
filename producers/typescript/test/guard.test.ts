// The guard verifies exactly what the Python SDK signs (fixtures/control_cases.json) and refuses, throttles and
// downgrades from the control-topic state; a clock is injected, no broker needed.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";

import { type ControlCommand, canonicalBytes, signCommand, verifyCommand } from "../src/control.js";
import { ControlState } from "../src/guard.js";
import { AvroCodec } from "../src/wire.js";
import { FIXTURES_DIR, readJson } from "./helpers.js";

const fixture = readJson(join(FIXTURES_DIR, "control_cases.json")) as {
  key_id: string;
  secret: string;
  cases: Array<{ name: string; key: string; canonical: string; signature: string; avro_hex: string }>;
};
const keys = new Map([[fixture.key_id, Buffer.from(fixture.secret)]]);
const codec = new AvroCodec();
const MIN = 60_000_000n;

function decoded(name: string): ControlCommand {
  const c = fixture.cases.find((x) => x.name === name);
  if (!c) throw new Error(name);
  return codec.decode(Buffer.from(c.avro_hex, "hex"))[1] as unknown as ControlCommand;
}

const ctx = { agent_id: "support-triage-7", team: "customer-support", project: "helpdesk-automation", model: "gpt-4o" };
const T0 = 1_741_944_500_000_000n; // after the fixtures' issued_at, before their expiry

describe("control commands signed by Python", () => {
  for (const c of fixture.cases) {
    it(`${c.name}: same canonical bytes, signature verifies, re-signing gives the same signature`, () => {
      const cmd = decoded(c.name);
      assert.equal(canonicalBytes(cmd).toString("utf8"), c.canonical);
      assert.equal(verifyCommand(cmd, keys), true);
      assert.equal(signCommand({ ...cmd, signature: "" }, fixture.key_id, Buffer.from(fixture.secret)).signature,
        c.signature);
    });
  }

  it("a changed field, another key or an unknown key id does not verify", () => {
    const cmd = decoded("throttle_team");
    assert.equal(verifyCommand({ ...cmd, rate_per_minute: 3000 }, keys), false);
    assert.equal(verifyCommand(cmd, new Map([[fixture.key_id, Buffer.from("other")]])), false);
    assert.equal(verifyCommand({ ...cmd, key_id: "nope" }, keys), false);
  });
});

describe("ControlState", () => {
  it("suspend refuses; resume releases; a forged command is ignored", () => {
    const rejected: string[] = [];
    const state = new ControlState(keys, (reason) => rejected.push(reason));
    const suspend = decoded("suspend_agent_unicode_reason");
    assert.equal(state.apply("agent:support-triage-7", { ...suspend, reason: "forged" }), false);
    assert.equal(rejected.length, 1);
    assert.equal(state.decide(ctx, T0).action, "allow");
    state.apply("agent:support-triage-7", suspend);
    assert.equal(state.decide(ctx, T0).action, "refuse");
    const resume = signCommand({ ...suspend, command_id: "cmd-r", action: "resume", issued_at: suspend.issued_at + 1n },
      fixture.key_id, Buffer.from(fixture.secret));
    state.apply("agent:support-triage-7", resume);
    assert.equal(state.decide(ctx, T0).action, "allow");
  });

  it("a tombstone clears; an older command does not replace a newer one; a mis-keyed one is refused", () => {
    const state = new ControlState(keys);
    const suspend = decoded("suspend_agent_unicode_reason");
    state.apply("agent:support-triage-7", suspend);
    const older = signCommand({ ...suspend, action: "resume", issued_at: suspend.issued_at - 1n }, fixture.key_id,
      Buffer.from(fixture.secret));
    state.apply("agent:support-triage-7", older);
    assert.equal(state.decide(ctx, T0).action, "refuse");
    assert.equal(state.stats().ignoredStale, 1);
    assert.equal(state.apply("agent:someone-else", suspend), false);
    state.apply("agent:support-triage-7", null);
    assert.equal(state.decide(ctx, T0).action, "allow");
  });

  it("throttle: at most rate_per_minute calls per sliding minute, then a wait", () => {
    const state = new ControlState(keys);
    state.apply("team:customer-support", decoded("throttle_team")); // 30 per minute
    for (let i = 0; i < 30; i++) {
      const at = T0 + BigInt(i) * 1_000_000n;
      assert.equal(state.decide(ctx, at).action, "allow");
      state.record(ctx.agent_id, at);
    }
    const blocked = state.decide(ctx, T0 + 30_000_000n);
    assert.equal(blocked.action, "throttle");
    assert.equal(blocked.action === "throttle" && blocked.waitMs, 30_000);
    assert.equal(state.decide(ctx, T0 + MIN + 1n).action, "allow");
  });

  it("downgrade replaces the model; expiry ends a command", () => {
    const state = new ControlState(keys);
    state.apply("project:helpdesk-automation", decoded("downgrade_project"));
    const d = state.decide(ctx, T0);
    assert.equal(d.action, "allow");
    assert.equal(d.action === "allow" && d.model, "gpt-4o-mini");
    const throttle = decoded("throttle_team");
    state.apply("team:customer-support", throttle);
    assert.equal(state.decide(ctx, (throttle.expires_at as bigint) + 1n).action, "allow");
  });
});
