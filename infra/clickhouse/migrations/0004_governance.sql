-- Governance: budget policies, alerts and their deliveries, enforcement commands (audit), price catalogue versions.
-- Each table is deduplicated by its natural id (ReplacingMergeTree); every sorting-key column is a function of that
-- id, so replays collapse. Read with FINAL where a duplicate would change an answer.
-- shard_by: cityHash64(policy_id)
CREATE TABLE IF NOT EXISTS {database}.budgets
(
    policy_id String COMMENT 'Stable id of the budget policy',
    version UInt32 COMMENT 'Monotonic policy version; ReplacingMergeTree keeps the highest',
    scope_type LowCardinality(String) COMMENT 'team, project, agent or tag',
    scope_value String COMMENT 'The team, project or agent_id; for tag: key=value',
    period LowCardinality(String) COMMENT 'day, week (ISO, Monday) or month; calendar-aligned in timezone',
    timezone LowCardinality(String) COMMENT 'IANA time zone the period is aligned to',
    limit_usd Decimal(38, 12) COMMENT 'Budget for one period, USD',
    mode LowCardinality(String) COMMENT 'soft (notify and escalate) or hard (suspend at 100%)',
    thresholds String COMMENT 'Threshold ladder as a JSON array (percent, action, ...)',
    forecast Bool DEFAULT false COMMENT 'Also alert when the burn-rate forecast crosses the limit',
    max_task_cost_usd Nullable(Decimal(38, 12)) COMMENT 'Cap on the cost of one task, USD',
    max_task_tokens Nullable(UInt64) COMMENT 'Cap on input+output tokens of one task',
    max_call_tokens Nullable(UInt64) COMMENT 'Cap on input+output tokens of one call',
    downgrade_model Nullable(String) COMMENT 'Model to switch to on a downgrade action',
    throttle_rate_per_minute Nullable(UInt32) COMMENT 'Calls per minute allowed on a throttle action',
    enabled Bool DEFAULT true COMMENT 'False disables the policy without deleting it',
    deleted Bool DEFAULT false COMMENT 'True for a tombstone (policy deleted on finops.policies.v1); written with a higher version',
    updated_at DateTime64(6, 'UTC') COMMENT 'When this version was written, UTC'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY policy_id
COMMENT 'Budget policies as published on finops.policies.v1; the highest version per policy_id wins (read with FINAL)'
;
-- shard_by: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    alert_id String COMMENT 'Unique id of this alert state change',
    dedup_key String COMMENT 'Stable key policy:entity:threshold:window; a trigger and its resolve share it',
    kind LowCardinality(String) COMMENT 'budget_threshold, budget_forecast, anomaly, waste, unpriced_model, cost_mismatch, drift, ...',
    severity LowCardinality(String) COMMENT 'info, warning or critical',
    state LowCardinality(String) COMMENT 'trigger or resolve',
    occurred_at DateTime64(6, 'UTC') COMMENT 'When the condition was detected (or cleared), UTC',
    team LowCardinality(String) DEFAULT '' COMMENT 'Team concerned; empty = none',
    project LowCardinality(String) DEFAULT '' COMMENT 'Project concerned; empty = none',
    agent_id String DEFAULT '' COMMENT 'Agent concerned; empty = none',
    policy_id String DEFAULT '' COMMENT 'Budget policy that fired; empty = none',
    model String DEFAULT '' COMMENT 'Model concerned (e.g. the unpriced model); empty = none',
    title String COMMENT 'One-line headline',
    summary String COMMENT 'What happened, the numbers and what to do',
    amount_usd Nullable(Decimal(38, 12)) COMMENT 'Amount observed (spend, forecast, impact), USD',
    limit_usd Nullable(Decimal(38, 12)) COMMENT 'Limit or expected amount compared with, USD',
    details Map(String, String) COMMENT 'Further facts (expected, actual, score, root-cause dimensions, saving ...)',
    actions Array(String) COMMENT 'Enforcement actions taken or proposed (notify, throttle, downgrade, suspend)',
    ingested_at DateTime64(6, 'UTC') DEFAULT now64(6) COMMENT 'When the sink wrote the row'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (dedup_key, occurred_at, alert_id)
COMMENT 'Alerts from finops.alerts.v1, one row per alert state change (trigger / resolve), deduplicated by alert_id'
;
-- shard_by: cityHash64(alert_id)
CREATE TABLE IF NOT EXISTS {database}.alert_deliveries
(
    alert_id String COMMENT 'The alert delivered',
    channel LowCardinality(String) COMMENT 'slack, pagerduty, webhook, ...',
    destination_name String COMMENT 'Configured name of the destination (never its secret URL or key)',
    attempt UInt16 COMMENT '1 for the first try, 2 for the first retry, ...',
    status LowCardinality(String) COMMENT 'sent, failed, skipped (deduplicated), ...',
    http_status Nullable(UInt16) COMMENT 'HTTP status of the attempt; NULL when no response was received',
    error Nullable(String) COMMENT 'Error of a failed attempt, scrubbed of secrets; NULL on success',
    delivered_at DateTime64(6, 'UTC') COMMENT 'When the attempt finished, UTC'
)
ENGINE = ReplacingMergeTree(delivered_at)
PARTITION BY toYYYYMM(delivered_at)
ORDER BY (alert_id, channel, destination_name, attempt)
COMMENT 'Delivery log of alerts, one row per attempt and destination; no secrets'
;
-- shard_by: cityHash64(command_id)
CREATE TABLE IF NOT EXISTS {database}.control_commands
(
    command_id String COMMENT 'Unique id of the command',
    scope_type LowCardinality(String) COMMENT 'agent, team or project',
    scope_value String COMMENT 'The agent_id, team or project the command applies to',
    action LowCardinality(String) COMMENT 'throttle, downgrade, suspend or resume',
    rate_per_minute Nullable(UInt32) COMMENT 'For throttle: allowed calls per minute',
    target_model Nullable(String) COMMENT 'For downgrade: the model to use instead',
    reason String COMMENT 'Why (policy, threshold, spend)',
    issued_by String COMMENT 'Who or what issued it (policy engine, operator user name)',
    issued_at DateTime64(6, 'UTC') COMMENT 'When it was issued, UTC',
    expires_at Nullable(DateTime64(6, 'UTC')) COMMENT 'When it lapses by itself; NULL = until replaced',
    policy_id Nullable(String) COMMENT 'Budget policy that caused it, if any',
    key_id String COMMENT 'Id of the HMAC key that signed it',
    signature String COMMENT 'Hex HMAC-SHA256 of the canonical bytes (kept for audit; not a secret)',
    received_at DateTime64(6, 'UTC') COMMENT 'When the audit writer received the command, UTC',
    verified Bool COMMENT 'True when the signature verified against a known key at receipt'
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(issued_at)
ORDER BY (scope_type, scope_value, issued_at, command_id)
COMMENT 'Audit log of enforcement commands (agent.control.v1), deduplicated by command_id'
;
-- shard_by: cityHash64(catalogue_version)
CREATE TABLE IF NOT EXISTS {database}.price_catalogue_versions
(
    catalogue_version String COMMENT 'genai-prices catalogue version (package version or data snapshot id)',
    price_book_version String DEFAULT '' COMMENT 'Organisation price book version used with it; empty = none',
    first_seen_at DateTime64(6, 'UTC') COMMENT 'When this pair was first used to price an event, UTC',
    details String COMMENT 'JSON facts: source, checksum, models changed, ...'
)
ENGINE = ReplacingMergeTree
ORDER BY (catalogue_version, price_book_version)
COMMENT 'Catalogue and price-book versions seen by the pricer, for explaining and re-rating costs'
;
