-- Reported costs as evidence (DESIGN §4): the ledger keeps the computed cost beside the authoritative cost_usd and
-- says which cost_basis applied. cost_usd stays the one number budgets, rollups and views sum; it is the reported
-- cost exactly when price_source = 'reported' (reported_cost is already a column), else the computed cost.
-- Rows written before this migration were all computed: their computed_cost_usd reads as cost_usd when priced.
ALTER TABLE {database}.usage_ledger
    ADD COLUMN IF NOT EXISTS computed_cost_usd Nullable(Decimal(38, 12))
    DEFAULT if(pricing_status = 'priced', toNullable(cost_usd), NULL)
    COMMENT 'Cost the price book or catalogue computed (price_*_mtok explain it); NULL when they could not price the call; differs from cost_usd only when price_source = reported'
    AFTER source_offset;

ALTER TABLE {database}.usage_ledger
    ADD COLUMN IF NOT EXISTS cost_basis LowCardinality(String) DEFAULT 'catalogue'
    COMMENT 'cost_basis of the event source or provider: catalogue, reported or reported_if_unpriced (the report is authoritative exactly when price_source = reported)'
    AFTER computed_cost_usd;

ALTER TABLE {database}.usage_ledger
    COMMENT COLUMN price_source 'Which step answered cost_usd: price_book, catalogue, catalogue:<vendor> via <gateway>, reported or none';
