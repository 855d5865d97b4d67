-- 1-minute spend partials emitted by the stream's hot path (finops.spend.1m.v1), one row per
-- (window, dimension, key, source partition). aggregate_id is deterministic, so a window re-emitted after a replay
-- carries the same id: every sorting-key column is a function of aggregate_id, which makes the sorting key the
-- dedup key ReplacingMergeTree needs; the latest emitted_at wins. Read with FINAL (or argMax by emitted_at).
-- shard_by: cityHash64(aggregate_id)
CREATE TABLE IF NOT EXISTS {database}.spend_1m
(
    aggregate_id String COMMENT 'Deterministic id <window_start_micros>:<dimension>:<key>:<source_partition>',
    window_start DateTime64(6, 'UTC') COMMENT 'Inclusive window start, UTC (minute-aligned)',
    window_end DateTime64(6, 'UTC') COMMENT 'Exclusive window end, UTC (window_start + 1 minute)',
    dimension LowCardinality(String) COMMENT 'What key is: agent, team, project or model',
    key String COMMENT 'The agent_id, team, project or provider/model',
    source_partition UInt32 COMMENT 'Partition of agent.usage.v1 these events came from',
    cost_usd Decimal(38, 12) COMMENT 'Summed cost_usd of the priced events in the window, USD',
    input_tokens UInt64 COMMENT 'Summed input_tokens (all input, incl. cache)',
    output_tokens UInt64 COMMENT 'Summed output_tokens (all output, incl. reasoning)',
    cache_read_tokens UInt64 COMMENT 'Summed cache_read_tokens',
    cache_write_tokens UInt64 COMMENT 'Summed cache_write_tokens',
    reasoning_tokens UInt64 COMMENT 'Summed reasoning_tokens',
    calls UInt64 COMMENT 'Number of usage events in the window',
    errors UInt64 COMMENT 'Events whose status is not ok',
    retries UInt64 COMMENT 'Events with attempt > 1',
    unpriced_calls UInt64 COMMENT 'Events with pricing_status unpriced',
    emitted_at DateTime64(6, 'UTC') COMMENT 'When the window was closed and emitted, UTC; ReplacingMergeTree keeps the latest',
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'When the sink wrote the row'
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (dimension, key, window_start, source_partition, aggregate_id)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT '1-minute spend partials from the stream per dimension and source partition; deduplicated by aggregate_id (read with FINAL)'
;
