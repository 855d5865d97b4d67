-- Access to the dashboard and API: bearer tokens (stored hashed) and the audit of what privileged callers did.
--
-- A token is `fo_<token_id>_<secret>`; only sha256(secret) is stored, so a leaked table does not leak tokens.
-- Revocation writes the same token_id again with revoked_at set and a higher updated_at: ReplacingMergeTree keeps
-- the latest row per token_id, and readers use FINAL so a revocation is effective before any merge.
-- shard_by: cityHash64(token_id)
CREATE TABLE IF NOT EXISTS {database}.api_tokens
(
    token_id String COMMENT 'Public id of the token (the part before the secret); dedup key',
    token_hash String COMMENT 'Hex sha256 of the token secret; the secret itself is never stored',
    role LowCardinality(String) COMMENT 'developer, team_lead, finops_admin or operator',
    teams Array(String) COMMENT 'Teams the caller may see (every read is filtered by them); ignored for finops_admin; [''*''] = all teams',
    projects Array(String) COMMENT 'Optional narrowing to projects within the teams; empty = every project of the teams',
    subject String COMMENT 'Who holds the token (person or service name), written to the audit',
    created_at DateTime64(6, 'UTC') COMMENT 'When the token was issued, UTC',
    created_by String COMMENT 'Who issued it (a shell user for `finops token issue`)',
    revoked_at Nullable(DateTime64(6, 'UTC')) COMMENT 'When the token was revoked, UTC; NULL = valid',
    updated_at DateTime64(6, 'UTC') COMMENT 'When this row version was written; ReplacingMergeTree keeps the latest'
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY token_id
COMMENT 'Dashboard and API bearer tokens, hashed; the latest row per token_id wins (read with FINAL)'
;
-- One row per privileged action (control commands, budget changes, approvals, token changes) and per refused
-- write, so a reviewer can see who tried what.
-- shard_by: cityHash64(audit_id)
CREATE TABLE IF NOT EXISTS {database}.admin_audit
(
    audit_id String COMMENT 'Unique id of the audit entry (UUID)',
    at DateTime64(6, 'UTC') COMMENT 'When the action was taken or refused, UTC',
    actor String COMMENT 'Subject of the token that acted',
    actor_token_id String COMMENT 'token_id of the token that acted (empty for the command line)',
    role LowCardinality(String) COMMENT 'Role of the actor at the time',
    action LowCardinality(String) COMMENT 'control.issue, budget.put, approval.decide, token.issue, token.revoke, ...',
    target String COMMENT 'What the action was applied to (scope, policy id, alert id, token id)',
    outcome LowCardinality(String) COMMENT 'ok, denied or failed',
    details String COMMENT 'JSON facts of the action (command id, reason, limit ...); never a secret'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, audit_id)
COMMENT 'Audit of privileged actions and refused writes through the dashboard API and the token commands'
;
