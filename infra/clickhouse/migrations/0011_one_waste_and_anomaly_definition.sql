-- One definition of the waste percentage and of "an anomaly", read by the dashboard, `finops recommend`, the
-- reviews and Grafana alike (issue 14 item 10: each computed its own and they disagreed).
--
-- Waste percentage = avoidable cost of the waste signals (the detectors' and those `finops recommend --record`
-- stored) over total cost, per UTC day of the wasteful calls. v_waste_by_project is the finest grain (the dashboard
-- filters it by the caller's teams and projects); v_waste_percentage is the same rows summed per (day, team), so a
-- period's figure is sum(avoidable_cost_usd) * 100 / sum(cost_usd) over either view's rows, never a mean of ratios.
CREATE VIEW IF NOT EXISTS {database}.v_waste_by_project
AS WITH
    cost AS
    (
        SELECT day, team, project, sum(cost_usd) AS cost_usd
        FROM {database}.spend_daily
        GROUP BY day, team, project
    ),
    waste AS
    (
        SELECT toDate(occurred_at, 'UTC') AS day, team, project, sum(avoidable_cost_usd) AS avoidable_cost_usd,
            count() AS signals
        FROM {database}.waste_signals FINAL
        GROUP BY day, team, project
    )
SELECT
    c.day AS day,
    c.team AS team,
    c.project AS project,
    c.cost_usd AS cost_usd,
    w.avoidable_cost_usd AS avoidable_cost_usd,
    w.signals AS signals,
    if(c.cost_usd = 0, NULL, w.avoidable_cost_usd * 100 / c.cost_usd) AS waste_pct
FROM cost AS c
LEFT JOIN waste AS w ON w.day = c.day AND w.team = c.team AND w.project = c.project
SETTINGS join_use_nulls = 0
COMMENT 'Per UTC day (of the wasteful calls), team and project: avoidable cost from waste_signals, total cost, waste percent'
;
-- Recreated on top of v_waste_by_project (same columns as in 0006): one definition, two grains.
DROP VIEW IF EXISTS {database}.v_waste_percentage;
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
-- An anomaly is an alert about abnormal spend: the anomaly detector's, and the waste detector's runaway burn rate
-- (a critical alert that is an anomaly to anyone reading the overview). One row per alert state change that
-- triggered; the alerts feed shows the same rows.
CREATE VIEW IF NOT EXISTS {database}.v_anomaly_alerts
AS SELECT
    alert_id, dedup_key, kind, severity, state, occurred_at, team, project, agent_id, policy_id, model, title,
    summary, amount_usd, limit_usd, details, actions
FROM {database}.alerts FINAL
WHERE state = 'trigger' AND (kind = 'anomaly' OR (kind = 'waste' AND details['waste_kind'] = 'runaway'))
COMMENT 'Triggered anomaly alerts: kind anomaly, and waste alerts of waste_kind runaway (runaway burn rate)'
;
