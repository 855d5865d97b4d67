-- Waste signals from the detection jobs and the stream's counters for reconciliation against the ledger.
-- shard_by: cityHash64(signal_id)
CREATE TABLE IF NOT EXISTS {database}.waste_signals
(
    signal_id String COMMENT 'Deterministic id of the signal (same evidence, same id)',
    kind LowCardinality(String) COMMENT 'retry_loop, duplicate_prompt, oversized_prompt, model_tiering or runaway',
    detected_at DateTime64(6, 'UTC') COMMENT 'When the detector raised it, UTC; ReplacingMergeTree keeps the latest',
    occurred_at DateTime64(6, 'UTC') COMMENT 'When the wasteful spend happened (first call concerned), UTC',
    team LowCardinality(String) COMMENT 'Owning team',
    project LowCardinality(String) COMMENT 'Owning project',
    agent_id String COMMENT 'Agent concerned',
    task_id String DEFAULT '' COMMENT 'Task concerned; empty = none',
    model LowCardinality(String) COMMENT 'Model concerned',
    avoidable_cost_usd Decimal(38, 12) COMMENT 'Estimated avoidable spend (the saving), USD',
    evidence String COMMENT 'JSON evidence: event ids, prompt hash, counts, suggested model ...'
)
ENGINE = ReplacingMergeTree(detected_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (team, project, occurred_at, signal_id)
COMMENT 'Waste signals with their estimated avoidable cost; deduplicated by signal_id (read with FINAL)'
;
-- shard_by: cityHash64(counter_id)
CREATE TABLE IF NOT EXISTS {database}.stream_counters
(
    counter_id String COMMENT 'Deterministic id <job>:<source_topic>:<source_partition>:<window_start_micros>',
    job LowCardinality(String) COMMENT 'Stream job that counted (e.g. usage-hotpath)',
    source_topic LowCardinality(String) COMMENT 'Input topic counted',
    source_partition UInt32 COMMENT 'Input partition counted',
    window_start DateTime64(6, 'UTC') COMMENT 'Inclusive start of the counted window (by occurred_at), UTC',
    window_end DateTime64(6, 'UTC') COMMENT 'Exclusive end of the counted window, UTC',
    first_offset UInt64 COMMENT 'Lowest input offset counted in the window',
    last_offset UInt64 COMMENT 'Highest input offset counted in the window',
    events UInt64 COMMENT 'Events read (valid and invalid)',
    priced_events UInt64 COMMENT 'Events emitted to agent.usage.priced.v1',
    unpriced_events UInt64 COMMENT 'Emitted events with pricing_status unpriced',
    dlq_events UInt64 COMMENT 'Events routed to the DLQ',
    duplicate_events UInt64 COMMENT 'Events dropped by the stream deduplicator',
    cost_usd Decimal(38, 12) COMMENT 'Summed cost_usd of the emitted events, USD',
    emitted_at DateTime64(6, 'UTC') COMMENT 'When the counter was emitted; ReplacingMergeTree keeps the latest'
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (job, source_topic, source_partition, window_start, counter_id)
COMMENT 'What the stream emitted per partition and window; the reconciliation job compares it with the ledger'
;
