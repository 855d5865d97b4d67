// Adapters on recorded bodies: the OpenAI and Anthropic bodies are the Python suite's recordings
// (tests/unit/fixtures/responses) and the expected usage is what the Python adapters read from them
// (fixtures/adapter_expected.json); the Vercel AI SDK results are in fixtures/vercel.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

import {
  ProviderUsageError,
  type ProviderUsage,
  toUsageFields,
  usageFromAnthropic,
  usageFromOpenAIChat,
  usageFromResponse,
  usageFromVercelAI,
  usageFromVercelAISteps,
} from "../src/adapters.js";
import { buildUsageEvent } from "../src/event.js";
import { FIXTURES_DIR, REPO_ROOT, readJson } from "./helpers.js";

const RESPONSES = join(REPO_ROOT, "tests", "unit", "fixtures", "responses");
const expected = readJson(join(FIXTURES_DIR, "adapter_expected.json")) as Record<
  string,
  { adapter: string; usage: ProviderUsage }
>;

describe("OpenAI and Anthropic adapters read what the Python adapters read", () => {
  for (const [file, { adapter, usage }] of Object.entries(expected)) {
    it(`${adapter}: ${file}`, () => {
      const body = readFileSync(join(RESPONSES, file), "utf8");
      assert.deepEqual(usageFromResponse(adapter, JSON.parse(body)), usage);
      assert.deepEqual(usageFromResponse(adapter, body), usage, "JSON text too");
    });
  }

  it("openai picks Chat or Responses by the body's shape", () => {
    for (const [file, { usage }] of Object.entries(expected)) {
      if (!file.startsWith("openai_")) continue;
      assert.deepEqual(usageFromResponse("openai", readJson(join(RESPONSES, file))), usage);
    }
  });

  it("a missing required count names the path, never guesses 0", () => {
    const body = readJson(join(RESPONSES, "openai_chat_plain.json")) as { usage: Record<string, unknown> };
    delete body.usage["prompt_tokens"];
    assert.throws(() => usageFromOpenAIChat(body),
      (err: unknown) => err instanceof ProviderUsageError && err.path === "usage.prompt_tokens");
    assert.throws(() => usageFromAnthropic({ model: "claude", usage: { input_tokens: 1 } }),
      (err: unknown) => err instanceof ProviderUsageError && err.path === "usage.output_tokens");
  });

  it("adapter output builds a valid event", () => {
    const usage = usageFromAnthropic(readJson(join(RESPONSES, "anthropic_cache_write_5m_1h.json")));
    const event = buildUsageEvent({ ...toUsageFields(usage), agent_id: "a", team: "t", project: "p" },
      new Date(), "svc");
    assert.equal(event.input_tokens, 4750);
  });

  it("every recorded OpenAI/Anthropic body has an expectation", () => {
    const bodies = readdirSync(RESPONSES).filter((f) => /^(openai_chat|openai_responses|anthropic)_/.test(f));
    assert.deepEqual(bodies.sort(), Object.keys(expected).sort());
  });
});

describe("Vercel AI SDK results", () => {
  const dir = join(FIXTURES_DIR, "vercel");
  for (const file of readdirSync(dir).sort()) {
    const fixture = readJson(join(dir, file)) as {
      result: unknown;
      options?: { provider?: string };
      expected?: Partial<ProviderUsage>;
      expectedSteps?: Array<Partial<ProviderUsage>>;
    };
    it(file, () => {
      if (fixture.expected) {
        const usage = usageFromVercelAI(fixture.result, fixture.options ?? {});
        assert.deepEqual(pick(usage, fixture.expected), fixture.expected);
      }
      if (fixture.expectedSteps) {
        const steps = usageFromVercelAISteps(fixture.result, fixture.options ?? {});
        assert.deepEqual(steps.map((u, i) => pick(u, fixture.expectedSteps?.[i] ?? {})), fixture.expectedSteps);
      }
    });
  }

  it("an unknown provider must be named", () => {
    assert.throws(() => usageFromVercelAI({ usage: { inputTokens: 1, outputTokens: 1 }, response: { modelId: "m" } }),
      (err: unknown) => err instanceof ProviderUsageError && err.path === "providerMetadata");
  });
});

function pick(usage: ProviderUsage, keys: object): Partial<ProviderUsage> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(keys)) out[key] = (usage as unknown as Record<string, unknown>)[key];
  return out as Partial<ProviderUsage>;
}
