/**
 * Provider adapters: map a model response onto the canonical token counts of the usage event. A port of
 * `finops/adapters.py` (same semantics, same paths in errors) for the bodies TypeScript agents hold:
 *
 * | source                      | mapping                                                                           |
 * |-----------------------------|-----------------------------------------------------------------------------------|
 * | OpenAI Chat Completions     | `prompt_tokens` already includes cached and audio tokens; `completion_tokens`     |
 * |                             | includes reasoning and audio tokens: taken as they are.                           |
 * | OpenAI Responses            | `input_tokens` includes `cached_tokens`; `output_tokens` includes                 |
 * |                             | `reasoning_tokens`; each `web_search_call` output item is one billed search.      |
 * | Anthropic Messages          | `input_tokens` EXCLUDES cache reads and writes: ours is input + cache_creation +  |
 * |                             | cache_read; `cache_creation.ephemeral_1h_input_tokens` is the 1-hour part.        |
 * | Vercel AI SDK result        | the raw Anthropic usage in `providerMetadata.anthropic.usage` when present (exact);|
 * |                             | else the SDK's usage: v6 `{inputTokens: {total, cacheRead, cacheWrite}, ...}`,    |
 * |                             | v5 `inputTokens`/`cachedInputTokens`/`reasoningTokens` (Anthropic's v5 inputTokens|
 * |                             | excludes the cache, so it is added back), v4 `promptTokens`/`completionTokens`.   |
 *
 * The OpenAI and Anthropic JS SDKs return the API's JSON shape (snake_case), so their response objects are passed
 * as they are. Adapters never guess a zero for a required count: they throw {@link ProviderUsageError}.
 */

import { FinopsError } from "./errors.js";

/** Canonical usage of one model call (semantics: module comment; the same as UsageEvent.avsc). */
export interface ProviderUsage {
  provider: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
  cache_write_1h_tokens: number;
  reasoning_tokens: number;
  input_audio_tokens: number;
  output_audio_tokens: number;
  cache_audio_read_tokens: number;
  image_tokens: number;
  web_search_calls: number;
  requests: number;
  reported_cost?: string | null;
  /** The provider's response id (provenance; not a usage-event field). */
  response_id?: string | null;
}

/** A response cannot be mapped onto canonical usage; `provider` and `path` say which body and which field. */
export class ProviderUsageError extends FinopsError {
  constructor(readonly provider: string, readonly path: string, message: string) {
    super(`${provider}: ${path}: ${message}`);
  }
}

type Body = unknown;

function child(node: unknown, key: string): unknown {
  if (node === null || node === undefined || typeof node !== "object") return undefined;
  return (node as Record<string, unknown>)[key];
}

function lookup(body: Body, path: string): unknown {
  let node: unknown = body;
  for (const key of path.split(".")) node = child(node, key);
  return node;
}

class Reader {
  constructor(readonly provider: string, readonly body: Body, readonly hint: string) {}

  fail(path: string, message: string): ProviderUsageError {
    return new ProviderUsageError(this.provider, path, message);
  }

  count(path: string, required = false): number {
    const value = lookup(this.body, path);
    if (value === undefined || value === null) {
      if (required) throw this.fail(path, `missing from the response body; ${this.hint}`);
      return 0;
    }
    if (typeof value !== "number" || !Number.isInteger(value)) {
      throw this.fail(path, `expected a whole token count, got ${JSON.stringify(value)}`);
    }
    if (value < 0) throw this.fail(path, `token count must not be negative, got ${value}`);
    return value;
  }

