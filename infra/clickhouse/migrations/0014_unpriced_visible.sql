-- Unpriced spend is never invisible (DESIGN §4, issue 15): the budget utilisation view shows the period's unpriced
-- calls and tokens beside the dollars; v_unpriced_usage lists them per day, team, project and model with the reason
-- and the fix; v_cost_per_agent_day carries the unpriced call count of the daily rollup. A call whose cost is known
-- from its report is priced (price_source = 'reported'), so it is in the dollars, not here.
DROP VIEW IF EXISTS {database}.v_budget_utilisation;
CREATE VIEW IF NOT EXISTS {database}.v_budget_utilisation
AS WITH
    budgets_now AS
    (
        -- Time-zone arguments of ClickHouse date functions must be constants, but toString(t, zone) accepts a column:
        -- so each budget's calendar maths run on its wall clock, held in a UTC-typed DateTime.
        SELECT
            policy_id, version, scope_type, scope_value, period, timezone, limit_usd, mode,
            toDateTime(toString(toDateTime(now(), 'UTC'), timezone), 'UTC') AS local_now,
            multiIf(
                period = 'day', toStartOfDay(local_now),
                period = 'week', toDateTime(toMonday(local_now), 'UTC'),
                toDateTime(toStartOfMonth(local_now), 'UTC')) AS local_start,
            multiIf(
                period = 'day', local_start + toIntervalDay(1),
                period = 'week', local_start + toIntervalDay(7),
                local_start + toIntervalMonth(1)) AS local_end
        FROM {database}.budgets FINAL
        WHERE NOT deleted AND enabled
    ),
    buckets AS
    (
        -- 15-minute UTC buckets: every time-zone offset is a multiple of 15 minutes, so a calendar period in any
        -- zone holds whole buckets and bucketing loses nothing. 33 days covers the longest month plus any offset.
        SELECT team, project, agent_id, tags,
            toStartOfFifteenMinutes(toDateTime(occurred_at, 'UTC')) AS bucket,
            sum(cost_usd) AS cost_usd,
            countIf(row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_calls,
            sumIf(input_tokens, row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_input_tokens,
            sumIf(output_tokens, row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_output_tokens
        FROM {database}.usage_ledger FINAL
        WHERE occurred_at >= now() - toIntervalDay(33)
        GROUP BY team, project, agent_id, tags, bucket
    ),
    spend AS
    (
        SELECT b.policy_id AS policy_id, sum(s.cost_usd) AS spent_usd, sum(s.unpriced_calls) AS unpriced_calls,
            sum(s.unpriced_input_tokens) AS unpriced_input_tokens,
            sum(s.unpriced_output_tokens) AS unpriced_output_tokens
        FROM budgets_now AS b
        CROSS JOIN buckets AS s
        WHERE multiIf(
                b.scope_type = 'team', s.team = b.scope_value,
                b.scope_type = 'project', s.project = b.scope_value,
                b.scope_type = 'agent', s.agent_id = b.scope_value,
                b.scope_type = 'tag',
                    position(b.scope_value, '=') > 0
                    AND s.tags[substring(b.scope_value, 1, position(b.scope_value, '=') - 1)]
                        = substring(b.scope_value, position(b.scope_value, '=') + 1),
                0)
            AND toDateTime(toString(s.bucket, b.timezone), 'UTC') >= b.local_start
            AND toDateTime(toString(s.bucket, b.timezone), 'UTC') < b.local_end
        GROUP BY b.policy_id
    )
SELECT
    b.policy_id AS policy_id,
    b.version AS version,
    b.scope_type AS scope_type,
    b.scope_value AS scope_value,
    b.period AS period,
    b.timezone AS timezone,
    b.mode AS mode,
    b.limit_usd AS limit_usd,
    toString(b.local_start) AS period_start_local,
    toString(b.local_end) AS period_end_local,
    sp.spent_usd AS spent_usd,
    if(b.limit_usd = 0, NULL, sp.spent_usd * 100 / b.limit_usd) AS utilisation_pct,
    -- Unpriced calls are never invisible: their count and tokens stand beside the dollars (spent_usd cannot hold
    -- them), so a budget that looks untouched because its spend is unpriced says so.
    sp.unpriced_calls AS unpriced_calls,
    sp.unpriced_input_tokens AS unpriced_input_tokens,
    sp.unpriced_output_tokens AS unpriced_output_tokens
FROM budgets_now AS b
LEFT JOIN spend AS sp ON sp.policy_id = b.policy_id
SETTINGS join_use_nulls = 0
COMMENT 'Enabled budgets with their spend in the current period (day, ISO week or month in the budget''s time zone; wall-clock bounds), utilisation percent, and the unpriced calls and tokens of the period beside the dollars'
;
DROP VIEW IF EXISTS {database}.v_cost_per_agent_day;
CREATE VIEW IF NOT EXISTS {database}.v_cost_per_agent_day
AS SELECT
    day,
    team,
    project,
    agent_id,
    sum(cost_usd) AS cost_usd,
    sum(calls) AS calls,
    sum(errors) AS errors,
    sum(retries) AS retries,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(unpriced_calls) AS unpriced_calls
FROM {database}.spend_daily
GROUP BY day, team, project, agent_id
COMMENT 'Cost, calls, errors, retries, tokens and unpriced calls per agent and UTC day (from the daily rollup)'
;
CREATE VIEW IF NOT EXISTS {database}.v_unpriced_usage
AS SELECT
    toDate(occurred_at, 'UTC') AS day,
    team,
    project,
    provider,
    model,
    count() AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    any(unpriced_reason) AS reason,
    concat('add a price-book override for ', provider, '/', model,
           ' (FINOPS_STREAM_PRICE_BOOK), refresh the catalogue (finops prices update), or send reported_cost',
           ' with FINOPS_STREAM_COST_BASIS provider:', provider, '=reported_if_unpriced') AS fix
FROM {database}.usage_ledger FINAL
WHERE row_kind = 'original' AND pricing_status = 'unpriced'
    AND (source, event_id) NOT IN (
        SELECT source, event_id FROM {database}.usage_ledger FINAL
        WHERE row_kind = 'correction' AND pricing_status = 'priced')
GROUP BY day, team, project, provider, model
COMMENT 'Per UTC day, team, project and model: calls that could not be priced (not re-rated since), their tokens, why, and what fixes it'
;
