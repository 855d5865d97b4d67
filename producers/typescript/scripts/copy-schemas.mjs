// Copies the contract (../../schemas/avro/*.avsc) into dist/schemas so the built package carries the very same
// schema files as the Python SDK; the package never keeps a second, hand-edited copy.
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "..", "..", "..", "schemas", "avro");
const target = join(here, "..", "dist", "schemas");
mkdirSync(target, { recursive: true });
const files = readdirSync(source).filter((name) => name.endsWith(".avsc"));
if (files.length === 0) throw new Error(`no .avsc files in ${source}`);
for (const name of files) copyFileSync(join(source, name), join(target, name));
console.log(`copied ${files.length} schemas from ${source}`);
