-- v_waste_by_project (0011) joined waste to spend on (day, team, project): a waste signal whose project had no spend
-- row that day (0006 joined on (day, team) only) vanished from the waste percentage. Waste is never invisible: both
-- sides are now stacked and summed, so every signal counts; a (day, team, project) with waste but no spend has
-- cost 0 and waste_pct NULL. v_waste_percentage keeps its definition on top of it (recreated after the drop).
DROP VIEW IF EXISTS {database}.v_waste_percentage;
DROP VIEW IF EXISTS {database}.v_waste_by_project;
CREATE VIEW IF NOT EXISTS {database}.v_waste_by_project
AS SELECT
    u.day AS day,
    u.team AS team,
    u.project AS project,
    sum(u.cost) AS cost_usd,
    sum(u.avoidable) AS avoidable_cost_usd,
    sum(u.n) AS signals,
    if(sum(u.cost) = 0, NULL, sum(u.avoidable) * 100 / sum(u.cost)) AS waste_pct
FROM
(
    SELECT day, team, project, cost_usd AS cost, toDecimal128(0, 12) AS avoidable, toUInt64(0) AS n
    FROM {database}.spend_daily
    UNION ALL
    SELECT toDate(occurred_at, 'UTC') AS day, team, project, toDecimal128(0, 12) AS cost,
        avoidable_cost_usd AS avoidable, toUInt64(1) AS n
    FROM {database}.waste_signals FINAL
) AS u
GROUP BY u.day, u.team, u.project
COMMENT 'Per UTC day (of the wasteful calls), team and project: avoidable cost from waste_signals, total cost, waste percent'
;
CREATE VIEW IF NOT EXISTS {database}.v_waste_percentage
AS SELECT
    w.day AS day,
    w.team AS team,
    sum(w.cost_usd) AS cost_usd,
    sum(w.avoidable_cost_usd) AS avoidable_cost_usd,
    sum(w.signals) AS signals,
    -- qualified: the aliases above would otherwise shadow the columns inside these aggregates
    if(sum(w.cost_usd) = 0, NULL, sum(w.avoidable_cost_usd) * 100 / sum(w.cost_usd)) AS waste_pct
FROM {database}.v_waste_by_project AS w
GROUP BY w.day, w.team
COMMENT 'Per UTC day (of the wasteful calls) and team: estimated avoidable cost from waste_signals / total cost * 100'
;
