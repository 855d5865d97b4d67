-- The priced-event ledger: one row per priced usage event (row_kind 'original'), plus room for re-rating
-- corrections (row_kind 'correction': cost deltas against the original, zero tokens and calls).
--
-- Deduplication: ReplacingMergeTree collapses rows with the same SORTING KEY, so the key must identify an event and
-- nothing else: every column in it is a deterministic function of (source, event_id) for a given row_kind /
-- correction_id (team, project, agent_id and occurred_at come from the event itself, a replay carries the same
-- values). A replayed event therefore has the identical key and collapses on merge; queries that must be exact
-- before merges use FINAL. Kept version: the latest ingested_at.
--
-- Block deduplication (non_replicated_deduplication_window) drops a retried insert that carries the same
-- insert_deduplication_token BEFORE the rows reach the materialized views' targets (see infra/clickhouse/README.md).
--
-- Optional strings (task_id, parent_task_id, task_type, environment) are String DEFAULT '' ('' = absent), not
-- Nullable: they are grouped and filtered on constantly, and Nullable costs a null map and NULL-aware GROUP BY.
-- Columns whose absence differs from a value (latency, prompt hash, reported cost, unit prices) stay Nullable.
-- shard_by: cityHash64(source, event_id)
CREATE TABLE IF NOT EXISTS {database}.usage_ledger
(
    event_id String COMMENT 'Unique id of the usage event (UUID, unique per source); dedup key with source',
    source LowCardinality(String) COMMENT 'Emitting service or SDK instance',
    occurred_at DateTime64(6, 'UTC') COMMENT 'When the model call finished, UTC',
    agent_id String COMMENT 'Agent that made the call',
    team LowCardinality(String) COMMENT 'Owning team (attribution, budgets)',
    project LowCardinality(String) COMMENT 'Owning project (attribution, budgets)',
    provider LowCardinality(String) COMMENT 'Model provider as named by genai-prices',
    model LowCardinality(String) COMMENT 'Model id as the provider reported it',
    input_tokens UInt64 COMMENT 'ALL input tokens, cached or not (cache read/write, audio, image are parts of it)',
    output_tokens UInt64 COMMENT 'ALL output tokens (reasoning and audio output are parts of it)',
    cache_read_tokens UInt64 COMMENT 'Input tokens served from the prompt cache (part of input_tokens)',
    cache_write_tokens UInt64 COMMENT 'Input tokens written to the prompt cache, 5-minute and 1-hour (part of input_tokens)',
    cache_write_1h_tokens UInt64 COMMENT 'Part of cache_write_tokens written with a 1-hour TTL',
    reasoning_tokens UInt64 COMMENT 'Reasoning tokens (part of output_tokens)',
    input_audio_tokens UInt64 COMMENT 'Audio input tokens (part of input_tokens)',
    output_audio_tokens UInt64 COMMENT 'Audio output tokens (part of output_tokens)',
    cache_audio_read_tokens UInt64 COMMENT 'Audio tokens served from the cache (part of cache_read_tokens)',
    image_tokens UInt64 COMMENT 'Image input tokens (part of input_tokens)',
    web_search_calls UInt64 COMMENT 'Provider-side web-search calls billed with this call (a separate unit)',
    requests UInt32 COMMENT 'Billable provider requests this event stands for (1 for one model call; 0 on corrections)',
    task_id String DEFAULT '' COMMENT 'Agent task the call belongs to; empty = no task',
    parent_task_id String DEFAULT '' COMMENT 'Task that spawned this one (sub-agent trees); empty = root task',
    task_type LowCardinality(String) DEFAULT '' COMMENT 'Free-form kind of task; empty = not given',
    environment LowCardinality(String) DEFAULT '' COMMENT 'Deployment environment (prod, staging, ...); empty = not given',
    attempt UInt16 COMMENT '1 for the first try, 2 for the first retry, ...',
    status LowCardinality(String) COMMENT 'Outcome: ok, error, timeout, rate_limited, cancelled',
    latency_ms Nullable(UInt64) COMMENT 'Wall-clock latency of the call in milliseconds; NULL = not reported',
    prompt_hash Nullable(String) COMMENT 'Hash of the normalised prompt (never the prompt); NULL = not given',
    reported_cost Nullable(Decimal(38, 12)) COMMENT 'USD the provider or gateway billed, when it says',
    tags Map(String, String) COMMENT 'Free-form string tags (budgets may scope on key=value)',
    schema_version UInt16 COMMENT 'Version of the usage contract the producer wrote',
    cost_usd Decimal(38, 12) COMMENT 'Total computed cost in USD (sum of the cost_*_usd parts); 0 when unpriced; a delta on corrections',
    cost_input_usd Decimal(38, 12) COMMENT 'USD for uncached input tokens',
    cost_output_usd Decimal(38, 12) COMMENT 'USD for output tokens (incl. reasoning and audio output)',
    cost_cache_read_usd Decimal(38, 12) COMMENT 'USD for cache_read_tokens',
    cost_cache_write_usd Decimal(38, 12) COMMENT 'USD for cache_write_tokens (5-minute and 1-hour writes)',
    cost_other_usd Decimal(38, 12) COMMENT 'USD for per-request fees, web-search calls, image units',
    price_input_mtok Nullable(Decimal(38, 12)) COMMENT 'Unit price used for uncached input, USD per million tokens',
    price_output_mtok Nullable(Decimal(38, 12)) COMMENT 'Unit price used for output, USD per million tokens',
    price_cache_read_mtok Nullable(Decimal(38, 12)) COMMENT 'Unit price used for cache reads, USD per million tokens',
    price_cache_write_mtok Nullable(Decimal(38, 12)) COMMENT 'Unit price used for 5-minute cache writes, USD per million tokens',
    price_cache_write_1h_mtok Nullable(Decimal(38, 12)) COMMENT 'Unit price used for 1-hour cache writes, USD per million tokens',
    pricing_status LowCardinality(String) COMMENT 'priced or unpriced',
    unpriced_reason Nullable(String) COMMENT 'Why the event could not be priced; NULL when priced',
    catalogue_version LowCardinality(String) COMMENT 'genai-prices catalogue version used',
    price_book_version LowCardinality(Nullable(String)) COMMENT 'Organisation price book version used; NULL when none was loaded',
    price_source LowCardinality(String) COMMENT 'Where the unit prices came from: catalogue, price_book or none',
    cost_delta_usd Nullable(Decimal(38, 12)) COMMENT 'reported_cost - cost_usd when reported_cost is present',
    cost_mismatch Bool COMMENT 'True when |cost_delta_usd| exceeds the configured tolerance',
    late Bool COMMENT 'True when the event arrived after its 1-minute window had closed',
    priced_at DateTime64(6, 'UTC') COMMENT 'When the stream job priced the event (or the correction was computed)',
    source_topic LowCardinality(String) COMMENT 'Kafka topic the usage event was read from',
    source_partition UInt32 COMMENT 'Kafka partition the usage event was read from',
    source_offset UInt64 COMMENT 'Kafka offset of the usage event within source_partition',
    row_kind Enum8('original' = 1, 'correction' = 2) DEFAULT 'original' COMMENT 'original = the priced event; correction = a re-rating delta row for the same event',
    correction_id String DEFAULT '' COMMENT 'Deterministic id of the re-rating run that wrote a correction row; empty on originals',
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'When the sink wrote the row; ReplacingMergeTree keeps the latest',
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (team, project, agent_id, occurred_at, source, event_id, row_kind, correction_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Priced usage events, one row per (source, event_id) after merges (use FINAL for exact reads); the source of truth for spend'
;
