// Public API of @agent-finops/producer.
export * from "./adapters.js";
export * from "./control.js";
export * from "./errors.js";
export {
  MAX_FUTURE_SKEW_MICROS, MAX_TAGS, MAX_TAG_LENGTH, USAGE_FIELDS, USAGE_STATUSES, buildUsageEvent, checkUsageRecord,
  newEventId, type MoneyInput, type TimestampInput, type UsageEventInput, type UsageEventRecord, type UsageStatus,
} from "./event.js";
export * from "./guard.js";
export * from "./producer.js";
export * from "./registry.js";
export { Spool, SpoolError, SpoolFull, SpoolLocked, type SpoolPosition, type SpoolRecord } from "./spool.js";
export { AvroCodec, CONFLUENT_HEADER_LEN, SINGLE_OBJECT_HEADER_LEN, framingOf, loadSchemas, type Framing } from "./wire.js";
export { crc64Avro, parsingCanonicalForm, schemaFingerprint } from "./avro.js";
