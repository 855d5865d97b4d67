// The TypeScript spool: order, bound, crash recovery (torn tail), commit and reopen.
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { Spool, SpoolFull, SpoolLocked } from "../src/spool.js";

const dir = () => mkdtempSync(join(tmpdir(), "finops-spool-"));

describe("Spool", () => {
  it("reads back in append order across segments and reopens at the cursor", () => {
    const d = dir();
    const spool = new Spool(d, 64 * 1024, { segmentBytes: 4096 });
    for (let i = 0; i < 100; i++) spool.append(Buffer.from(`agent-${i % 3}`), Buffer.alloc(100, i), `id-${i}`, i);
    assert.ok(readdirSync(d).filter((f) => f.endsWith(".seg")).length > 1);
    const first = spool.read(40);
    assert.deepEqual(first.map((r) => r.eventId), Array.from({ length: 40 }, (_, i) => `id-${i}`));
    spool.commit(first[first.length - 1]!.end);
    spool.close();
    const again = new Spool(d, 64 * 1024, { segmentBytes: 4096 });
    assert.equal(again.pending, 60);
    assert.equal(again.read(1000).map((r) => r.eventId)[0], "id-40");
    again.close();
  });

  it("refuses past the bound and says so", () => {
    const spool = new Spool(dir(), 2048);
    assert.throws(() => {
      for (let i = 0; i < 100; i++) spool.append(Buffer.from("a"), Buffer.alloc(200), `id-${i}`);
    }, (err: unknown) => err instanceof SpoolFull && err.message.includes("was NOT stored"));
    assert.ok(spool.bytes <= 2048);
    spool.close();
  });

  it("truncates a torn tail record on open", () => {
    const d = dir();
    const spool = new Spool(d, 64 * 1024);
    spool.append(Buffer.from("a"), Buffer.from("v1"), "id-1");
    spool.close();
    const seg = readdirSync(d).find((f) => f.endsWith(".seg")) as string;
    appendFileSync(join(d, seg), Buffer.from([0, 0, 0, 40, 1, 2]));
    const reopened = new Spool(d, 64 * 1024);
    assert.equal(reopened.pending, 1);
    assert.equal(reopened.truncatedBytes, 6);
    reopened.close();
  });

  it("one owner at a time", () => {
    const d = dir();
    const spool = new Spool(d, 64 * 1024);
    assert.throws(() => new Spool(d, 64 * 1024), SpoolLocked);
    spool.close();
    new Spool(d, 64 * 1024).close();
  });
});