  text(path: string): string {
    const value = lookup(this.body, path);
    if (value === undefined || value === null) throw this.fail(path, `missing from the response body; ${this.hint}`);
    if (typeof value !== "string" || value.length === 0) {
      throw this.fail(path, `expected a non-empty string, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  object(path: string): void {
    const value = lookup(this.body, path);
    if (value === undefined || value === null) throw this.fail(path, `missing from the response body; ${this.hint}`);
    if (typeof value !== "object" || Array.isArray(value)) throw this.fail(path, `expected an object`);
  }

  items(path: string): unknown[] {
    const value = lookup(this.body, path);
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) throw this.fail(path, "expected a list");
    return value;
  }

  responseId(path: string): string | null {
    const value = lookup(this.body, path);
    return typeof value === "string" && value ? value : null;
  }
}

function asBody(body: unknown, provider: string): Body {
  if (typeof body === "string") {
    try {
      return JSON.parse(body) as Body;
    } catch (err) {
      throw new ProviderUsageError(provider, "body", `not valid JSON (${(err as Error).message}); pass the response body`);
    }
  }
  if (body === null || typeof body !== "object") {
    throw new ProviderUsageError(provider, "body", `cannot read a response of type ${typeof body}`);
  }
  return body;
}

/** Builds a {@link ProviderUsage} with zero defaults and checks the canonical invariants. */
export function makeUsage(fields: Partial<ProviderUsage> & { provider: string; model: string }): ProviderUsage {
  const usage: ProviderUsage = {
    input_tokens: 0, output_tokens: 0, cache_read_tokens: 0, cache_write_tokens: 0, cache_write_1h_tokens: 0,
    reasoning_tokens: 0, input_audio_tokens: 0, output_audio_tokens: 0, cache_audio_read_tokens: 0, image_tokens: 0,
    web_search_calls: 0, requests: 1, reported_cost: null, response_id: null, ...fields,
  };
  const parts: Array<[string, number, string, number]> = [
    ["cache_read_tokens + cache_write_tokens", usage.cache_read_tokens + usage.cache_write_tokens, "input_tokens",
      usage.input_tokens],
    ["cache_write_1h_tokens", usage.cache_write_1h_tokens, "cache_write_tokens", usage.cache_write_tokens],
    ["input_audio_tokens + image_tokens", usage.input_audio_tokens + usage.image_tokens, "input_tokens",
      usage.input_tokens],
    ["cache_audio_read_tokens", usage.cache_audio_read_tokens, "cache_read_tokens", usage.cache_read_tokens],
    ["cache_audio_read_tokens", usage.cache_audio_read_tokens, "input_audio_tokens", usage.input_audio_tokens],
    ["reasoning_tokens + output_audio_tokens", usage.reasoning_tokens + usage.output_audio_tokens, "output_tokens",
      usage.output_tokens],
  ];
  for (const [partName, part, wholeName, whole] of parts) {
    if (part > whole) {
      throw new ProviderUsageError(usage.provider, "usage",
        `${partName} (${part}) exceeds ${wholeName} (${whole}); the response's usage is inconsistent or was read ` +
        "with the wrong adapter");
    }
  }
  return usage;
}

/** The usage-event fields of `usage` (everything but `response_id`), ready to spread into `emit({...})`. */
export function toUsageFields(usage: ProviderUsage): Omit<ProviderUsage, "response_id"> {
  const { response_id: _ignored, ...fields } = usage;
  return fields;
}

const OPENAI_CHAT_HINT =
  "pass the whole Chat Completions response (for streams, request stream_options: {include_usage: true} and pass " +
  "the last chunk, which carries usage)";

/** OpenAI Chat Completions (`chat.completion`), e.g. `await openai.chat.completions.create(...)`. */
export function usageFromOpenAIChat(response: unknown, provider = "openai"): ProviderUsage {
  const r = new Reader(provider, asBody(response, provider), OPENAI_CHAT_HINT);
  r.object("usage");
  return makeUsage({
    provider,
    model: r.text("model"),
    input_tokens: r.count("usage.prompt_tokens", true),
    output_tokens: r.count("usage.completion_tokens", true),
    cache_read_tokens: r.count("usage.prompt_tokens_details.cached_tokens"),
    cache_write_tokens: r.count("usage.prompt_tokens_details.cache_write_tokens"),
    reasoning_tokens: r.count("usage.completion_tokens_details.reasoning_tokens"),
    input_audio_tokens: r.count("usage.prompt_tokens_details.audio_tokens"),
    output_audio_tokens: r.count("usage.completion_tokens_details.audio_tokens"),
    image_tokens: r.count("usage.prompt_tokens_details.image_tokens"),
    response_id: r.responseId("id"),
  });
}

