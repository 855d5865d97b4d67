/**
 * The one Schema Registry call the producer needs: register (or look up) the value schema of a topic and get its
 * id, for Confluent framing. Confluent's REST API: `POST /subjects/<topic>-value/versions` with the schema as a
 * JSON string returns `{"id": n}` (the existing id when the schema is already registered).
 */

import type { Json } from "./avro.js";
import { ConfigError, FinopsError } from "./errors.js";

export class RegistryError extends FinopsError {}

/** Registers `schema` under subject `<topic>-value` at `url` and returns its id. Throws RegistryError. */
export async function registerValueSchema(url: string, topic: string, schema: Json,
  fetchImpl: typeof fetch = fetch): Promise<number> {
  if (!/^https?:\/\//.test(url)) {
    throw new ConfigError(`Schema Registry URL ${JSON.stringify(url)} must start with http:// or https://`);
  }
  const endpoint = `${url.replace(/\/+$/, "")}/subjects/${encodeURIComponent(`${topic}-value`)}/versions`;
  let response: Response;
  try {
    response = await fetchImpl(endpoint, {
      method: "POST",
      headers: { "content-type": "application/vnd.schemaregistry.v1+json" },
      body: JSON.stringify({ schema: JSON.stringify(schema), schemaType: "AVRO" }),
    });
  } catch (err) {
    throw new RegistryError(`Schema Registry at ${url} is unreachable: ${(err as Error).message}`, { cause: err });
  }
  const text = await response.text();
  if (!response.ok) {
    throw new RegistryError(`Schema Registry refused the ${topic}-value schema (${response.status}): ${text.slice(0, 300)}`);
  }
  const id = (JSON.parse(text) as { id?: unknown }).id;
  if (typeof id !== "number" || !Number.isInteger(id)) {
    throw new RegistryError(`Schema Registry answered without an id: ${text.slice(0, 300)}`);
  }
  return id;
}
