-- Spend nobody owns yet: calls that reached us (mostly through `finops intake`) without a team or a project are
-- stored with the value 'unattributed' instead of being dropped. This view shows them per UTC day, source and agent,
-- so a FinOps admin can find the sources to fix (set team.name / project.name, or a default team on the source's
-- intake token). Reads the ledger with FINAL, like the other ledger views; corrections count in cost, not in calls.
CREATE VIEW IF NOT EXISTS {database}.v_unattributed_spend
AS SELECT
    toDate(occurred_at, 'UTC') AS day,
    source,
    team,
    project,
    agent_id,
    countIf(row_kind = 'original') AS calls,
    sum(cost_usd) AS cost_usd,
    countIf(row_kind = 'original' AND pricing_status = 'unpriced') AS unpriced_calls,
    sumIf(ifNull(reported_cost, toDecimal128(0, 12)), row_kind = 'original') AS reported_cost_usd
FROM {database}.usage_ledger FINAL
WHERE team = 'unattributed' OR project = 'unattributed'
GROUP BY day, source, team, project, agent_id
COMMENT 'Per UTC day, source, team, project and agent: calls stored as unattributed (missing team or project), their cost'
;