/** OpenAI Responses API (`response`), e.g. `await openai.responses.create(...)`. */
export function usageFromOpenAIResponses(response: unknown, provider = "openai"): ProviderUsage {
  const r = new Reader(provider, asBody(response, provider),
    "pass the completed Responses API response (usage is null until status is 'completed'; for streams, pass the " +
    "response of the response.completed event)");
  r.object("usage");
  const webSearches = r.items("output").filter((item) => child(item, "type") === "web_search_call").length;
  return makeUsage({
    provider,
    model: r.text("model"),
    input_tokens: r.count("usage.input_tokens", true),
    output_tokens: r.count("usage.output_tokens", true),
    cache_read_tokens: r.count("usage.input_tokens_details.cached_tokens"),
    cache_write_tokens: r.count("usage.input_tokens_details.cache_write_tokens"),
    reasoning_tokens: r.count("usage.output_tokens_details.reasoning_tokens"),
    web_search_calls: webSearches,
    response_id: r.responseId("id"),
  });
}

function anthropicFromReader(r: Reader, provider: string, model: string, prefix: string): ProviderUsage {
  r.object(prefix.slice(0, -1));
  const uncached = r.count(`${prefix}input_tokens`, true);
  const cacheRead = r.count(`${prefix}cache_read_input_tokens`);
  const write5m = r.count(`${prefix}cache_creation.ephemeral_5m_input_tokens`);
  const write1h = r.count(`${prefix}cache_creation.ephemeral_1h_input_tokens`);
  const cacheWrite = lookup(r.body, `${prefix}cache_creation_input_tokens`) !== undefined &&
    lookup(r.body, `${prefix}cache_creation_input_tokens`) !== null
    ? r.count(`${prefix}cache_creation_input_tokens`)
    : write5m + write1h;
  return makeUsage({
    provider,
    model,
    input_tokens: uncached + cacheWrite + cacheRead,
    output_tokens: r.count(`${prefix}output_tokens`, true),
    cache_read_tokens: cacheRead,
    cache_write_tokens: cacheWrite,
    cache_write_1h_tokens: write1h,
    reasoning_tokens: r.count(`${prefix}output_tokens_details.thinking_tokens`),
    web_search_calls: r.count(`${prefix}server_tool_use.web_search_requests`),
    response_id: r.responseId("id"),
  });
}

/** Anthropic Messages API (`message`), e.g. `await anthropic.messages.create(...)` or `stream.finalMessage()`. */
export function usageFromAnthropic(response: unknown, provider = "anthropic"): ProviderUsage {
  const r = new Reader(provider, asBody(response, provider),
    "pass the whole Messages API response (for streams, the final message from stream.finalMessage(), whose usage " +
    "sums message_start and message_delta)");
  r.object("usage");
  return anthropicFromReader(r, provider, r.text("model"), "usage.");
}

const VERCEL_HINT = "pass the result of generateText / streamText (awaited) or one of its steps";

function vercelProvider(result: Body, given: string | undefined): string {
  if (given) return given;
  const metadata = child(result, "providerMetadata");
  for (const name of ["anthropic", "openai", "google", "openrouter", "bedrock", "azure"]) {
    if (child(metadata, name) !== undefined) return name;
  }
  const modelProvider = child(child(result, "model"), "provider");
  if (typeof modelProvider === "string" && modelProvider) return modelProvider.split(".")[0] as string;
  throw new ProviderUsageError("vercel-ai", "providerMetadata",
    "cannot tell the provider from the result; pass it: usageFromVercelAI(result, { provider: 'openai' })");
}

/**
 * A Vercel AI SDK result (`generateText`, awaited `streamText`, `generateObject`, or one element of `steps`).
 * For a multi-step result, each step is one model call: map `result.steps` with {@link usageFromVercelAISteps}.
 * `provider` defaults to the provider named in `providerMetadata`; `model` to `response.modelId`.
 */
