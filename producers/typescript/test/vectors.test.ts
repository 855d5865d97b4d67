// The shared vectors of schemas/vectors: the TypeScript codec writes exactly the bytes the Python codec wrote for
// every example payload, and reads them back to the example (tests/unit/test_vectors.py checks the same files).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

import { normalize, parseSchema } from "../src/avro.js";
import { AvroCodec, loadSchemas } from "../src/wire.js";
import { VECTORS_DIR, exampleNames, exampleRecordName, readJson } from "./helpers.js";

const codec = new AvroCodec();
const schemas = loadSchemas();

describe("shared vectors", () => {
  it("fingerprints and canonical forms equal Python's", () => {
    const stored = readJson(join(VECTORS_DIR, "fingerprints.json")) as Record<
      string,
      { fingerprint: string; canonical_form: string }
    >;
    assert.deepEqual(Object.keys(stored).sort(), codec.names().sort());
    for (const [name, entry] of Object.entries(stored)) {
      assert.equal(codec.canonicalForm(name), entry.canonical_form, `${name} canonical form`);
      assert.equal(Buffer.from(codec.fingerprint(name)).toString("hex"), entry.fingerprint, `${name} fingerprint`);
    }
  });

  for (const file of exampleNames()) {
    const stem = file.slice(0, -".json".length);
    const name = exampleRecordName(file);
    const example = readJson(join(VECTORS_DIR, "..", "examples", file)) as Record<string, unknown>;
    const expected = readFileSync(join(VECTORS_DIR, `${stem}.bin`));

    it(`encodes ${file} to ${stem}.bin byte for byte`, () => {
      assert.equal(codec.encode(example, name).toString("hex"), expected.toString("hex"));
    });

    it(`decodes ${stem}.bin to ${file}`, () => {
      const [decodedName, decoded] = codec.decode(expected);
      assert.equal(decodedName, name);
      const node = parseSchema(schemas.get(name) ?? null);
      assert.deepEqual(decoded, normalize(node, example));
    });
  }
});
