-- One view per product metric. Views over the ledger read it with FINAL: exact before background merges have
-- collapsed replayed events, at the cost of merging the selected parts at query time (not measured here; expect a
-- few times a plain scan, so keep the time filter tight). Views over the SummingMergeTree rollups need no FINAL: sum() over
-- unmerged partial rows is already exact. Money stays Decimal(38, 12); divisions truncate at 12 decimal places.
-- Days are UTC days (the rollups' days); budgets are evaluated in their own time zone.
CREATE VIEW IF NOT EXISTS {database}.v_cost_per_task
AS SELECT
    task_id,
    team,
    project,
    agent_id,
    sum(cost_usd) AS cost_usd,
    countIf(row_kind = 'original') AS calls,
    minIf(occurred_at, row_kind = 'original') AS first_call_at,
    maxIf(occurred_at, row_kind = 'original') AS last_call_at,
    -- the task's outcome is the outcome of its last call (ties on occurred_at broken by the higher attempt)
    toBool(argMaxIf(status, (occurred_at, attempt), row_kind = 'original') = 'ok') AS succeeded
FROM {database}.usage_ledger FINAL
WHERE task_id != ''
GROUP BY task_id, team, project, agent_id
COMMENT 'Cost, calls, first and last call per task (calls without a task_id are left out); succeeded = last call ok'
;
CREATE VIEW IF NOT EXISTS {database}.v_cost_per_successful_task
AS SELECT
    toDate(last_call_at, 'UTC') AS day,
    team,
    project,
    sum(cost_usd) AS total_task_cost_usd,
    count() AS tasks,
    countIf(succeeded) AS successful_tasks,
    -- all tasks' cost carried by the successful ones: failed tasks make success more expensive, which is the point
    if(successful_tasks = 0, NULL, total_task_cost_usd / successful_tasks) AS cost_per_successful_task_usd
FROM {database}.v_cost_per_task
GROUP BY day, team, project
COMMENT 'Per UTC day (of the task''s last call), team and project: cost of all tasks / number of successful tasks'
;
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
    sum(output_tokens) AS output_tokens
FROM {database}.spend_daily
GROUP BY day, team, project, agent_id
COMMENT 'Cost, calls, errors, retries and tokens per agent and UTC day (from the daily rollup)'
;
CREATE VIEW IF NOT EXISTS {database}.v_model_cost_distribution
AS SELECT
    day,
    provider,
    model,
    cost_usd,
    calls,
    day_total_usd,
    if(day_total_usd = 0, NULL, cost_usd * 100 / day_total_usd) AS share_pct
FROM
(
    SELECT
        sd.day AS day,
        sd.provider AS provider,
        sd.model AS model,
        sum(sd.cost_usd) AS cost_usd,
        sum(sd.calls) AS calls,
        -- qualified: the alias cost_usd would otherwise shadow the column inside the window aggregate
        sum(sum(sd.cost_usd)) OVER (PARTITION BY sd.day) AS day_total_usd
    FROM {database}.spend_daily AS sd
    GROUP BY sd.day, sd.provider, sd.model
)
COMMENT 'Per UTC day, provider and model: cost and its share (percent) of the day''s total cost'
;
CREATE VIEW IF NOT EXISTS {database}.v_cost_trend
AS WITH daily AS
(
    SELECT day, team, sum(cost_usd) AS cost_usd
    FROM {database}.spend_daily
    GROUP BY day, team
)
SELECT
    d.day AS day,
    d.team AS team,
    d.cost_usd AS cost_usd,
    -- a day without rows had no spend: the joins' default 0 is the true value; a percent change from 0 is NULL
    p1.cost_usd AS prev_day_cost_usd,
    p7.cost_usd AS prev_week_cost_usd,
    pm.cost_usd AS prev_month_cost_usd,
    if(p1.cost_usd = 0, NULL, (d.cost_usd - p1.cost_usd) * 100 / p1.cost_usd) AS dod_pct,
    if(p7.cost_usd = 0, NULL, (d.cost_usd - p7.cost_usd) * 100 / p7.cost_usd) AS wow_pct,
    if(pm.cost_usd = 0, NULL, (d.cost_usd - pm.cost_usd) * 100 / pm.cost_usd) AS mom_pct
FROM daily AS d
LEFT JOIN daily AS p1 ON p1.team = d.team AND p1.day = d.day - 1
LEFT JOIN daily AS p7 ON p7.team = d.team AND p7.day = d.day - 7
LEFT JOIN daily AS pm ON pm.team = d.team AND pm.day = subtractMonths(d.day, 1)
SETTINGS join_use_nulls = 0
COMMENT 'Per UTC day and team: cost vs the previous day, the same weekday a week earlier and the same day a month earlier (clamped to month end), in percent'
;
CREATE VIEW IF NOT EXISTS {database}.v_waste_percentage
AS WITH
    cost AS
    (
        SELECT day, team, sum(cost_usd) AS cost_usd
        FROM {database}.spend_daily
        GROUP BY day, team
    ),
    waste AS
    (
        SELECT toDate(occurred_at, 'UTC') AS day, team, sum(avoidable_cost_usd) AS avoidable_cost_usd, count() AS signals
        FROM {database}.waste_signals FINAL
        GROUP BY day, team
    )
SELECT
    c.day AS day,
    c.team AS team,
    c.cost_usd AS cost_usd,
    w.avoidable_cost_usd AS avoidable_cost_usd,
    w.signals AS signals,
    if(c.cost_usd = 0, NULL, w.avoidable_cost_usd * 100 / c.cost_usd) AS waste_pct
FROM cost AS c
LEFT JOIN waste AS w ON w.day = c.day AND w.team = c.team
SETTINGS join_use_nulls = 0
COMMENT 'Per UTC day (of the wasteful calls) and team: estimated avoidable cost from waste_signals / total cost * 100'
;
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
            sum(cost_usd) AS cost_usd
        FROM {database}.usage_ledger FINAL
        WHERE occurred_at >= now() - toIntervalDay(33)
        GROUP BY team, project, agent_id, tags, bucket
    ),
    spend AS
    (
        SELECT b.policy_id AS policy_id, sum(s.cost_usd) AS spent_usd
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
    if(b.limit_usd = 0, NULL, sp.spent_usd * 100 / b.limit_usd) AS utilisation_pct
FROM budgets_now AS b
LEFT JOIN spend AS sp ON sp.policy_id = b.policy_id
SETTINGS join_use_nulls = 0
COMMENT 'Enabled budgets with their spend in the current period (day, ISO week or month in the budget''s time zone; wall-clock bounds) and utilisation percent'
;
