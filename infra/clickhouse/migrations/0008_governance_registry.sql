-- Agent registry and approvals: who owns an agent, what it is expected to cost, and whether a team lead approved it.
-- agent_registry holds the current state (ReplacingMergeTree by agent_id, highest version wins; read with FINAL);
-- agent_approvals is the append-only audit of every request, approval and rejection (never collapsed).
-- shard_by: cityHash64(agent_id)
CREATE TABLE IF NOT EXISTS {database}.agent_registry
(
    agent_id String COMMENT 'Agent as it appears in usage events',
    team LowCardinality(String) COMMENT 'Owning team (its leads approve)',
    owner String COMMENT 'Person or group accountable for the agent',
    expected_monthly_cost_usd Decimal(38, 12) COMMENT 'Expected spend per month, USD, as stated in the request',
    status LowCardinality(String) COMMENT 'requested, approved or rejected',
    requested_by String COMMENT 'Who asked for the registration',
    requested_at DateTime64(6, 'UTC') COMMENT 'When the current request was made, UTC',
    decided_by String DEFAULT '' COMMENT 'Team lead who approved or rejected; empty while requested',
    decided_at Nullable(DateTime64(6, 'UTC')) COMMENT 'When it was approved or rejected, UTC; NULL while requested',
    note String DEFAULT '' COMMENT 'Free text: purpose, decision reason',
    version UInt64 COMMENT 'Monotonic version (microseconds since the epoch of the change); the highest wins'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY agent_id
COMMENT 'Registered agents with owner, team, expected monthly cost and approval state; latest version per agent_id (read with FINAL)'
;
-- shard_by: cityHash64(agent_id)
CREATE TABLE IF NOT EXISTS {database}.agent_approvals
(
    agent_id String COMMENT 'Agent concerned',
    action LowCardinality(String) COMMENT 'request, approve or reject',
    actor String COMMENT 'Who did it',
    team LowCardinality(String) COMMENT 'Owning team at the time',
    expected_monthly_cost_usd Decimal(38, 12) COMMENT 'Expected monthly cost at the time, USD',
    note String DEFAULT '' COMMENT 'Free text given with the action',
    at DateTime64(6, 'UTC') COMMENT 'When it happened, UTC'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (agent_id, at)
COMMENT 'Audit log of agent registrations, approvals and rejections (append-only)'
;
