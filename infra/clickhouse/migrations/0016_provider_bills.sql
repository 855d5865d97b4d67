-- The providers' own cost and usage reports (OpenAI organization costs and usage, Anthropic Admin API cost and
-- usage reports, OpenRouter activity), imported by `finops bills import`, and the reconciliation of the ledger
-- against them (`finops bills reconcile`). See governance/bills.py.
--
-- Idempotence: an import never updates rows in place. Each import has an import_id and, per (provider, day) it
-- covers, one row in provider_bill_imports; the day's current import is the latest one (ReplacingMergeTree by
-- imported_at, read with FINAL). The views v_provider_bills / v_provider_usage show only rows of the current import
-- of their (provider, day), so re-importing a period replaces it (a line the provider dropped disappears too) and
-- never adds; older imports stay in the tables as history.
CREATE TABLE IF NOT EXISTS {database}.provider_bill_imports
(
    provider LowCardinality(String) COMMENT 'openai, anthropic or openrouter',
    day Date COMMENT 'UTC day the import covers (a day in the requested period, even when it had no cost)',
    import_id String COMMENT 'Id of the import that currently answers for (provider, day)',
    imported_at DateTime64(6, 'UTC') COMMENT 'When that import ran; the latest wins',
    origin String COMMENT 'api or file:<name> (never a key or a URL query)'
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY (provider, day)
COMMENT 'Which import answers for each provider and day (re-importing replaces, never adds)';

CREATE TABLE IF NOT EXISTS {database}.provider_bills
(
    provider LowCardinality(String) COMMENT 'openai, anthropic or openrouter',
    day Date COMMENT 'UTC day of the provider cost bucket',
    import_id String COMMENT 'Import that wrote the row (see provider_bill_imports)',
    line_no UInt32 COMMENT 'Position of the line in its import (lines may repeat their dimensions)',
    account_id String COMMENT 'OpenAI project_id, Anthropic workspace_id; empty when the provider did not say',
    api_key_id String COMMENT 'API key the cost is billed to where the provider says (OpenRouter key hash); else empty',
    model String COMMENT 'Model of the line (OpenAI: from the line_item; empty for non-token costs)',
    line_item String COMMENT 'The provider line item or description as reported',
    cost_type LowCardinality(String) COMMENT 'tokens, web_search, code_execution, ... as reported; empty when not said',
    amount_usd Decimal(38, 12) COMMENT 'Billed amount in USD (Anthropic cents converted exactly)',
    currency LowCardinality(String) COMMENT 'Currency the provider reported (always usd here; others are refused)'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (provider, day, import_id, line_no)
COMMENT 'Provider cost report lines, one per import (read v_provider_bills for the current import)';

CREATE TABLE IF NOT EXISTS {database}.provider_usage
(
    provider LowCardinality(String) COMMENT 'openai, anthropic or openrouter',
    day Date COMMENT 'UTC day of the provider usage bucket',
    import_id String COMMENT 'Import that wrote the row (see provider_bill_imports)',
    line_no UInt32 COMMENT 'Position of the line in its import',
    account_id String COMMENT 'OpenAI project_id, Anthropic workspace_id; empty when not reported',
    api_key_id String COMMENT 'API key id (OpenAI, Anthropic) or key hash (OpenRouter); empty when not reported',
    model String COMMENT 'Model as the provider reported it',
    input_tokens UInt64 COMMENT 'ALL input tokens, cached or not (our canonical convention: DESIGN §3)',
    cache_read_tokens UInt64 COMMENT 'Input tokens read from the cache (part of input_tokens)',
    cache_write_tokens UInt64 COMMENT 'Input tokens written to the cache, 5-minute and 1-hour (part of input_tokens)',
    output_tokens UInt64 COMMENT 'ALL output tokens (reasoning included)',
    requests UInt64 COMMENT 'Model requests the provider counted; 0 when it does not say',
    cost_usd Nullable(Decimal(38, 12)) COMMENT 'Cost on the usage line when the report carries one (OpenRouter); else NULL'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (provider, day, import_id, line_no)
COMMENT 'Provider usage report lines (tokens), one per import (read v_provider_usage for the current import)';

CREATE VIEW IF NOT EXISTS {database}.v_provider_bills
AS SELECT b.*
FROM {database}.provider_bills AS b
INNER JOIN (SELECT provider, day, import_id FROM {database}.provider_bill_imports FINAL) AS i
    ON b.provider = i.provider AND b.day = i.day AND b.import_id = i.import_id
COMMENT 'Provider cost lines of the current import of each (provider, day)';

CREATE VIEW IF NOT EXISTS {database}.v_provider_usage
AS SELECT u.*
FROM {database}.provider_usage AS u
INNER JOIN (SELECT provider, day, import_id FROM {database}.provider_bill_imports FINAL) AS i
    ON u.provider = i.provider AND u.day = i.day AND u.import_id = i.import_id
COMMENT 'Provider usage lines of the current import of each (provider, day)';

-- One row per reconciliation cell (period x day x provider x model x account), rewritten by every run of the
-- period: the latest run_at per period is the current one (v_bill_reconciliation).
CREATE TABLE IF NOT EXISTS {database}.bill_reconciliation
(
    period String COMMENT 'YYYY-MM reconciled',
    run_id String COMMENT 'Id of the reconciliation run',
    run_at DateTime64(6, 'UTC') COMMENT 'When the run computed the row',
    day Date COMMENT 'UTC day',
    provider LowCardinality(String) COMMENT 'openai, anthropic or openrouter',
    model String COMMENT 'Model as the provider and the ledger name it',
    account_id String COMMENT 'Provider project / workspace the bill names; empty for ledger-only cells',
    api_keys Array(String) COMMENT 'API keys the provider usage names for the cell (largest first)',
    team LowCardinality(String) COMMENT 'Team of the ledger project the account maps to; empty when unattributed',
    project LowCardinality(String) COMMENT 'Ledger project the account maps to; empty when unattributed',
    status LowCardinality(String) COMMENT 'matched, under_reported (bill above ledger), over_reported (ledger above bill), unattributed (no ledger spend)',
    bill_usd Decimal(38, 12) COMMENT 'What the provider billed',
    ledger_usd Decimal(38, 12) COMMENT 'What the ledger holds (cost_usd, re-rating corrections included)',
    gap_usd Decimal(38, 12) COMMENT 'bill_usd - ledger_usd',
    attributed_usd Decimal(38, 12) COMMENT 'Part of the bill the ledger explains: least(bill_usd, ledger_usd)',
    unattributed_usd Decimal(38, 12) COMMENT 'Part of the bill no usage event reported: greatest(gap_usd, 0)',
    over_reported_usd Decimal(38, 12) COMMENT 'Ledger spend the bill does not show: greatest(-gap_usd, 0)',
    bill_input_tokens UInt64 COMMENT 'Input tokens the provider usage reports (all input, cached included)',
    ledger_input_tokens UInt64 COMMENT 'Input tokens of the ledger cell (original rows)',
    bill_output_tokens UInt64 COMMENT 'Output tokens the provider usage reports',
    ledger_output_tokens UInt64 COMMENT 'Output tokens of the ledger cell (original rows)'
)
ENGINE = MergeTree
ORDER BY (period, run_at, provider, day, model, account_id, project)
COMMENT 'Bill vs ledger cells of each reconciliation run (read v_bill_reconciliation for the latest run)';

CREATE VIEW IF NOT EXISTS {database}.v_bill_reconciliation
AS SELECT r.*
FROM {database}.bill_reconciliation AS r
INNER JOIN (SELECT period, argMax(run_id, run_at) AS run_id FROM {database}.bill_reconciliation GROUP BY period) AS l
    ON r.period = l.period AND r.run_id = l.run_id
COMMENT 'The latest reconciliation run of each period';

-- "What share of the bill is attributed to an agent and a team": the part of each provider's bill the ledger
-- explains (every ledger row has an agent and a team), per period, provider and team ('' = unattributed).
CREATE VIEW IF NOT EXISTS {database}.v_bill_attribution
AS SELECT
    period, provider, team, bill_usd, attributed_usd, unattributed_usd,
    attributed_usd / nullIf(sum(bill_usd) OVER (PARTITION BY period, provider), 0) AS share_of_bill
FROM
(
    SELECT period, provider, team, sum(r.bill_usd) AS bill_usd, sum(r.attributed_usd) AS attributed_usd,
        sum(r.unattributed_usd) AS unattributed_usd
    FROM {database}.v_bill_reconciliation AS r
    GROUP BY period, provider, team
)
COMMENT 'Per period, provider and team: the bill, the part the ledger attributes to agents and teams, and its share of the provider bill';