export function usageFromVercelAI(result: unknown, options: { provider?: string; model?: string } = {}): ProviderUsage {
  const body = asBody(result, options.provider ?? "vercel-ai");
  const provider = vercelProvider(body, options.provider);
  const r = new Reader(provider, body, VERCEL_HINT);
  const model = options.model ?? r.text("response.modelId");
  const responseId = r.responseId("response.id");
  // Exact: the raw Anthropic usage object the SDK passes through.
  if (lookup(body, "providerMetadata.anthropic.usage.input_tokens") !== undefined) {
    return { ...anthropicFromReader(r, provider, model, "providerMetadata.anthropic.usage."), response_id: responseId };
  }
  r.object("usage");
  const input = lookup(body, "usage.inputTokens");
  if (input !== null && typeof input === "object") {
    // AI SDK 6: totals include the cache; the parts are given.
    return makeUsage({
      provider, model, response_id: responseId,
      input_tokens: r.count("usage.inputTokens.total", true),
      output_tokens: r.count("usage.outputTokens.total", true),
      cache_read_tokens: r.count("usage.inputTokens.cacheRead"),
      cache_write_tokens: r.count("usage.inputTokens.cacheWrite"),
      reasoning_tokens: r.count("usage.outputTokens.reasoning"),
    });
  }
  if (input !== undefined) {
    // AI SDK 5: inputTokens includes the cache for OpenAI-style providers, not for Anthropic.
    const cacheRead = r.count("usage.cachedInputTokens");
    let inputTokens = r.count("usage.inputTokens", true);
    let cacheWrite = 0;
    if (provider === "anthropic" || child(child(body, "providerMetadata"), "anthropic") !== undefined) {
      cacheWrite = r.count("providerMetadata.anthropic.cacheCreationInputTokens");
      inputTokens += cacheRead + cacheWrite;
    }
    return makeUsage({
      provider, model, response_id: responseId,
      input_tokens: inputTokens,
      output_tokens: r.count("usage.outputTokens", true),
      cache_read_tokens: cacheRead,
      cache_write_tokens: cacheWrite,
      reasoning_tokens: r.count("usage.reasoningTokens"),
    });
  }
  // AI SDK 4: prompt/completion totals; cache details only in providerMetadata.
  const promptTokens = r.count("usage.promptTokens", true);
  let cacheRead = 0;
  let cacheWrite = 0;
  let inputTokens = promptTokens;
  if (child(child(body, "providerMetadata"), "anthropic") !== undefined) {
    cacheRead = r.count("providerMetadata.anthropic.cacheReadInputTokens");
    cacheWrite = r.count("providerMetadata.anthropic.cacheCreationInputTokens");
    inputTokens += cacheRead + cacheWrite;
  } else {
    cacheRead = r.count("providerMetadata.openai.cachedPromptTokens");
  }
  return makeUsage({
    provider, model, response_id: responseId,
    input_tokens: inputTokens,
    output_tokens: r.count("usage.completionTokens", true),
    cache_read_tokens: cacheRead,
    cache_write_tokens: cacheWrite,
    reasoning_tokens: r.count("providerMetadata.openai.reasoningTokens"),
  });
}

/** One {@link ProviderUsage} per step of a multi-step Vercel AI SDK result (one model call each). */
export function usageFromVercelAISteps(result: unknown, options: { provider?: string } = {}): ProviderUsage[] {
  const steps = child(asBody(result, options.provider ?? "vercel-ai"), "steps");
  if (!Array.isArray(steps) || steps.length === 0) return [usageFromVercelAI(result, options)];
  return steps.map((step) => usageFromVercelAI(step, options));
}

/**
 * Maps `body` with the adapter for `provider`: `openai` (Chat or Responses, told apart by shape), `openai-chat`,
 * `openai-responses`, `anthropic`, `vercel-ai`.
 */
export function usageFromResponse(provider: string, body: unknown): ProviderUsage {
  const name = provider.trim().toLowerCase().replaceAll("_", "-");
  const parsed = asBody(body, provider);
  switch (name) {
    case "openai": {
      const isResponses = lookup(parsed, "object") === "response" || lookup(parsed, "usage.input_tokens") !== undefined;
      return isResponses ? usageFromOpenAIResponses(parsed) : usageFromOpenAIChat(parsed);
    }
    case "openai-chat":
      return usageFromOpenAIChat(parsed);
    case "openai-responses":
      return usageFromOpenAIResponses(parsed);
    case "anthropic":
      return usageFromAnthropic(parsed);
    case "vercel-ai":
    case "ai-sdk":
      return usageFromVercelAI(parsed);
    default:
      throw new ProviderUsageError(provider, "provider",
        "no usage adapter for this provider; use one of: ai-sdk, anthropic, openai, openai-chat, openai-responses, " +
        "vercel-ai (or build ProviderUsage with makeUsage for other providers)");
  }
}
