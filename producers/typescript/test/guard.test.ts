// The guard verifies exactly what the Python SDK signs (fixtures/control_cases.json) and refuses, throttles and
// downgrades from the control-topic state; a clock is injected, no broker needed.
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";

import { type ControlCommand, canonicalBytes, signCommand, verifyCommand } from "../src/control.js";
import { ControlState, type RejectedCommand, TOMBSTONE_REASON } from "../src/guard.js";
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

  it("a tombstone is rejected; an older command does not replace a newer one; a mis-keyed one is refused", () => {
    const rejected: RejectedCommand[] = [];
    const state = new ControlState(keys, (_reason, _key, detail) => rejected.push(detail));
    const suspend = decoded("suspend_agent_unicode_reason");
    state.apply("agent:support-triage-7", suspend);
    const older = signCommand({ ...suspend, action: "resume", issued_at: suspend.issued_at - 1n }, fixture.key_id,
      Buffer.from(fixture.secret));
    state.apply("agent:support-triage-7", older);
    assert.equal(state.decide(ctx, T0).action, "refuse");
    assert.equal(state.stats().ignoredStale, 1);
    assert.equal(state.apply("agent:someone-else", suspend), false);
    // issue 14 item 2: an unsigned tombstone used to lift the suspension
    assert.equal(state.apply("agent:support-triage-7", null), false);
    assert.equal(state.applyRecord("agent:support-triage-7", null).changed, false);
    assert.equal(state.decide(ctx, T0).action, "refuse");
    assert.equal(state.stats().rejected, 3);
    assert.deepEqual(rejected.slice(-2).map((r) => [r.key, r.scope, r.reason]),
      [["agent:support-triage-7", "agent:support-triage-7", TOMBSTONE_REASON],
        ["agent:support-triage-7", "agent:support-triage-7", TOMBSTONE_REASON]]);
  });

  it("throttle: a token bucket per scope, rate_per_minute refill, burst max(1, rate / 10), as in Python", () => {
    const state = new ControlState(keys);
    state.apply("team:customer-support", decoded("throttle_team")); // 30 per minute: burst 3, a token per 2 s
    for (let i = 0; i < 3; i++) assert.equal(state.take(ctx, T0).action, "allow");
    const blocked = state.take(ctx, T0);
    assert.equal(blocked.action, "throttle");
    assert.equal(blocked.action === "throttle" && blocked.waitMs, 2_000);
    assert.equal(state.decide(ctx, T0 + 1_000_000n).action === "throttle" &&
      (state.decide(ctx, T0 + 1_000_000n) as { waitMs: number }).waitMs, 1_000);
    assert.equal(state.take(ctx, T0 + 2_000_000n).action, "allow");
    // A full minute refills to the burst, not to rate_per_minute.
    for (let i = 0; i < 3; i++) assert.equal(state.take(ctx, T0 + MIN).action, "allow");
    assert.equal(state.take(ctx, T0 + MIN).action, "throttle");
  });

  it("throttleBurst overrides the bucket size; decide() alone takes no token", () => {
    const state = new ControlState(keys, undefined, { throttleBurst: 5 });
    state.apply("team:customer-support", decoded("throttle_team"));
    for (let i = 0; i < 10; i++) assert.equal(state.decide(ctx, T0).action, "allow");
    for (let i = 0; i < 5; i++) state.record(ctx, T0);
    assert.equal(state.decide(ctx, T0).action, "throttle");
  });

  it("a blank team or project is no scope", () => {
    const state = new ControlState(keys);
    state.apply("team:customer-support", signCommand({ ...decoded("suspend_agent_unicode_reason"), command_id: "t",
      scope_type: "team", scope_value: "customer-support" }, fixture.key_id, Buffer.from(fixture.secret)));
    assert.equal(state.decide(ctx, T0).action, "refuse");
    assert.equal(state.decide({ ...ctx, team: "" }, T0).action, "allow");
  });

  it("rejections carry Python's reasons and the command's identity; undecodable bytes are rejected", () => {
    const seen: Array<{ key: string | null; reason: string; command_id?: string }> = [];
    const state = new ControlState(keys, (_r, _k, detail) => seen.push(detail));
    const suspend = decoded("suspend_agent_unicode_reason");
    state.apply("agent:support-triage-7", { ...suspend, reason: "forged" });
    state.apply("agent:support-triage-7", { ...suspend, key_id: "nope" });
    state.apply("agent:other", suspend);
    state.applyRecord("agent:support-triage-7", Buffer.from("c301deadbeef", "hex"));
    const expected = ["signature does not verify", "unknown signing key id",
      "message key 'agent:other' does not match the signed scope 'agent:support-triage-7'",
      "undecodable control message: "];
    assert.equal(seen.length, expected.length);
    expected.forEach((prefix, i) => assert.ok(seen[i]?.reason.startsWith(prefix), `${seen[i]?.reason} / ${prefix}`));
    assert.equal(seen[0]?.command_id, "cmd-2");
    assert.equal(state.stats().rejected, 4);
    assert.equal(state.decide(ctx, T0).action, "allow");
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
