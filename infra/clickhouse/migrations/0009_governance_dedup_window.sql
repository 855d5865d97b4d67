-- Block deduplication for the governance tables the sink now fills (alerts, waste_signals, budgets): a retried
-- batch carries the same insert_deduplication_token, and without a deduplication window a non-replicated table
-- would store it again (FINAL hides such copies, but a merge is then the only thing that removes them).
ALTER TABLE {database}.alerts MODIFY SETTING non_replicated_deduplication_window = 1000;

ALTER TABLE {database}.waste_signals MODIFY SETTING non_replicated_deduplication_window = 1000;

ALTER TABLE {database}.budgets MODIFY SETTING non_replicated_deduplication_window = 1000;
