import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (tests run from dist/test). */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
export const EXAMPLES_DIR = join(REPO_ROOT, "schemas", "examples");
export const VECTORS_DIR = join(REPO_ROOT, "schemas", "vectors");
export const FIXTURES_DIR = join(REPO_ROOT, "producers", "typescript", "test", "fixtures");

export function readJson(path: string): unknown {
  return JSON.parse(readFileSync(path, "utf8"));
}

export function exampleNames(): string[] {
  return readdirSync(EXAMPLES_DIR).filter((name) => name.endsWith(".json")).sort();
}

const PREFIXES: Record<string, string> = {
  usage_event: "UsageEvent",
  priced_usage_event: "PricedUsageEvent",
  spend_aggregate: "SpendAggregate",
  alert: "Alert",
  control_command: "ControlCommand",
  budget_policy: "BudgetPolicy",
};

/** The record an example holds, by its file name's longest known prefix (as schemas.models does). */
export function exampleRecordName(file: string): string {
  const matches = Object.keys(PREFIXES).filter((prefix) => file.startsWith(prefix));
  const best = matches.sort((a, b) => b.length - a.length)[0];
  if (!best) throw new Error(`no record prefix for ${file}`);
  return PREFIXES[best] as string;
}

/** Polls `check` until it returns a value or `ms` pass (no fixed sleeps in tests). */
export async function waitFor<T>(check: () => T | undefined | Promise<T | undefined>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
