-- Hourly and daily spend rollups by team / project / agent / model, fed by materialized views FROM THE LEDGER.
--
-- Why they do not double count (verified in tests/integration/test_clickhouse_dedup.py):
--  * the sink inserts into the ledger only events whose (source, event_id) are not stored yet, and
--  * every ledger insert carries an insert_deduplication_token derived from the batch; a retried batch is
--    recognised by block deduplication (non_replicated_deduplication_window on the ledger) and, because
--    deduplicate_blocks_in_dependent_materialized_views = 1 (the default) derives a token for each view's block,
--    the view's output block is dropped by the TARGET table's own deduplication window. The targets therefore
--    need non_replicated_deduplication_window too: without it, ClickHouse 26.x still runs the view for a
--    deduplicated source block and the rollup counts the retry twice.
-- Corrections (row_kind = 'correction') carry cost deltas and add 0 calls, so re-rating flows into the rollups.
-- SummingMergeTree sums rows with equal keys on merge; always read with sum(...) GROUP BY.
-- Day boundaries are UTC; budgets in other time zones are computed from the ledger (v_budget_utilisation).
CREATE TABLE IF NOT EXISTS {database}.spend_hourly
(
    hour DateTime('UTC') COMMENT 'Start of the UTC hour of occurred_at',
    team LowCardinality(String) COMMENT 'Owning team',
    project LowCardinality(String) COMMENT 'Owning project',
    agent_id String COMMENT 'Agent that made the calls',
    provider LowCardinality(String) COMMENT 'Model provider',
    model LowCardinality(String) COMMENT 'Model id',
    cost_usd Decimal(38, 12) COMMENT 'Summed cost_usd including correction deltas, USD',
    input_tokens UInt64 COMMENT 'Summed input_tokens (all input, incl. cache)',
    output_tokens UInt64 COMMENT 'Summed output_tokens (all output, incl. reasoning)',
    cache_read_tokens UInt64 COMMENT 'Summed cache_read_tokens',
    cache_write_tokens UInt64 COMMENT 'Summed cache_write_tokens',
    reasoning_tokens UInt64 COMMENT 'Summed reasoning_tokens',
    calls UInt64 COMMENT 'Number of usage events (original rows only)',
    errors UInt64 COMMENT 'Events whose status is not ok',
    retries UInt64 COMMENT 'Events with attempt > 1',
    unpriced_calls UInt64 COMMENT 'Events with pricing_status unpriced'
)
ENGINE = SummingMergeTree((cost_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, calls, errors, retries, unpriced_calls))
PARTITION BY toYYYYMM(hour)
ORDER BY (team, project, agent_id, provider, model, hour)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Hourly spend per team, project, agent and model (UTC hours), from the ledger via spend_hourly_mv; read with sum() GROUP BY'
;
CREATE TABLE IF NOT EXISTS {database}.spend_daily
(
    day Date COMMENT 'UTC day of occurred_at',
    team LowCardinality(String) COMMENT 'Owning team',
    project LowCardinality(String) COMMENT 'Owning project',
    agent_id String COMMENT 'Agent that made the calls',
    provider LowCardinality(String) COMMENT 'Model provider',
    model LowCardinality(String) COMMENT 'Model id',
    cost_usd Decimal(38, 12) COMMENT 'Summed cost_usd including correction deltas, USD',
    input_tokens UInt64 COMMENT 'Summed input_tokens (all input, incl. cache)',
    output_tokens UInt64 COMMENT 'Summed output_tokens (all output, incl. reasoning)',
    cache_read_tokens UInt64 COMMENT 'Summed cache_read_tokens',
    cache_write_tokens UInt64 COMMENT 'Summed cache_write_tokens',
    reasoning_tokens UInt64 COMMENT 'Summed reasoning_tokens',
    calls UInt64 COMMENT 'Number of usage events (original rows only)',
    errors UInt64 COMMENT 'Events whose status is not ok',
    retries UInt64 COMMENT 'Events with attempt > 1',
    unpriced_calls UInt64 COMMENT 'Events with pricing_status unpriced'
)
ENGINE = SummingMergeTree((cost_usd, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, calls, errors, retries, unpriced_calls))
PARTITION BY toYYYYMM(day)
ORDER BY (team, project, agent_id, provider, model, day)
SETTINGS non_replicated_deduplication_window = 1000
COMMENT 'Daily spend per team, project, agent and model (UTC days), from the ledger via spend_daily_mv; read with sum() GROUP BY'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.spend_hourly_mv TO {database}.spend_hourly
AS SELECT
    toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour,
    team,
    project,
    agent_id,
    provider,
    model,
    sum(cost_usd) AS cost_usd,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    countIf(row_kind = 'original') AS calls,
    countIf(row_kind = 'original' AND status != 'ok') AS errors,
    countIf(row_kind = 'original' AND attempt > 1) AS retries,
    countIf(row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_calls
FROM {database}.usage_ledger
GROUP BY hour, team, project, agent_id, provider, model
COMMENT 'Feeds spend_hourly from each block inserted into usage_ledger'
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.spend_daily_mv TO {database}.spend_daily
AS SELECT
    toDate(occurred_at, 'UTC') AS day,
    team,
    project,
    agent_id,
    provider,
    model,
    sum(cost_usd) AS cost_usd,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    countIf(row_kind = 'original') AS calls,
    countIf(row_kind = 'original' AND status != 'ok') AS errors,
    countIf(row_kind = 'original' AND attempt > 1) AS retries,
    countIf(row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_calls
FROM {database}.usage_ledger
GROUP BY day, team, project, agent_id, provider, model
COMMENT 'Feeds spend_daily from each block inserted into usage_ledger'
;
